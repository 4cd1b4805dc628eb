"""Input validation shared by every LoRA backend.

:func:`validate_group_inputs` checks what is static (shapes, dtypes, ``out_sizes``) on every call,
traced or not, and the values (``slot_rank <= R``, ``token_slot`` range, segment table) when the
arrays are concrete, i.e. when called eagerly or by a test: inside ``jit`` the values are tracers
and :func:`jlora.kernels.types.make_lora_batch` is what guards them. Errors are ``ValueError``s
that name the bad value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jlora.kernels.types import NO_SLOT, SEG_PAD, LoraBatch, LoraGroup


def _concrete(*arrays: jax.Array | None) -> bool:
    """Whether every array has a value now (not a tracer inside ``jit``)."""
    for a in arrays:
        if a is None:
            return False
        try:
            np.asarray(a)
        except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
            return False
    return True


def validate_group_inputs(
    x: jax.Array,  # [T, d_in]
    group: LoraGroup,  # a [S, M, R, d_in], b [S, O, R], scale [S, M]
    batch: LoraBatch,  # token_slot [T], slot_rank [S], segments [G]
    out_sizes: tuple[int, ...],  # M sizes summing to O
    layer: int | None = None,  # an int: group holds every layer's buffers [L, S, ...]
) -> None:
    """Raise ``ValueError`` unless the inputs of one group's LoRA delta are consistent."""
    a, b, scale = group.a, group.b, group.scale
    if layer is not None:
        num_layers = a.shape[0] if a.ndim else 0
        if not 0 <= layer < num_layers:
            raise ValueError(f"layer={layer} outside [0, L={num_layers}) of the stacked buffers")
        if b.ndim < 1 or scale.ndim < 1 or b.shape[0] != num_layers or scale.shape[0] != num_layers:
            raise ValueError(
                f"stacked group shapes a {a.shape}, b {b.shape}, scale {scale.shape} do not "
                f"share the leading layer dim L={num_layers}"
            )
        a, b, scale = (jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for v in (a, b, scale))
    if x.ndim != 2:
        raise ValueError(f"x must be [T, d_in], got shape {x.shape}")
    num_tokens, d_in = x.shape
    if num_tokens < 1:
        raise ValueError(f"x has T={num_tokens} tokens; pad the step to at least one token")
    if a.ndim != 4:
        raise ValueError(f"group.a must be [S, M, R, d_in], got shape {a.shape}")
    num_slots, num_modules, max_rank, a_d_in = a.shape
    if a_d_in != d_in:
        raise ValueError(f"group.a d_in={a_d_in} does not match x d_in={d_in}")
    out_sizes = tuple(out_sizes)
    if len(out_sizes) != num_modules:
        raise ValueError(f"out_sizes={out_sizes} has {len(out_sizes)} sizes for M={num_modules}")
    if any(int(o) <= 0 for o in out_sizes):
        raise ValueError(f"out_sizes={out_sizes} must all be positive")
    total_out = sum(out_sizes)
    if b.shape != (num_slots, total_out, max_rank):
        raise ValueError(
            f"group.b shape {b.shape} != (S, sum(out_sizes), R) = "
            f"{(num_slots, total_out, max_rank)}"
        )
    if scale.shape != (num_slots, num_modules):
        raise ValueError(f"group.scale shape {scale.shape} != (S, M) = {(num_slots, num_modules)}")
    for name, arr in (("x", x), ("group.a", a), ("group.b", b), ("group.scale", scale)):
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            raise ValueError(f"{name} dtype {arr.dtype} is not floating point")
    if a.dtype != b.dtype:
        raise ValueError(f"group.a dtype {a.dtype} != group.b dtype {b.dtype}")
    if batch.token_slot.shape != (num_tokens,):
        raise ValueError(
            f"batch.token_slot shape {batch.token_slot.shape} != (T,) = ({num_tokens},)"
        )
    if batch.slot_rank.shape != (num_slots,):
        raise ValueError(f"batch.slot_rank shape {batch.slot_rank.shape} != (S,) = ({num_slots},)")
    for name in ("token_slot", "slot_rank", "seg_slot", "seg_start", "seg_end"):
        arr = getattr(batch, name)
        if arr is not None and arr.dtype != jnp.int32:
            raise ValueError(f"batch.{name} dtype {arr.dtype} is not int32")
    segs = (batch.seg_slot, batch.seg_start, batch.seg_end)
    if any(s is not None for s in segs):
        if any(s is None for s in segs):
            raise ValueError("batch has only part of the segment table (seg_slot/start/end)")
        shapes = {s.shape for s in segs}  # type: ignore[union-attr]
        if len(shapes) != 1 or len(next(iter(shapes))) != 1:
            raise ValueError(f"batch segment arrays must share one 1-D shape, got {shapes}")

    if _concrete(batch.slot_rank):
        rank = np.asarray(batch.slot_rank)
        bad = rank[(rank < 0) | (rank > max_rank)]
        if bad.size:
            raise ValueError(
                f"slot_rank values {sorted(set(bad.tolist()))} outside [0, R={max_rank}]"
            )
    if _concrete(batch.token_slot):
        slot = np.asarray(batch.token_slot)
        bad = slot[(slot < NO_SLOT) | (slot >= num_slots)]
        if bad.size:
            raise ValueError(
                f"token_slot values {sorted(set(bad.tolist()))} outside [-1, {num_slots})"
            )
    if _concrete(batch.token_slot, batch.slot_rank, *segs):
        _check_segments(np.asarray(batch.token_slot), np.asarray(batch.slot_rank), *segs)


def _check_segments(
    token_slot: np.ndarray,
    slot_rank: np.ndarray,
    seg_slot: jax.Array,
    seg_start: jax.Array,
    seg_end: jax.Array,
) -> None:
    """The segment table must describe exactly the tokens that have a ranked adapter."""
    seg_slot, seg_start, seg_end = (np.asarray(v) for v in (seg_slot, seg_start, seg_end))
    num_tokens = len(token_slot)
    covered = np.full(num_tokens, NO_SLOT, dtype=np.int64)
    last_end, padding_seen = 0, False
    for i, (s, lo, hi) in enumerate(zip(seg_slot, seg_start, seg_end, strict=True)):
        if s == NO_SLOT:
            if lo != SEG_PAD or hi != SEG_PAD:
                raise ValueError(f"padding segment {i} has start/end {lo}/{hi}, not {SEG_PAD}")
            padding_seen = True
            continue
        if padding_seen:
            raise ValueError(f"segment {i} (slot {s}) comes after a padding segment")
        if not (last_end <= lo < hi <= num_tokens):
            raise ValueError(f"segment {i} [{lo}, {hi}) is empty, unsorted or out of [0, T)")
        covered[lo:hi] = s
        last_end = hi
    expected = np.where(
        (token_slot >= 0) & (slot_rank[np.maximum(token_slot, 0)] > 0), token_slot, NO_SLOT
    )
    wrong = np.flatnonzero(covered != expected)
    if wrong.size:
        t = int(wrong[0])
        raise ValueError(
            f"segment table routes token {t} to slot {covered[t]} but token_slot says "
            f"{token_slot[t]} (rank {slot_rank[max(token_slot[t], 0)]}); use make_lora_batch"
        )
