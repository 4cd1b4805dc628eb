"""Multi-LoRA delta of one module group on GPU: Pallas with the Triton lowering.

What is computed (see :mod:`jlora.kernels.lora_xla` for the reference)::

    y[t, off_m : off_m + out_m] = scale[s, m] * (x[t] @ a[s, m, :r_s].T) @ b[s, off_m : .., :r_s].T

for the tokens ``t`` of each segment (a run of tokens of slot ``s``, rank ``r_s``), and ``y[t] = 0``
for the tokens in no segment.

**Fused launch (default).** The grid is ``(output chunks, work items)``. A chunk is a range of
``o_chunk`` output columns inside one module ``m`` (q, k, v, gate, up, ...), so all modules of the
group are served by one launch. The work items are first the ``block_t``-row tiles of each segment
in turn (found in-kernel from the segment table with a cumsum: a tile never holds two adapters),
then one item per fixed tile of ``[0, T)`` that zeroes the rows no segment covers (it exits at once
when there are none). A segment tile:

1. *shrinks* ``h = x[rows] @ a[s, m, :r].T`` over d_in (rows past the segment masked out of the
   load), scales it and rounds it to the weights' dtype, as the reference does;
2. *expands* ``h @ b[s, chunk, :r].T`` in ``block_o`` column blocks and stores the segment's rows.

The shrink is recomputed by every chunk of a module (``out_m / o_chunk`` times), re-reading ``x``
and ``a`` from L2 rather than HBM; in exchange there is one launch per group and ``h`` never goes
through memory. At prefill a chunk spans a whole module (parallelism comes from the token tiles,
the shrink runs once); at decode chunks are small so that the few tiles still fill the GPU.

**Cost follows each adapter's rank.** ``r`` is padded to a static bucket (16, 32, 64, ...: the
Triton dot needs K, N >= 16) picked per segment by ``lax.switch``, and the rows of ``a`` past the
slot's own rank are masked out of the loads, so a rank-8 adapter reads an eighth of what a rank-64
one reads from ``a`` and a quarter from ``b``. The shrink's K step grows as the bucket shrinks
(``block_k`` at rank 16, half that at 32, ...) so the ``a`` tile, and shared memory, stay constant
while small ranks take fewer, longer loop trips. Slots no token uses are never read; tokens without
an adapter cost one zero store.

**Split launch (``split_k > 0``).** A shrink launch splits d_in ``split_k`` ways and writes float32
partial sums ``[split_k, T, M, R']``; an expand launch sums them. Its kernels are faster where d_in
is long and T small (down_proj at T=64: 8 us against 22 us on the H100), but it costs a second
launch. Inside the engine's step (one CUDA graph) that second launch pays off for the MLP groups
at decode sizes, not for q|k|v and o, and the tuned table (:mod:`jlora.kernels.tuned_blocks`)
chooses accordingly.

**Why the Triton lowering.** The kernel is a pile of small, masked, data-dependent loads (segment
rows that start anywhere, rank rows, slot-indexed weights) around matmuls whose M is 16-32 tokens
and whose N or K is the rank (16-128). Triton expresses masked pointer loads and ``mma`` tiles of
16 directly, its calls compile in ~1.5-2.5 s and identical calls across layers are compiled once
(a 32-layer step compiles in 2-3 s). Mosaic GPU builds on warpgroup ``wgmma`` (64-row tiles) and
TMA copies of static shapes: segment rows that start anywhere need a ladder of copies (as jax's
``ragged_dot_mgpu`` does) and 16-token decode tiles waste 3/4 of each ``wgmma``. Measurements are in
``experiments/results/kernels.md``.

Usage contract: tokens of one slot contiguous (:class:`jlora.kernels.types.LoraBatch`); T, d_in,
out_sizes, S, R and the segment count are static (one compile per shape bucket).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltr

from jlora.kernels.tuned_blocks import GpuBlocks, gpu_blocks
from jlora.kernels.types import SEG_PAD, LoraBatch, LoraGroup, lora_segments


def rank_buckets(max_rank: int) -> tuple[int, ...]:
    """Static rank paddings the kernels specialise for: 16, 32, ... up to the first >= max_rank."""
    buckets = [16]
    while buckets[-1] < max_rank:
        buckets.append(buckets[-1] * 2)
    return tuple(buckets)


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@dataclass(frozen=True)
class _Plan:
    """Everything static about one call: shapes, tiling, work items, output chunks."""

    num_tokens: int
    d_in: int
    out_sizes: tuple[int, ...]
    max_rank: int
    num_segments: int
    blocks: GpuBlocks
    chunk_starts: tuple[int, ...]  # first chunk index of each module
    num_chunks: int

    @property
    def buckets(self) -> tuple[int, ...]:
        return rank_buckets(self.max_rank)

    @property
    def offsets(self) -> tuple[int, ...]:
        offs, acc = [], 0
        for size in self.out_sizes:
            offs.append(acc)
            acc += size
        return tuple(offs)

    @property
    def full_chunks(self) -> bool:  # every chunk holds exactly o_chunk columns
        return all(size % self.blocks.o_chunk == 0 for size in self.out_sizes)

    @property
    def col_mask(self) -> bool:  # some expand block runs past its module's end
        return any(size % self.blocks.block_o for size in self.out_sizes)

    @property
    def fixed_tiles(self) -> int:  # tiles of [0, T) that zero the rows without an adapter
        return -(-self.num_tokens // self.blocks.block_t)

    @property
    def segment_tiles(self) -> int:  # bound on the tiles of all segments: sum ceil(len / bt)
        return self.fixed_tiles + self.num_segments

    @property
    def k_units(self) -> int:  # d_in in steps of block_k (the rank-16 K step, the largest)
        return -(-self.d_in // self.blocks.block_k)

    def k_step(self, rb: int) -> int:
        """Shrink K step at rank bucket ``rb``: the A tile stays ``16 x block_k`` elements, so small
        ranks take long steps (few loop trips) and large ranks still fit shared memory."""
        bk = self.blocks.block_k
        return min(bk, max(min(64, bk), bk * 16 // rb))


def _make_plan(
    x_shape: tuple[int, int], max_rank: int, out_sizes: tuple[int, ...], num_segments: int, blocks
) -> _Plan:
    num_tokens, d_in = x_shape
    for name in ("block_t", "block_k", "block_o"):
        v = getattr(blocks, name)
        if v < 16 or v & (v - 1):
            raise ValueError(f"GpuBlocks.{name}={v} must be a power of 2 >= 16")
    if blocks.o_chunk % blocks.block_o:
        raise ValueError(f"GpuBlocks.o_chunk={blocks.o_chunk} not a multiple of block_o")
    # Never chunk past a module: a chunk of a small module is the module rounded to block_o.
    chunk = min(blocks.o_chunk, max(-(-s // blocks.block_o) * blocks.block_o for s in out_sizes))
    split = blocks.split_k
    if split:
        split = max(1, min(split, -(-d_in // blocks.block_k)))
    blocks = GpuBlocks(**{**blocks.__dict__, "o_chunk": chunk, "split_k": split})
    starts, acc = [], 0
    for size in out_sizes:
        starts.append(acc)
        acc += -(-size // blocks.o_chunk)
    return _Plan(
        num_tokens=num_tokens,
        d_in=d_in,
        out_sizes=out_sizes,
        max_rank=max_rank,
        num_segments=num_segments,
        blocks=blocks,
        chunk_starts=tuple(starts),
        num_chunks=acc,
    )


# ------------------------------------------------------------------------------------------------
# Pieces shared by the kernels. All indices are int32 scalars or [n] vectors.


def _chunk_columns(chunk, plan: _Plan):
    """Module ``m`` and output column range ``[lo, hi)`` of an output chunk."""
    m = chunk * 0  # a traced zero: python ints as ref indices trip the interpreter
    for start in plan.chunk_starts[1:]:
        m = m + (chunk >= start).astype(jnp.int32)
    lo = chunk * 0
    hi = chunk * 0
    for i, (off, size) in enumerate(zip(plan.offsets, plan.out_sizes, strict=True)):
        mine = m == i
        lo = jnp.where(mine, off + (chunk - plan.chunk_starts[i]) * plan.blocks.o_chunk, lo)
        hi = jnp.where(mine, off + size, hi)
    hi = jnp.minimum(hi, lo + plan.blocks.o_chunk)
    return m, lo, hi


def _segment_table(seg_start_ref, seg_end_ref, plan: _Plan):
    """The segment starts and ends as ``[Gp]`` vectors (Gp: G rounded up to a power of 2)."""
    g = plan.num_segments
    gp = _next_pow2(g)
    valid = lax.iota(jnp.int32, gp) < g
    starts = pltr.load(seg_start_ref.at[pl.ds(0, gp)], mask=valid, other=SEG_PAD)
    ends = pltr.load(seg_end_ref.at[pl.ds(0, gp)], mask=valid, other=SEG_PAD)
    return starts, ends


def _segment_tile(p, seg_start_ref, seg_end_ref, plan: _Plan):
    """Work item ``p`` -> (live, segment, first row, segment end).

    The items are the ``block_t``-row tiles of each segment in turn: segment ``i`` owns
    ``ceil(len_i / block_t)`` items, so a tile never holds two adapters and every program runs
    one shrink. Items past the last segment's tiles are not live.
    """
    bt = plan.blocks.block_t
    starts, ends = _segment_table(seg_start_ref, seg_end_ref, plan)
    count = (ends - starts + (bt - 1)) // bt  # 0 for padding segments
    last = lax.cumsum(count, axis=0)  # items before the end of each segment
    seg = jnp.sum((last <= p).astype(jnp.int32))
    sel = lax.iota(jnp.int32, starts.shape[0]) == seg
    first = jnp.sum(jnp.where(sel, last - count, 0))
    start = jnp.sum(jnp.where(sel, starts, 0))
    end = jnp.sum(jnp.where(sel, ends, 0))
    return seg < plan.num_segments, seg, start + (p - first) * bt, end


def _store_columns(y_ref, r0, row_mask, col_lo, col_hi, plan: _Plan, block_fn):
    """``y[r0 + i, c] = block_fn(c0)[i, c - c0]`` for c in ``[col_lo, col_hi)``, ``row_mask[i]``."""
    bt, bo = plan.blocks.block_t, plan.blocks.block_o

    def body(j, carry):
        o0 = col_lo + j * bo
        cols = o0 + lax.iota(jnp.int32, bo)
        mask = row_mask[:, None]
        if plan.col_mask or not plan.full_chunks:
            mask = mask & (cols < col_hi)[None, :]
        mask = jnp.broadcast_to(mask, (bt, bo))
        val = block_fn(o0, cols).astype(y_ref.dtype)
        pltr.store(y_ref.at[pl.ds(r0, bt), pl.ds(o0, bo)], val, mask=mask)
        return carry

    if plan.full_chunks:
        n = plan.blocks.o_chunk // bo
    else:
        n = (col_hi - col_lo + bo - 1) // bo
    lax.fori_loop(0, n, body, 0)


def _zero_fill(y_ref, seg_start_ref, seg_end_ref, q, col_lo, col_hi, plan: _Plan):
    """Fixed tile ``q`` of [0, T): zero this chunk of its rows that no segment covers."""
    bt, bo = plan.blocks.block_t, plan.blocks.block_o
    t0 = q * bt
    rows = t0 + lax.iota(jnp.int32, bt)
    starts, ends = _segment_table(seg_start_ref, seg_end_ref, plan)
    inside = (rows[:, None] >= starts[None, :]) & (rows[:, None] < ends[None, :])  # [bt, Gp]
    covered = jnp.max(inside.astype(jnp.int32), axis=1) > 0
    need = (rows < plan.num_tokens) & ~covered

    @pl.when(jnp.max(need.astype(jnp.int32)) > 0)
    def _():
        zero = lambda o0, cols: jnp.zeros((bt, bo), jnp.float32)
        _store_columns(y_ref, t0, need, col_lo, col_hi, plan, zero)


def _shrink(x_ref, a_ref, w, m, rank, r0, in_seg, k_lo, k_units, rb, plan: _Plan):
    """``x[r0:r0+bt, K] @ a[w, m, :rb, K].T`` over ``k_units`` block_k units from ``k_lo``.

    Returns [bt, rb] float32. Rows outside the segment and rank rows past ``rank`` are masked
    out of the loads: they are neither read nor needed.
    """
    bt = plan.blocks.block_t
    bk = plan.k_step(rb)
    steps = k_units * (plan.blocks.block_k // bk)
    cdt = jnp.promote_types(x_ref.dtype, a_ref.dtype)
    k_mask = plan.d_in % plan.blocks.block_k != 0

    def body(kk, acc):
        k0 = pl.multiple_of(k_lo + kk * bk, bk)
        x_mask = in_seg[:, None]
        a_mask = (lax.iota(jnp.int32, rb) < rank)[:, None]
        if k_mask:
            cols = k0 + lax.iota(jnp.int32, bk)
            x_mask = x_mask & (cols < plan.d_in)[None, :]
            a_mask = a_mask & (cols < plan.d_in)[None, :]
        xk = pltr.load(
            x_ref.at[pl.ds(r0, bt), pl.ds(k0, bk)],
            mask=jnp.broadcast_to(x_mask, (bt, bk)),
            other=0,
        )
        ak = pltr.load(
            a_ref.at[w, m, pl.ds(0, rb), pl.ds(k0, bk)],
            mask=jnp.broadcast_to(a_mask, (rb, bk)),
            other=0,
        )
        return acc + jnp.dot(xk.astype(cdt), ak.astype(cdt).T, preferred_element_type=jnp.float32)

    return lax.fori_loop(0, steps, body, jnp.zeros((bt, rb), jnp.float32))


def _expand_store(b_ref, y_ref, h, w, r0, in_seg, col_lo, col_hi, rb, plan: _Plan):
    """``y[segment rows r0.., cols] = h @ b[w, cols, :rb].T`` for the chunk's columns."""
    bo = plan.blocks.block_o
    pad_rank = rb > plan.max_rank

    def block(o0, cols):
        mask = None
        if pad_rank or plan.col_mask or not plan.full_chunks:
            mask = jnp.ones((bo, rb), jnp.bool_)
            if pad_rank:
                mask = mask & (lax.iota(jnp.int32, rb) < plan.max_rank)[None, :]
            if plan.col_mask or not plan.full_chunks:
                mask = mask & (cols < col_hi)[:, None]
        bj = pltr.load(
            b_ref.at[w, pl.ds(o0, bo), pl.ds(0, rb)],
            mask=mask,
            other=None if mask is None else 0,
        )
        return jnp.dot(h, bj.T, preferred_element_type=jnp.float32)

    _store_columns(y_ref, r0, in_seg, col_lo, col_hi, plan, block)


