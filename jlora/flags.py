"""Command-line flags derived from frozen config dataclasses, so no option is declared twice.

Each field becomes ``--field-name`` (underscores to dashes, SGLang's spelling), typed from its
annotation, with the field's docstring as help. ``dict[str, str]`` fields take ``NAME=VALUE ...``,
tuples take several values, booleans take ``--x`` / ``--no-x``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
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
    return float("inf") if text.lower() in ("inf", "infinity") else float(text)


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
            kwargs["type"] = typing.get_args(tp)[0]
        elif tp is float:
            kwargs["type"] = _parse_float
        elif tp in (int, str):
            kwargs["type"] = tp
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
