"""``jlora serve``: the OpenAI-compatible server. Flags come from
:class:`~jlora.config.EngineConfig` and :class:`~jlora.server.config.ServerConfig`.

    jlora serve --model jlora/assets/skills/base --dtype float32 \\
        --lora-paths reverse=jlora/assets/skills/reverse sort=jlora/assets/skills/sort
"""

from __future__ import annotations

import argparse
import sys

from jlora.config import EngineConfig
from jlora.flags import FlagParser, add_dataclass_flags, dataclass_from_args, run_command
from jlora.server.config import ServerConfig


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(
        prog="jlora serve",
        description="OpenAI-compatible HTTP server (completions, chat, per-request adapters).",
    )
    add_dataclass_flags(
        parser, EngineConfig, aliases={"model": ("--model-path",)}, group_title="engine"
    )
    add_dataclass_flags(parser, ServerConfig, group_title="server")
    return parser


def main(argv: list[str] | None = None) -> None:
    """``jlora serve``: bad input prints one line and exits with code 2 (``--debug``: the
    traceback)."""
    run_command("jlora serve", _main, sys.argv[1:] if argv is None else list(argv))


def _main(argv: list[str]) -> None:
    from jlora.distributed import initialize_from_env
    from jlora.server.launch import serve

    args = build_parser().parse_args(argv)
    initialize_from_env()
    serve(dataclass_from_args(EngineConfig, args), dataclass_from_args(ServerConfig, args))