def _switch_rank(rank, plan: _Plan, branch):
    """Run ``branch(rb)()`` for the smallest bucket ``rb >= rank``."""
    buckets = plan.buckets
    if len(buckets) == 1:
        branch(buckets[0])()
        return
    idx = rank * 0
    for b in buckets[:-1]:
        idx = idx + (rank > b).astype(jnp.int32)
    lax.switch(idx, [branch(rb) for rb in buckets])


# ------------------------------------------------------------------------------------------------
# Kernels.


def _fused_kernel(
    seg_slot_ref,  # [G] int32
    seg_start_ref,  # [G] int32
    seg_end_ref,  # [G] int32
    slot_rank_ref,  # [S] int32
    slot_base_ref,  # [1] int32: the buffers' row of slot 0 (see lora_group_gpu)
    scale_ref,  # [N, M] float32
    x_ref,  # [T, d_in]
    a_ref,  # [N, M, R, d_in]
    b_ref,  # [N, O, R]
    *rest,  # (out_alias [T, O],)? then y [T, O]
    plan: _Plan,
):
    """One (output chunk, work item): a segment tile's shrink and expand, or a zero fill."""
    y_ref = rest[-1]
    chunk, p = pl.program_id(0), pl.program_id(1)
    m, col_lo, col_hi = _chunk_columns(chunk, plan)
    bt = plan.blocks.block_t

    @pl.when(p < plan.segment_tiles)
    def _():
        live, seg, r0, end = _segment_tile(p, seg_start_ref, seg_end_ref, plan)

        @pl.when(live)
        def _():
            in_seg = r0 + lax.iota(jnp.int32, bt) < end
            s = seg_slot_ref[seg]
            rank = slot_rank_ref[s]
            w = s + slot_base_ref[0]  # the slot's row in the weight buffers
            scale = scale_ref[w, m]

            def branch(rb):
                def run():
                    h = _shrink(x_ref, a_ref, w, m, rank, r0, in_seg, 0, plan.k_units, rb, plan)
                    h = (h * scale).astype(b_ref.dtype)
                    _expand_store(b_ref, y_ref, h, w, r0, in_seg, col_lo, col_hi, rb, plan)

                return run

            _switch_rank(rank, plan, branch)

    @pl.when(p >= plan.segment_tiles)
    def _():
        _zero_fill(y_ref, seg_start_ref, seg_end_ref, p - plan.segment_tiles, col_lo, col_hi, plan)


