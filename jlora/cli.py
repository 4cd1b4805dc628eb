"""The ``jlora`` command: ``jlora bench ...`` (the serving benchmark), ``jlora serve ...`` (the
OpenAI-compatible server)."""

from __future__ import annotations

import importlib
import sys

from jlora.flags import nearest

# Each command's module, whose ``main(argv)`` runs it.
COMMANDS = {"bench": "jlora.bench.cli", "serve": "jlora.server.cli"}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        usage = f"usage: jlora {{{','.join(COMMANDS)}}} [options]   (jlora bench --help)"
        if argv and argv[0] not in ("-h", "--help"):
            hint = nearest(argv[0], COMMANDS)
            usage = f"jlora: error: unknown command {argv[0]!r}{hint}; {usage}"
        print(usage, file=sys.stderr if argv else sys.stdout)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    main()
