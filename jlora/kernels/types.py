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

    Besides the per-token slot, the builder describes the runs as *segments* (Punica's SGMV): the
    maximal runs of tokens of one slot whose adapter has a rank, in token order, padded to a static
    count ``G`` (``max_segments``, the number of slots unless asked otherwise) so that every step
    of a shape bucket has the same pytree shapes. Padding segments have slot ``NO_SLOT`` and
    ``start == end == SEG_PAD``, a position past any token, so they overlap no token range. The
    Pallas kernels read these to find, for a tile of tokens, which adapters it needs; tokens in no
    segment (no adapter, or an empty rank-0 slot) get a zero delta.
    """

    token_slot: jax.Array  # [T] int32, NO_SLOT for no adapter
    slot_rank: jax.Array  # [S] int32, the adapter's own (largest) rank in each slot; 0 = empty
    seg_slot: jax.Array | None = None  # [G] int32 slot of each segment, NO_SLOT for padding
    seg_start: jax.Array | None = None  # [G] int32 first token of each segment (SEG_PAD: none)
    seg_end: jax.Array | None = None  # [G] int32 one past its last token (SEG_PAD: none)


# start/end of a padding segment: past any token, and small enough that adding a tile stays int32.
SEG_PAD = 1 << 30


def segments_np(
    token_slot: np.ndarray, slot_rank: np.ndarray, max_segments: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Host-side segment table ``(seg_slot, seg_start, seg_end)``, each ``[max_segments]`` int32."""
    slot = np.asarray(token_slot, dtype=np.int64)
    rank = np.asarray(slot_rank, dtype=np.int64)
    active = slot >= 0
    active[active] = rank[slot[active]] > 0
    key = np.where(active, slot, -1)
    change = np.ones(len(key) + 1, dtype=bool)
    change[1:-1] = key[1:] != key[:-1]
    bounds = np.flatnonzero(change)  # run boundaries, including 0 and T
    starts, ends = bounds[:-1], bounds[1:]
    keep = key[starts] >= 0 if len(starts) else np.zeros(0, dtype=bool)
    starts, ends = starts[keep], ends[keep]
    if len(starts) > max_segments:
        raise ValueError(
            f"token_slot has {len(starts)} runs of adapter tokens but max_segments={max_segments}; "
            "order the tokens so that each slot's tokens are contiguous (or raise max_segments)"
        )
    seg_slot = np.full(max_segments, NO_SLOT, dtype=np.int32)
    seg_start = np.full(max_segments, SEG_PAD, dtype=np.int32)
    seg_end = np.full(max_segments, SEG_PAD, dtype=np.int32)
    seg_slot[: len(starts)] = key[starts]
    seg_start[: len(starts)] = starts
    seg_end[: len(starts)] = ends
    return seg_slot, seg_start, seg_end


def make_lora_batch(
    token_slot: np.ndarray,
    slot_rank: np.ndarray,
    *,
    max_segments: int | None = None,
    on_device: bool = True,
) -> LoraBatch:
    """Host-side builder of a step's :class:`LoraBatch` (numpy in, device arrays out, or numpy
    arrays with ``on_device=False``, for a caller that sends the step's inputs in one transfer).

    ``max_segments`` (default: the number of slots) is the static length of the segment table; keep
    it fixed across steps so that the jitted step does not recompile.
    """
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
    if (slot_rank < 0).any():
        raise ValueError(f"slot_rank has negative ranks: {slot_rank.tolist()}")
    if max_segments is None:
        max_segments = max(len(slot_rank), 1)
    seg_slot, seg_start, seg_end = segments_np(token_slot, slot_rank, max_segments)
    put = jax.numpy.asarray if on_device else np.asarray
    return LoraBatch(
        token_slot=put(token_slot),
        slot_rank=put(slot_rank),
        seg_slot=put(seg_slot),
        seg_start=put(seg_start),
        seg_end=put(seg_end),
    )


def lora_segments(batch: LoraBatch) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The batch's segment table; computed on the device when the batch was built without one.

    The device fallback (a few small XLA ops) assumes the builder's contract: at most one run per
    slot (``G = S``); extra runs are dropped silently, which only :func:`make_lora_batch` can
    detect. Prefer building batches with :func:`make_lora_batch`.
    """
    if batch.seg_slot is not None and batch.seg_start is not None and batch.seg_end is not None:
        return batch.seg_slot, batch.seg_start, batch.seg_end
    jnp = jax.numpy
    slot, rank = batch.token_slot, batch.slot_rank
    num_tokens, num_segments = slot.shape[0], max(rank.shape[0], 1)
    active = (slot >= 0) & (rank[jnp.maximum(slot, 0)] > 0)
    key = jnp.where(active, slot, NO_SLOT)
    prev = jnp.concatenate([jnp.full((1,), NO_SLOT - 1, key.dtype), key[:-1]])
    nxt = jnp.concatenate([key[1:], jnp.full((1,), NO_SLOT - 1, key.dtype)])
    (starts,) = jnp.nonzero(active & (key != prev), size=num_segments, fill_value=SEG_PAD)
    (lasts,) = jnp.nonzero(active & (key != nxt), size=num_segments, fill_value=SEG_PAD - 1)
    starts = starts.astype(jnp.int32)
    seg_slot = jnp.where(starts < SEG_PAD, key[jnp.minimum(starts, num_tokens - 1)], NO_SLOT)
    return seg_slot.astype(jnp.int32), starts, (lasts + 1).astype(jnp.int32)