def _shrink_kernel(
    seg_slot_ref,  # [G] int32
    seg_start_ref,  # [G] int32
    seg_end_ref,  # [G] int32
    slot_rank_ref,  # [S] int32
    slot_base_ref,  # [1] int32
    x_ref,  # [T, d_in]
    a_ref,  # [N, M, R, d_in]
    h_ref,  # [split_k, T, M, RB] float32 output, RB = the largest rank bucket
    *,
    plan: _Plan,
):
    """One (d_in split, module, segment tile): a partial shrink."""
    bt, nsplit = plan.blocks.block_t, plan.blocks.split_k
    split, m, p = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    live, seg, r0, end = _segment_tile(p, seg_start_ref, seg_end_ref, plan)
    per_split = -(-plan.k_units // nsplit)
    first_unit = split * per_split
    n_units = jnp.minimum(per_split, plan.k_units - first_unit)

    @pl.when(live & (n_units > 0))
    def _():
        in_seg = r0 + lax.iota(jnp.int32, bt) < end
        s = seg_slot_ref[seg]
        rank = slot_rank_ref[s]
        w = s + slot_base_ref[0]
        k_lo = first_unit * plan.blocks.block_k

        def branch(rb):
            def run():
                h = _shrink(x_ref, a_ref, w, m, rank, r0, in_seg, k_lo, n_units, rb, plan)
                mask = jnp.broadcast_to(in_seg[:, None], (bt, rb))
                pltr.store(h_ref.at[split, pl.ds(r0, bt), m, pl.ds(0, rb)], h, mask=mask)

            return run

        _switch_rank(rank, plan, branch)

    # A split with no d_in left writes zeros, so the expand can sum every split.
    @pl.when(live & (n_units <= 0))
    def _():
        in_seg = r0 + lax.iota(jnp.int32, bt) < end
        rb = plan.buckets[-1]
        mask = jnp.broadcast_to(in_seg[:, None], (bt, rb))
        zero = jnp.zeros((bt, rb), jnp.float32)
        pltr.store(h_ref.at[split, pl.ds(r0, bt), m, pl.ds(0, rb)], zero, mask=mask)


def _expand_kernel(
    seg_slot_ref,  # [G] int32
    seg_start_ref,  # [G] int32
    seg_end_ref,  # [G] int32
    slot_rank_ref,  # [S] int32
    slot_base_ref,  # [1] int32
    scale_ref,  # [N, M] float32
    h_ref,  # [split_k, T, M, RB] float32
    b_ref,  # [N, O, R]
    *rest,  # (out_alias [T, O],)? then y [T, O]
    plan: _Plan,
):
    """One (output chunk, work item): sum a segment tile's partials and expand, or zero fill."""
    y_ref = rest[-1]
    bt = plan.blocks.block_t
    chunk, p = pl.program_id(0), pl.program_id(1)
    m, col_lo, col_hi = _chunk_columns(chunk, plan)

    @pl.when(p < plan.segment_tiles)
    def _():
        live, seg, r0, end = _segment_tile(p, seg_start_ref, seg_end_ref, plan)

        @pl.when(live)
        def _():
            in_seg = r0 + lax.iota(jnp.int32, bt) < end
            s = seg_slot_ref[seg]
            rank = slot_rank_ref[s]
            w = s + slot_base_ref[0]  # the slot's row in the weight buffers
            scale = scale_ref[w, m]

            def branch(rb):
                def run():
                    mask = jnp.broadcast_to(in_seg[:, None], (bt, rb))
                    h = jnp.zeros((bt, rb), jnp.float32)
                    for split in range(plan.blocks.split_k):
                        part = h_ref.at[split + p * 0, pl.ds(r0, bt), m, pl.ds(0, rb)]
                        h = h + pltr.load(part, mask=mask, other=0.0)
                    h = (h * scale).astype(b_ref.dtype)
                    _expand_store(b_ref, y_ref, h, w, r0, in_seg, col_lo, col_hi, rb, plan)

                return run

            _switch_rank(rank, plan, branch)

    @pl.when(p >= plan.segment_tiles)
    def _():
        _zero_fill(y_ref, seg_start_ref, seg_end_ref, p - plan.segment_tiles, col_lo, col_hi, plan)


# ------------------------------------------------------------------------------------------------
# Jitted wrapper.


@functools.partial(jax.jit, static_argnames=("out_sizes", "blocks", "interpret"))
def lora_group_gpu(
    x: jax.Array,  # [T, d_in]
    group: LoraGroup,  # a [N, M, R, d_in], b [N, O, R], scale [N, M]; N >= slot_base + S
    batch: LoraBatch,  # token_slot [T], slot_rank [S], segments [G]
    out_sizes: tuple[int, ...],  # M sizes summing to O
    *,
    slot_base: jax.Array | int = 0,  # [] int32: the buffers' row of slot 0
    blocks: GpuBlocks | None = None,
    interpret: bool = False,
    out: jax.Array | None = None,  # [T, O] buffer to write into (donated; every element is set)
) -> jax.Array:  # [T, O], x.dtype
    """LoRA delta of one module group with the Pallas GPU kernels (Triton lowering).

    Slot ``s`` reads row ``slot_base + s`` of the buffers: the model passes the slot buffers of
    every layer stacked (``N = L * S``) and ``slot_base = layer * S``, so that the 32 layers'
    calls are one kernel and the buffers are never sliced (a slice would be a copy).

    ``blocks`` defaults to :func:`jlora.kernels.tuned_blocks.gpu_blocks`. ``out`` lets a caller
    (tests) pass a poisoned buffer that the kernel must overwrite in full.
    """
    seg_slot, seg_start, seg_end = lora_segments(batch)
    base = jnp.reshape(jnp.asarray(slot_base, jnp.int32), (1,))
    num_tokens = x.shape[0]
    num_modules, max_rank = group.a.shape[1:3]
    total_out = sum(out_sizes)
    if blocks is None:
        blocks = gpu_blocks(num_tokens, x.shape[1], out_sizes)
    plan = _make_plan(x.shape, max_rank, out_sizes, seg_slot.shape[0], blocks)
    scale = group.scale.astype(jnp.float32)
    y_shape = jax.ShapeDtypeStruct((num_tokens, total_out), x.dtype)
    params = pltr.CompilerParams(num_warps=plan.blocks.num_warps, num_stages=plan.blocks.num_stages)
    tail = () if out is None else (out,)
    items = plan.segment_tiles + plan.fixed_tiles

    if not plan.blocks.split_k:
        inputs = (seg_slot, seg_start, seg_end, batch.slot_rank, base, scale, x, group.a, group.b)
        return pl.pallas_call(
            functools.partial(_fused_kernel, plan=plan),
            out_shape=y_shape,
            grid=(plan.num_chunks, items),
            input_output_aliases={len(inputs): 0} if out is not None else {},
            compiler_params=params,
            interpret=interpret,
            name="lora_fused",
        )(*inputs, *tail)

    rb_max = plan.buckets[-1]
    h_shape = jax.ShapeDtypeStruct(
        (plan.blocks.split_k, num_tokens, num_modules, rb_max), jnp.float32
    )
    h = pl.pallas_call(
        functools.partial(_shrink_kernel, plan=plan),
        out_shape=h_shape,
        grid=(plan.blocks.split_k, num_modules, plan.segment_tiles),
        compiler_params=params,
        interpret=interpret,
        name="lora_shrink",
    )(seg_slot, seg_start, seg_end, batch.slot_rank, base, x, group.a)
    inputs = (seg_slot, seg_start, seg_end, batch.slot_rank, base, scale, h, group.b)
    return pl.pallas_call(
        functools.partial(_expand_kernel, plan=plan),
        out_shape=y_shape,
        grid=(plan.num_chunks, items),
        input_output_aliases={len(inputs): 0} if out is not None else {},
        compiler_params=params,
        interpret=interpret,
        name="lora_expand",
    )(*inputs, *tail)


# ------------------------------------------------------------------------------------------------
# References of the split decomposition (the fused kernel matches lora_group_ref directly).


def ref_shrink(
    x: jax.Array,  # [T, d_in]
    group: LoraGroup,  # a [S, M, R, d_in]
    batch: LoraBatch,  # token_slot [T]
) -> jax.Array:  # [T, M, R] float32, unscaled; rows of tokens without an adapter are 0
    """What the split shrink computes, summed over its d_in splits."""
    slot = batch.token_slot
    a_t = group.a[jnp.maximum(slot, 0)]  # [T, M, R, d_in]
    h = jnp.einsum("td,tmrd->tmr", x, a_t, preferred_element_type=jnp.float32)
    live = (slot >= 0) & (batch.slot_rank[jnp.maximum(slot, 0)] > 0)
    return jnp.where(live[:, None, None], h, 0.0)


def ref_expand(
    h: jax.Array,  # [T, M, R] float32, unscaled (ref_shrink's output)
    group: LoraGroup,  # b [S, O, R], scale [S, M]
    batch: LoraBatch,  # token_slot [T]
    out_sizes: tuple[int, ...],
    out_dtype: jnp.dtype,
) -> jax.Array:  # [T, O]
    """What the split expand computes from the shrink's (summed) partials."""
    slot = batch.token_slot
    safe = jnp.maximum(slot, 0)
    h = (h * group.scale[safe].astype(jnp.float32)[..., None]).astype(group.b.dtype)
    b_t = group.b[safe]  # [T, O, R]
    outs, off = [], 0
    for m, size in enumerate(out_sizes):
        outs.append(
            jnp.einsum(
                "tr,tor->to", h[:, m], b_t[:, off : off + size], preferred_element_type=jnp.float32
            )
        )
        off += size
    y = jnp.concatenate(outs, axis=-1)
    live = (slot >= 0) & (batch.slot_rank[safe] > 0)
    return jnp.where(live[:, None], y, 0.0).astype(out_dtype)
