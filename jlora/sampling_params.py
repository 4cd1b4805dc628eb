"""Sampling parameters of a generation request (SGLang's and vLLM's names: ``max_tokens`` is
taken for ``max_new_tokens``)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from jlora.flags import nearest


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type. A ``TypeError``, and a ``ValueError`` too, so that a caller
    that refuses bad input by catching ``ValueError`` (the benchmark driver) catches it as well."""


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How one request generates. A value of the wrong type raises ``TypeError``, one out of range
    ``ValueError``, both naming the field and the value; numpy numbers are taken as Python ones."""

    max_new_tokens: int = 16
    """Most tokens to generate (at least 1)."""
    temperature: float = 0.0
    """0 is greedy; above 0 samples from softmax(logits / temperature)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    top_k: int = -1
    """Keep the k most likely tokens (-1: all)."""
    seed: int | None = None
    """Seed of this request's sampling (None: derived from the request id)."""
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that end generation, in addition to the model's EOS."""
    ignore_eos: bool = False
    """Generate exactly max_new_tokens, whatever the tokens (benchmarks)."""
    stop: tuple[str, ...] = ()
    """Stop strings: generation ends where the output's text first contains one, and the text is
    cut before it (the token ids keep the token that completed it). Needs a model with a
    tokenizer."""
    detokenize: bool = True
    """With a tokenizer, give the output's text (``RequestOutput.text``, streamed pieces) as it is
    generated; False: token ids only, no per-token decoding (stop strings then cannot be used)."""

    def __post_init__(self) -> None:
        # Numpy integers and floats are taken (prompts may be numpy arrays); bools, strings and
        # non-finite numbers are not. Types first (TypeError), then ranges (ValueError).
        set_ = object.__setattr__
        set_(self, "max_new_tokens", _int("max_new_tokens", self.max_new_tokens))
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens!r} must be at least 1")
        set_(self, "temperature", _float("temperature", self.temperature))
        if not 0 <= self.temperature < math.inf:
            raise ValueError(f"temperature={self.temperature!r} must be finite and >= 0")
        set_(self, "top_p", _float("top_p", self.top_p))
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p!r} must be in (0, 1]")
        set_(self, "top_k", _int("top_k", self.top_k))
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"top_k={self.top_k!r} must be -1 (all) or positive")
        if self.seed is not None:
            set_(self, "seed", _int("seed", self.seed))
        stops = self.stop_token_ids
        if isinstance(stops, str | bytes) or not isinstance(stops, Iterable):
            raise ArgumentTypeError(f"stop_token_ids={stops!r} must be a list of token ids")
        set_(self, "stop_token_ids", tuple(_int("stop_token_ids", t, stops) for t in stops))
        if any(t < 0 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids={stops!r} must hold token ids >= 0")
        if not isinstance(self.ignore_eos, bool | np.bool_):
            raise ArgumentTypeError(f"ignore_eos={self.ignore_eos!r} must be True or False")
        set_(self, "ignore_eos", bool(self.ignore_eos))
        stop = self.stop
        if isinstance(stop, str):
            raise ArgumentTypeError(f"stop={stop!r} must be a list of strings (stop=[{stop!r}])")
        if not isinstance(stop, Iterable):
            raise ArgumentTypeError(f"stop={stop!r} must be a list of strings")
        stop = tuple(stop)
        for s in stop:
            if not isinstance(s, str):
                raise ArgumentTypeError(
                    f"stop={stop!r} must hold strings, not {type(s).__name__} ({s!r})"
                )
            if not s:
                raise ValueError(f"stop={stop!r} holds an empty string")
        set_(self, "stop", stop)
        if not isinstance(self.detokenize, bool | np.bool_):
            raise ArgumentTypeError(f"detokenize={self.detokenize!r} must be True or False")
        set_(self, "detokenize", bool(self.detokenize))
        if self.stop and not self.detokenize:
            raise ValueError(f"stop={self.stop!r} needs detokenize=True (stop strings are text)")


# vLLM's and OpenAI's names of our fields, taken as aliases.
ALIASES = {"max_tokens": "max_new_tokens"}
_dataclass_init = SamplingParams.__init__


def _init_with_aliases(self: SamplingParams, *args, **kwargs) -> None:
    # The dataclass's own __init__, after renaming the aliases: an unknown keyword is a TypeError
    # that names the accepted ones (the generated __init__ would name only the bad one).
    fields = list(SamplingParams.__dataclass_fields__)
    if args:
        raise ArgumentTypeError(
            f"SamplingParams takes keywords only ({', '.join(fields)}), got {args!r}"
        )
    for alias, name in ALIASES.items():
        if alias in kwargs:
            if name in kwargs:
                raise ArgumentTypeError(
                    f"SamplingParams got both {alias}={kwargs[alias]!r} and "
                    f"{name}={kwargs[name]!r}; {alias} is another name for {name}: pass one"
                )
            kwargs[name] = kwargs.pop(alias)
    unknown = [k for k in kwargs if k not in fields]
    if unknown:
        hint = nearest(unknown[0], [*fields, *ALIASES])
        raise ArgumentTypeError(
            f"SamplingParams got an unknown keyword {unknown[0]!r}{hint}; "
            f"it takes {', '.join(fields)} (and {', '.join(ALIASES)} for "
            f"{', '.join(ALIASES.values())})"
        )
    _dataclass_init(self, **kwargs)


_init_with_aliases.__signature__ = inspect.signature(_dataclass_init)  # type: ignore[attr-defined]
_init_with_aliases.__doc__ = SamplingParams.__doc__
SamplingParams.__init__ = _init_with_aliases  # type: ignore[method-assign]


def _int(field: str, value, whole=None) -> int:
    """``value`` as a Python int: an int or numpy integer (not a bool, a float or a string)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        shown = value if whole is None else whole
        raise ArgumentTypeError(
            f"{field}={shown!r} must be an integer, not {type(value).__name__} ({value!r})"
        )
    return int(value)


def _float(field: str, value) -> float:
    """``value`` as a Python float: an int, float or numpy number (not a bool or a string)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        raise ArgumentTypeError(f"{field}={value!r} must be a number, not {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{field}={value!r} must be a number, not NaN")
    return value
