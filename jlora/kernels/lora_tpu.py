"""Multi-LoRA delta of one module group on TPU: Pallas with the Mosaic TPU lowering.

Same math as :mod:`jlora.kernels.lora_xla`. A TPU core runs the grid in order, one step after the
other, with the next step's blocks copied in while the current one computes; a kernel therefore
describes the blocks each step needs, and Pallas streams them. The routing is a *work list*, as in
megablox's grouped matmul: one item per (token tile, segment overlapping it), sorted by tile, plus
one item for each tile no segment touches. Its arrays (tile, segment and slot of each item) are
**scalar-prefetched** (``PrefetchScalarGridSpec``) into SMEM, where the block index maps read
them to pick the slot's weight blocks: only the adapters the tokens use are ever copied in.

Two launches (on TPU a launch costs little, and ``h`` is small):

- **shrink**, grid ``(work item, d_in block)``: ``acc[m] += x[tile, k] @ a[slot, m, :, k].T`` for
  every module ``m`` of the group; at the last ``k`` the segment's rows of the accumulator go into
  ``h [M, T, R]`` float32. The ``h`` block of a tile stays in VMEM while consecutive items visit
  the same tile, so a tile that two segments share is written by both, row-masked.
- **expand**, grid ``(output block, work item)``: ``y[tile, o] = (h[m] * scale[slot, m]) @
  b[slot, o, :].T`` for the module ``m`` that owns output block ``o``, row-masked likewise; the
  first visit of a tile zeroes its block, so tokens without an adapter get zeros.

Rank: ``a``'s and ``b``'s rank axis is a full block dimension (``b`` keeps it on the 128-wide lane
axis, where a block must span the whole axis), so a slot's weights are copied at the padded rank
``R``; the cost still follows the slots in use rather than all slots, and rows without an adapter
cost no matmul. Making the copy follow each adapter's rank needs ``b`` stored as ``[S, R, O]`` (rank
on sublanes, blockable in 8s/16s): a layout change for the slot buffers, left for when a TPU is
there to measure it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jlora.kernels.tuned_blocks import TpuBlocks, tpu_blocks
from jlora.kernels.types import LoraBatch, LoraGroup, lora_segments


def work_list(
    seg_start: jax.Array,  # [G] int32
    seg_end: jax.Array,  # [G] int32
    num_tiles: int,
    block_t: int,
) -> tuple[jax.Array, jax.Array]:  # tile [W], segment [W] (-1: empty tile, -2: padding)
    """The (tile, segment) items of a step, sorted by tile; ``W = num_tiles + G`` (static)."""
    num_work = num_tiles + seg_start.shape[0]
    t0 = jnp.arange(num_tiles, dtype=jnp.int32) * block_t
    lo = jnp.sum(seg_end[None, :] <= t0[:, None], axis=1, dtype=jnp.int32)  # [tiles]
    hi = jnp.sum(seg_start[None, :] < t0[:, None] + block_t, axis=1, dtype=jnp.int32)
    count = jnp.maximum(hi - lo, 1)
    ends = jnp.cumsum(count)
    w = jnp.arange(num_work, dtype=jnp.int32)
    tile = jnp.minimum(jnp.searchsorted(ends, w, side="right"), num_tiles - 1).astype(jnp.int32)
    seg = lo[tile] + w - (ends[tile] - count[tile])
    seg = jnp.where(hi[tile] > lo[tile], seg, -1)
    real = w < ends[-1]
    return jnp.where(real, tile, num_tiles - 1), jnp.where(real, seg, -2).astype(jnp.int32)


def _first_visit(w, tile_ref):
    return (w == 0) | (tile_ref[w] != tile_ref[jnp.maximum(w - 1, 0)])


def _segment_rows(w, shape, axis, block_t, tile_ref, seg_ref, start_ref, end_ref):
    """Boolean ``shape`` mask of the work item's segment rows (``axis`` indexes the tile's rows)."""
    seg = seg_ref[w]
    safe = jnp.maximum(seg, 0)
    rows = tile_ref[w] * block_t + lax.broadcasted_iota(jnp.int32, shape, axis)
    return (seg >= 0) & (rows >= start_ref[safe]) & (rows < end_ref[safe])


def _shrink_kernel(
    tile_ref,  # [W] int32 (SMEM, prefetched) token tile of each work item
    seg_ref,  # [W] int32 (SMEM) segment of each item, -1 empty tile, -2 padding
    slot_ref,  # [W] int32 (SMEM) buffer row of each item's slot (0 where none)
    start_ref,  # [G] int32 (SMEM) segment starts
    end_ref,  # [G] int32 (SMEM) segment ends
    x_ref,  # [bt, bk] tokens of the tile, one d_in block
    a_ref,  # [M, R, bk] the slot's A, one d_in block
    h_ref,  # [M, bt, R] float32 output: the tile's shrink
    acc_ref,  # [M, bt, R] float32 scratch
    *,
    num_k: int,
    block_t: int,
):
    w, k = pl.program_id(0), pl.program_id(1)
    num_modules = acc_ref.shape[0]

    @pl.when(k == 0)
    def _():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    @pl.when(seg_ref[w] >= 0)
    def _():
        cdt = jnp.promote_types(x_ref.dtype, a_ref.dtype)
        x = x_ref[...].astype(cdt)
        for m in range(num_modules):
            a = a_ref[m].astype(cdt)  # [R, bk]
            acc_ref[m] += lax.dot_general(
                x, a, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
            )

    @pl.when(k == num_k - 1)
    def _():
        first = _first_visit(w, tile_ref)
        shape = acc_ref.shape[1:]
        mine = _segment_rows(w, shape, 0, block_t, tile_ref, seg_ref, start_ref, end_ref)
        for m in range(num_modules):
            prev = jnp.where(first, 0.0, h_ref[m])
            h_ref[m] = jnp.where(mine, acc_ref[m], prev)


def _expand_kernel(
    tile_ref,  # [W] int32 (SMEM, prefetched)
    seg_ref,  # [W] int32 (SMEM)
    slot_ref,  # [W] int32 (SMEM)
    start_ref,  # [G] int32 (SMEM)
    end_ref,  # [G] int32 (SMEM)
    scale_ref,  # [S, M] float32 (SMEM)
    h_ref,  # [M, bt, R] float32 the tile's shrink
    b_ref,  # [bo, R] the slot's B rows of this output block
    *rest,  # (out_alias (HBM),)? then y [bt, bo] output block
    out_sizes: tuple[int, ...],
    block_o: int,
    block_t: int,
):
    y_ref = rest[-1]
    p, w = pl.program_id(0), pl.program_id(1)
    bt, bo = y_ref.shape

    @pl.when(_first_visit(w, tile_ref))
    def _():
        y_ref[...] = jnp.zeros_like(y_ref)

    @pl.when(seg_ref[w] >= 0)
    def _():
        slot = slot_ref[w]
        mine = _segment_rows(w, (bt, bo), 0, block_t, tile_ref, seg_ref, start_ref, end_ref)

        def delta(m, b):  # [bt, rows of b]
            h = (h_ref[m] * scale_ref[slot, m]).astype(b.dtype)
            return lax.dot_general(
                h, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
            )

        if len(out_sizes) == 1 or block_o < sum(out_sizes):
            # Each output block lies inside one module (block_o divides every module's size).
            m = p * 0
            off = 0
            for size in out_sizes[:-1]:
                off += size
                m = m + (p * block_o >= off).astype(jnp.int32)
            val = delta(m, b_ref[...])
            y_ref[...] = jnp.where(mine, val.astype(y_ref.dtype), y_ref[...])
        else:  # one block spans the whole of O: static module slices
            off = 0
            for m, size in enumerate(out_sizes):
                cols = pl.ds(off, size)
                val = delta(m, b_ref[cols, :])
                y_ref[:, cols] = jnp.where(mine[:, :size], val.astype(y_ref.dtype), y_ref[:, cols])
                off += size


@functools.partial(jax.jit, static_argnames=("out_sizes", "blocks", "interpret"))
def lora_group_tpu(
    x: jax.Array,  # [T, d_in]
    group: LoraGroup,  # a [N, M, R, d_in], b [N, O, R], scale [N, M]; N >= slot_base + S
    batch: LoraBatch,  # token_slot [T], slot_rank [S], segments [G]
    out_sizes: tuple[int, ...],  # M sizes summing to O
    *,
    slot_base: jax.Array | int = 0,  # [] int32: the buffers' row of slot 0
    blocks: TpuBlocks | None = None,
    interpret: bool | pltpu.InterpretParams = False,
    out: jax.Array | None = None,  # [T, O] buffer to write into (donated; every element is set)
) -> jax.Array:  # [T, O], x.dtype
    """LoRA delta of one module group with the Pallas TPU kernels (Mosaic TPU lowering).

    ``interpret`` may be ``True`` (generic interpreter) or ``pltpu.InterpretParams()`` (the TPU
    interpreter, which also simulates the copies and SMEM).

    Slot ``s`` reads row ``slot_base + s`` of the buffers (the model's stacked layers, as
    :func:`jlora.kernels.lora_gpu.lora_group_gpu`).
    """
    seg_slot, seg_start, seg_end = lora_segments(batch)
    num_tokens, d_in = x.shape
    num_modules, max_rank = group.a.shape[1:3]
    total_out = sum(out_sizes)
    if blocks is None:
        blocks = tpu_blocks(num_tokens, d_in, out_sizes)
    bt = blocks.block_t if num_tokens > blocks.block_t else num_tokens
    bk = blocks.block_k if d_in % blocks.block_k == 0 else d_in
    fits = all(size % blocks.block_o == 0 for size in out_sizes)
    bo = blocks.block_o if fits else total_out
    num_tiles, num_k, num_o = -(-num_tokens // bt), d_in // bk, total_out // bo

    tile, seg = work_list(seg_start, seg_end, num_tiles, bt)
    slot = jnp.where(seg >= 0, seg_slot[jnp.maximum(seg, 0)] + slot_base, 0).astype(jnp.int32)
    prefetch = (tile, seg, slot, seg_start, seg_end)
    num_work = tile.shape[0]

    shrink = pl.pallas_call(
        functools.partial(_shrink_kernel, num_k=num_k, block_t=bt),
        out_shape=jax.ShapeDtypeStruct((num_modules, num_tokens, max_rank), jnp.float32),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=len(prefetch),
            grid=(num_work, num_k),
            in_specs=[
                pl.BlockSpec((bt, bk), lambda w, k, t, *_: (t[w], k)),
                pl.BlockSpec(
                    (None, num_modules, max_rank, bk), lambda w, k, t, s, sl, *_: (sl[w], 0, 0, k)
                ),
            ],
            out_specs=pl.BlockSpec((num_modules, bt, max_rank), lambda w, k, t, *_: (0, t[w], 0)),
            scratch_shapes=[pltpu.VMEM((num_modules, bt, max_rank), jnp.float32)],
        ),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("arbitrary", "arbitrary")),
        interpret=interpret,
        name="lora_shrink_tpu",
    )
    h = shrink(*prefetch, x, group.a)

    in_specs = [
        pl.BlockSpec(memory_space=pltpu.SMEM),
        pl.BlockSpec((num_modules, bt, max_rank), lambda p, w, t, *_: (0, t[w], 0)),
        pl.BlockSpec((None, bo, max_rank), lambda p, w, t, s, sl, *_: (sl[w], p, 0)),
    ]
    inputs = (group.scale.astype(jnp.float32), h, group.b)
    aliases = {}
    if out is not None:
        in_specs.append(pl.BlockSpec(memory_space=pl.ANY))
        inputs = (*inputs, out)
        aliases = {len(prefetch) + len(inputs) - 1: 0}
    expand = pl.pallas_call(
        functools.partial(_expand_kernel, out_sizes=tuple(out_sizes), block_o=bo, block_t=bt),
        out_shape=jax.ShapeDtypeStruct((num_tokens, total_out), x.dtype),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=len(prefetch),
            grid=(num_o, num_work),
            in_specs=in_specs,
            out_specs=pl.BlockSpec((bt, bo), lambda p, w, t, *_: (t[w], p)),
        ),
        input_output_aliases=aliases,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=interpret,
        name="lora_expand_tpu",
    )
    return expand(*prefetch, *inputs)
