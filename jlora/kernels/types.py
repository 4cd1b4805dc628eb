"""Data shared by every LoRA backend: one module group's slot buffers, and a batch's routing.

Target modules that read the same input are stored and computed together as a *group*: ``qkv``
(q, k, v read the normed hidden state), ``o``, ``gate_up`` (gate, up read the normed hidden state)
and ``down``. A group of ``M`` modules with output sizes ``out_sizes`` keeps, over ``S`` slots
padded to rank ``R``::

    a      [S, M, R, d_in]       A of each module, rank-padded with zeros
    b      [S, sum(out_sizes), R] B of the modules, concatenated on the output dim
    scale  [S, M]                 lora_alpha / r (or / sqrt(r) with rsLoRA); 0 where not targeted

and the delta of module ``m`` for a token of slot ``s`` is
``scale[s, m] * (x @ a[s, m].T) @ b[s, off_m:off_m + out_m].T``. Storing the group fused means a
fused kernel launch reads the buffers as they are, with no per-step concatenation.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np

NO_SLOT = -1  # token_slot value of a token with no adapter

# Module groups in forward order, and the modules of each (PEFT module names).
MODULE_GROUPS: dict[str, tuple[str, ...]] = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}
TARGET_MODULES: tuple[str, ...] = tuple(m for ms in MODULE_GROUPS.values() for m in ms)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class LoraGroup:
    """Device slot buffers of one module group in one layer (see the module docstring)."""

    a: jax.Array  # [S, M, R, d_in]
    b: jax.Array  # [S, O, R], O = sum(out_sizes)
    scale: jax.Array  # [S, M] float32


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class LoraBatch:
    """How one step's tokens are routed to slots. Built on the host by :func:`make_lora_batch`.

    Tokens are grouped by slot: all tokens of a slot form one contiguous run (the runner orders its
    sequences by slot), tokens without an adapter may sit anywhere.
    """

    token_slot: jax.Array  # [T] int32, NO_SLOT for no adapter
    slot_rank: jax.Array  # [S] int32, the adapter's own (largest) rank in each slot; 0 = empty


def make_lora_batch(token_slot: np.ndarray, slot_rank: np.ndarray) -> LoraBatch:
    """Host-side builder of a step's :class:`LoraBatch` (numpy in, device arrays out)."""
    token_slot = np.asarray(token_slot, dtype=np.int32)
    slot_rank = np.asarray(slot_rank, dtype=np.int32)
    if token_slot.ndim != 1 or slot_rank.ndim != 1:
        raise ValueError(
            f"token_slot and slot_rank must be 1-D, got {token_slot.shape}, {slot_rank.shape}"
        )
    bad = token_slot[(token_slot < NO_SLOT) | (token_slot >= len(slot_rank))]
    if bad.size:
        raise ValueError(
            f"token_slot values {sorted(set(bad.tolist()))} outside [-1, {len(slot_rank)})"
        )
    return LoraBatch(
        token_slot=jax.numpy.asarray(token_slot), slot_rank=jax.numpy.asarray(slot_rank)
    )
