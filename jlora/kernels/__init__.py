"""LoRA math backends. ``xla`` is the reference; the Pallas kernels are added beside it."""

from __future__ import annotations

import jax

from jlora.kernels.lora_xla import lora_group_ref
from jlora.kernels.types import (
    MODULE_GROUPS,
    NO_SLOT,
    TARGET_MODULES,
    LoraBatch,
    LoraGroup,
    make_lora_batch,
)

__all__ = [
    "MODULE_GROUPS",
    "NO_SLOT",
    "TARGET_MODULES",
    "LoraBatch",
    "LoraGroup",
    "lora_group_delta",
    "make_lora_batch",
]


def lora_group_delta(
    x: jax.Array,  # [T, d_in]
    group: LoraGroup,
    batch: LoraBatch,
    out_sizes: tuple[int, ...],
    *,
    backend: str,
    interpret: bool | None = None,
) -> jax.Array:  # [T, sum(out_sizes)]
    """LoRA delta of one module group, by the chosen backend."""
    if backend == "xla":
        return lora_group_ref(x, group, batch, out_sizes)
    raise ValueError(f"lora_backend={backend!r} is not available (known: 'xla')")
