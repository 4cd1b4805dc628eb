"""Adapters for the simulator: a name, a path and a rank, no weights.

``dummy:RANK`` needs nothing; a PEFT directory is checked as the real loader checks its config, and
its rank is read from the tensor shapes in the safetensors header (no tensor data is read).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from jlora.adapters.dummy import parse_dummy_spec
from jlora.adapters.peft import (
    WEIGHTS_FILE,
    AdapterError,
    LoraAdapter,
    check_peft_config,
    read_peft_config,
)


@dataclass(frozen=True)
class AdapterStub(LoraAdapter):
    """A :class:`LoraAdapter` with no modules that still reports its rank."""

    declared_rank: int = 0

    @property
    def rank(self) -> int:
        return self.declared_rank

    def nbytes(self) -> int:
        return 0


def peft_rank(name: str, path: str | Path) -> int:
    """The largest LoRA rank of a PEFT adapter directory, from its config and tensor shapes."""
    path = Path(path)
    check_peft_config(name, read_peft_config(name, path))
    ranks = []
    with safe_open(path / WEIGHTS_FILE, framework="numpy") as fh:
        for tensor in fh.keys():  # noqa: SIM118 - safe_open handles are not iterable
            if tensor.endswith("lora_A.weight"):
                ranks.append(fh.get_slice(tensor).get_shape()[0])
    if not ranks:
        raise AdapterError(name, WEIGHTS_FILE, str(path / WEIGHTS_FILE), "holds no LoRA weights")
    return max(ranks)


def stub_loader(
    max_lora_rank: int, on_load: Callable[[int], None] | None = None
) -> Callable[[str, str], AdapterStub]:
    """An adapter loader for :class:`~jlora.adapters.pool.AdapterPool` that builds no weights;
    ``on_load(rank)`` is told of every read (the simulator charges host loads through it)."""

    def load(name: str, path: str) -> AdapterStub:
        rank = parse_dummy_spec(path)
        if rank is None:
            rank = peft_rank(name, path)
        if rank < 1:
            raise ValueError(f"adapter {name!r}: rank={rank} must be positive")
        if rank > max_lora_rank:
            raise ValueError(
                f"adapter {name!r}: rank={rank} is above max_lora_rank={max_lora_rank}"
            )
        if on_load is not None:
            on_load(rank)
        return AdapterStub(name=name, path=path, modules={}, declared_rank=rank)

    return load
