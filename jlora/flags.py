"""Command-line flags derived from frozen config dataclasses, so no option is declared twice.

Each field becomes ``--field-name`` (underscores to dashes, SGLang's spelling), typed from its
annotation, with the field's docstring as help. ``dict[str, str]`` fields take ``NAME=VALUE ...``,
tuples take several values, booleans take ``--x`` / ``--no-x``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import sys
import textwrap
import types
import typing
import warnings
from typing import Any


def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of a dataclass (attribute docstrings), by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for stmt, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse_float(text: str) -> float:
    try:
        return float("inf") if text.lower() in ("inf", "infinity") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 4, 0.5 or inf)") from None


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


# How a flag's text becomes a field's value; a bad text raises ``ArgumentTypeError`` naming it.
_PARSERS: dict[type, typing.Callable[[str], Any]] = {float: _parse_float, int: _parse_int, str: str}


def add_dataclass_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    skip: tuple[str, ...] = (),
    aliases: dict[str, tuple[str, ...]] | None = None,
    group_title: str | None = None,
) -> None:
    """Add one flag per field of ``cls`` (defaults left unset: the dataclass's own apply)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    group = parser.add_argument_group(group_title or cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp, optional = _strip_optional(hints[f.name])
        names = ["--" + f.name.replace("_", "-"), *(aliases or {}).get(f.name, ())]
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        help_text = docs.get(f.name, "")
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = None
        if default is not None and default != "":
            help_text += f" (default: {default})"
        kwargs["help"] = help_text.replace("%", "%%")
        origin = typing.get_origin(tp)
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is dict:
            kwargs["nargs"] = "+"
            kwargs["metavar"] = "NAME=VALUE"
            kwargs["type"] = str
        elif origin is tuple:
            kwargs["nargs"] = "+"
            kwargs["type"] = _PARSERS[typing.get_args(tp)[0]]
        elif tp in _PARSERS:
            kwargs["type"] = _PARSERS[tp]
        else:
            raise TypeError(f"no flag type for field {cls.__name__}.{f.name}: {tp!r}")
        del optional  # None is the dataclass default; a flag always sets a value
        group.add_argument(*names, **kwargs)


def dataclass_from_args(cls: type, args: argparse.Namespace, **overrides: Any):
    """Build ``cls`` from the flags given (unset ones keep the dataclass defaults)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        tp, _ = _strip_optional(hints[f.name])
        if typing.get_origin(tp) is dict:
            value = parse_pairs(value, f"--{f.name.replace('_', '-')}")
        elif typing.get_origin(tp) is tuple:
            value = tuple(value)
        values[f.name] = value
    values.update(overrides)
    return cls(**values)


def parse_pairs(items: list[str], flag: str) -> dict[str, str]:
    """``["a=x", "b=y"]`` -> ``{"a": "x", "b": "y"}``; a bad item names itself."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{flag} takes NAME=VALUE items, got {item!r}")
        if name in out:
            raise ValueError(f"{flag} names {name!r} twice")
        out[name] = value
    return out


def nearest(word: str, choices) -> str:
    """`` (did you mean 'x'?)`` naming the closest of ``choices`` to a misspelt ``word``, or ``""``
    when none is close."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {found[0]!r}?)" if found else ""


class FlagParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (the message, the value it names
    and the nearest flag to a misspelt one) and exit code 2, instead of the usage block."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--debug",
            action="store_true",
            help="on an error, show its traceback (default: one line)",
        )

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            flags = [e for e in extras if e.startswith("-")]
            word = (flags or extras)[0]
            hint = nearest(word.partition("=")[0], self._option_string_actions) if flags else ""
            self.error(f"unknown flag {word!r}{hint}" if flags else f"unexpected value {word!r}")
        return namespace

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists the flags)\n")


def run_command(prog: str, main: typing.Callable[[list[str]], object], argv: list[str]) -> None:
    """Run ``main(argv)``, one command line. Bad input (a ``ValueError`` or ``OSError``, which
    name the bad value) prints one line and exits with code 2; ``--debug`` in ``argv`` lets the
    exception through with its traceback. Warnings print as one line each too."""
    debug = "--debug" in argv
    formatwarning = warnings.formatwarning
    if not debug:
        warnings.formatwarning = _one_line_warning
    try:
        main(argv)
    except (ValueError, OSError) as e:
        if debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"{prog}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        warnings.formatwarning = formatwarning


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {' '.join(str(message).split())}\n"
