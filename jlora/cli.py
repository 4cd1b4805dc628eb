"""The ``jlora`` command: ``jlora bench ...`` (the serving benchmark), ``jlora serve ...`` (the
OpenAI-compatible server)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"bench": "jlora.bench.cli", "serve": "jlora.server.cli"}
    if not argv or argv[0] not in commands:
        print(f"usage: jlora {{{','.join(commands)}}} [options]   (jlora bench --help)")
        raise SystemExit(2)
    import importlib

    importlib.import_module(commands[argv[0]]).main(argv[1:])
