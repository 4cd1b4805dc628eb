"""Prefill attention of a flat step: a Pallas GPU flash-attention kernel over packed sequences.

What is computed (grouped-query attention, ``kv = hq // (Hq / Hkv)``)::

    out[t, hq] = softmax_j(scale * q[t, hq] . key[j, kv]) @ value[j, kv]

over the keys ``j`` that token ``t`` may see: the step's own tokens of the same sequence at
positions up to ``t``'s (``seq_ids``, ``positions``), and, for the one sequence whose prompt is
being prefilled in chunks (``prefix_seq``), its first ``prefix_len`` earlier tokens, gathered from
its pages (``prefix_k`` / ``prefix_v``). A padding token (``seq_ids < 0``) sees only itself. This is
the mask of :class:`jlora.runner.attention.PrefillAttention`, whose dense XLA version
(:func:`prefill_attention_ref`) is the reference.

**Why a kernel.** The dense version materialises every head's ``[T, Np + T]`` float32 scores and
runs the softmax over them in memory: at ``T = 2048`` and a 1024-token prefix that is 0.8 GB a layer
of Llama-3.1-8B, written and read several times, while a step of four 512-token prompts needs
only the four 512 x 512 causal triangles. The kernel keeps scores in registers (online softmax)
and visits only the key blocks a query block can see.

**Kernel (Triton lowering).** Grid ``(T / block_q, Hq)``. A program loads one query block of one
head and walks, with an online softmax, (1) the prefix blocks when its block holds a token of the
continuing sequence, then (2) the step's key blocks from the first token of the block's earliest
sequence up to its own last token. The bounds of (2) are computed per query block by a few XLA ops
before the kernel, from the contract below, so the kernel's loops are data-dependent but its masks
stay exact: a block never relies on the bounds for correctness, only for skipping.

Usage contract (what the runner lays out): each sequence's tokens are contiguous in the step and in
position order; padding tokens carry ``seq_ids = -1``. ``T``, ``Np`` and the head counts are static.

There is no TPU version: on TPU (and CPU) the engine runs the reference; the kernel runs on CPU in
interpret mode, which is how it is tested.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltr

from jlora.kernels import online_softmax


@dataclass(frozen=True)
class PrefillAttentionBlocks:
    """Static tiling of the prefill attention kernel."""

    block_q: int = 64
    """Query tokens per program (the M of both matmuls). The default tiling was the fastest of
    those tried on an H100 (``experiments/results/prefill.md``)."""
    block_k: int = 64
    """Key tokens per loop trip (the N of the score matmul, the K of the value matmul)."""
    num_warps: int = 4
    num_stages: int = 3


def validate_prefill_attention_inputs(
    q: jax.Array,  # [T, Hq, D]
    k: jax.Array,  # [T, Hkv, D]
    v: jax.Array,  # [T, Hkv, D]
    prefix_k: jax.Array,  # [Np, Hkv, D]
    prefix_v: jax.Array,  # [Np, Hkv, D]
    seq_ids: jax.Array,  # [T]
    positions: jax.Array,  # [T]
) -> None:
    """Raise ``ValueError`` naming the bad shape or dtype (static checks: they hold under jit)."""
    if q.ndim != 3:
        raise ValueError(f"q must be [T, Hq, D], got shape {q.shape}")
    t, hq, d = q.shape
    if k.ndim != 3 or k.shape[0] != t or k.shape[2] != d:
        raise ValueError(f"k shape {k.shape} must be [T={t}, Hkv, D={d}]")
    hkv = k.shape[1]
    if hq % hkv:
        raise ValueError(f"Hq={hq} query heads are not a multiple of Hkv={hkv} KV heads")
    if v.shape != k.shape:
        raise ValueError(f"v shape {v.shape} != k shape {k.shape}")
    if prefix_k.ndim != 3 or prefix_k.shape[1:] != (hkv, d):
        raise ValueError(f"prefix_k shape {prefix_k.shape} must be [Np, Hkv={hkv}, D={d}]")
    if prefix_v.shape != prefix_k.shape:
        raise ValueError(f"prefix_v shape {prefix_v.shape} != prefix_k shape {prefix_k.shape}")
    for name, x in (("seq_ids", seq_ids), ("positions", positions)):
        if x.shape != (t,):
            raise ValueError(f"{name} shape {x.shape} != (T,) = {(t,)}")
        if x.dtype != jnp.int32:
            raise ValueError(f"{name} must be int32, got {x.dtype}")


def prefill_attention_ref(
    q: jax.Array,  # [T, Hq, D]
    k: jax.Array,  # [T, Hkv, D]
    v: jax.Array,  # [T, Hkv, D]
    prefix_k: jax.Array,  # [Np, Hkv, D]
    prefix_v: jax.Array,  # [Np, Hkv, D]
    seq_ids: jax.Array,  # [T] int32, -1 for padding
    positions: jax.Array,  # [T] int32
    prefix_len: jax.Array,  # [] int32, valid rows of prefix_k (0: no continuing sequence)
    prefix_seq: jax.Array,  # [] int32, seq_id of the continuing sequence
) -> jax.Array:  # [T, Hq, D], q.dtype
    """The XLA reference: one dense ``[T, Np + T]`` mask and a float32 softmax over it."""
    num_prefix = prefix_k.shape[0]
    keys = jnp.concatenate([prefix_k, k.astype(prefix_k.dtype)], axis=0)
    values = jnp.concatenate([prefix_v, v.astype(prefix_v.dtype)], axis=0)
    prefix_pos = jnp.arange(num_prefix, dtype=jnp.int32)
    key_seq = jnp.concatenate([jnp.full((num_prefix,), prefix_seq, jnp.int32), seq_ids])
    key_pos = jnp.concatenate([prefix_pos, positions])
    key_ok = jnp.concatenate([prefix_pos < prefix_len, seq_ids >= 0])
    mask = (
        (seq_ids[:, None] == key_seq[None, :])
        & (key_pos[None, :] <= positions[:, None])
        & key_ok[None, :]
    )
    # A padding token sees only itself, so its row stays finite.
    t = q.shape[0]
    mask = mask.at[jnp.arange(t), num_prefix + jnp.arange(t)].set(True)
    return dense_attention(q, keys, values, mask)


def dense_attention(
    q: jax.Array,  # [Tq, Hq, D]
    k: jax.Array,  # [Tk, Hkv, D]
    v: jax.Array,  # [Tk, Hkv, D]
    mask: jax.Array,  # [Tq, Tk] bool, True = may attend
) -> jax.Array:  # [Tq, Hq, D]
    """Grouped-query softmax attention with float32 scores, any mask (also the model's scoring
    attention, :class:`models.llama.SegmentAttention`)."""
    tq, hq, d = q.shape
    hkv = k.shape[1]
    qg = q.reshape(tq, hkv, hq // hkv, d)
    scores = jnp.einsum("qkgd,skd->kgqs", qg, k, preferred_element_type=jnp.float32)
    scores = scores * (d**-0.5)
    scores = jnp.where(mask[None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("kgqs,skd->qkgd", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(tq, hq, d).astype(q.dtype)


def _prefill_kernel(
    bounds_ref,  # [3, Tq] int32: first and last (exclusive) step key block, prefix blocks
    prefix_ref,  # [2] int32: prefix_len, prefix_seq
    seq_ref,  # [T] int32
    pos_ref,  # [T] int32
    q_ref,  # [T, Hq * D]
    k_ref,  # [T, Hkv * D]
    v_ref,  # [T, Hkv * D]
    pk_ref,  # [Np, Hkv * D]
    pv_ref,  # [Np, Hkv * D]
    o_ref,  # [T, Hq * D]
    *,
    head_dim: int,
    group: int,
    blocks: PrefillAttentionBlocks,
    scale: float,
):
    i, h = pl.program_id(0), pl.program_id(1)
    bq, bk = blocks.block_q, blocks.block_k
    rows = pl.ds(i * bq, bq)
    q = q_ref[rows, pl.ds(h * head_dim, head_dim)]  # [bq, D]
    kv_cols = pl.ds((h // group) * head_dim, head_dim)
    q_seq = seq_ref[rows]
    q_pos = pos_ref[rows]
    q_idx = i * bq + jnp.arange(bq, dtype=jnp.int32)
    key_lane = jnp.arange(bk, dtype=jnp.int32)
    prefix_len, prefix_seq = prefix_ref[0], prefix_ref[1]

    def prefix_body(j, carry):
        p_idx = j * bk + key_lane
        valid = p_idx < prefix_len
        k = pk_ref[pl.ds(j * bk, bk), kv_cols]
        # Rows past prefix_len are stale or trash-page data: zero them so 0 * inf cannot occur.
        v = jnp.where(valid[:, None], pv_ref[pl.ds(j * bk, bk), kv_cols], 0)
        mask = (q_seq[:, None] == prefix_seq) & valid[None, :]
        return online_softmax.fold_block(carry, q, k, v, mask, scale)

    def step_body(j, carry):
        keys = pl.ds(j * bk, bk)
        k_seq = seq_ref[keys]
        k_pos = pos_ref[keys]
        k_idx = j * bk + key_lane
        mask = (
            (q_seq[:, None] == k_seq[None, :])
            & (k_pos[None, :] <= q_pos[:, None])
            & (k_seq[None, :] >= 0)
        ) | (q_idx[:, None] == k_idx[None, :])
        k, v = k_ref[keys, kv_cols], v_ref[keys, kv_cols]
        return online_softmax.fold_block(carry, q, k, v, mask, scale)

    init = online_softmax.init(bq, head_dim)
    carry = lax.fori_loop(0, bounds_ref[2, i], prefix_body, init)
    acc, _, denom = lax.fori_loop(bounds_ref[0, i], bounds_ref[1, i], step_body, carry)
    # Every row sees at least its own key, so denom > 0.
    o_ref[rows, pl.ds(h * head_dim, head_dim)] = (acc / denom[:, None]).astype(o_ref.dtype)


def _block_bounds(
    seq_ids: jax.Array,  # [Tp] int32
    prefix_len: jax.Array,
    prefix_seq: jax.Array,
    blocks: PrefillAttentionBlocks,
) -> jax.Array:  # [3, Tp / block_q] int32
    """Per query block: the step key blocks it can see (first, last exclusive) and how many
    prefix blocks it reads (0 unless it holds a token of the continuing sequence)."""
    tp = seq_ids.shape[0]
    bq, bk = blocks.block_q, blocks.block_k
    idx = jnp.arange(tp, dtype=jnp.int32)
    # A token starts a run if it is the first, or its sequence differs from the previous token's;
    # padding tokens each start their own run (they see only themselves).
    prev = jnp.concatenate([jnp.full((1,), -2, jnp.int32), seq_ids[:-1]])
    starts = (seq_ids != prev) | (seq_ids < 0)
    run_start = lax.cummax(jnp.where(starts, idx, 0))
    first_key = run_start.reshape(-1, bq).min(axis=1)
    last_key = idx.reshape(-1, bq).max(axis=1)  # causal: nothing past the block's last token
    prefix_blocks = (prefix_len + bk - 1) // bk
    holds_prefix_seq = (seq_ids.reshape(-1, bq) == prefix_seq).any(axis=1)
    return jnp.stack(
        [
            first_key // bk,
            last_key // bk + 1,
            jnp.where(holds_prefix_seq, prefix_blocks, 0),
        ]
    ).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("blocks", "interpret"))
def prefill_attention_gpu(
    q: jax.Array,  # [T, Hq, D]
    k: jax.Array,  # [T, Hkv, D]
    v: jax.Array,  # [T, Hkv, D]
    prefix_k: jax.Array,  # [Np, Hkv, D]
    prefix_v: jax.Array,  # [Np, Hkv, D]
    seq_ids: jax.Array,  # [T] int32, -1 for padding
    positions: jax.Array,  # [T] int32
    prefix_len: jax.Array,  # [] int32
    prefix_seq: jax.Array,  # [] int32
    *,
    blocks: PrefillAttentionBlocks | None = None,
    interpret: bool = False,
) -> jax.Array:  # [T, Hq, D], q.dtype
    """Prefill attention with the Pallas kernel; same contract as :func:`prefill_attention_ref`."""
    validate_prefill_attention_inputs(q, k, v, prefix_k, prefix_v, seq_ids, positions)
    blocks = blocks or PrefillAttentionBlocks()
    t, hq, d = q.shape
    hkv = k.shape[1]
    bq, bk = blocks.block_q, blocks.block_k
    # Pad the step to whole query blocks (and key blocks: the step's keys are its queries) and the
    # prefix to whole key blocks; padded tokens are padding (-1) and padded prefix rows are masked.
    tp = -(-t // max(bq, bk)) * max(bq, bk)
    pad = tp - t
    seq_p = jnp.pad(seq_ids, (0, pad), constant_values=-1)
    pos_p = jnp.pad(positions, (0, pad))
    q2 = jnp.pad(q.reshape(t, hq * d), ((0, pad), (0, 0)))
    k2 = jnp.pad(k.astype(q.dtype).reshape(t, hkv * d), ((0, pad), (0, 0)))
    v2 = jnp.pad(v.astype(q.dtype).reshape(t, hkv * d), ((0, pad), (0, 0)))
    num_prefix = prefix_k.shape[0]
    np_pad = max(bk, -(-num_prefix // bk) * bk) - num_prefix
    pk2 = jnp.pad(prefix_k.astype(q.dtype).reshape(num_prefix, hkv * d), ((0, np_pad), (0, 0)))
    pv2 = jnp.pad(prefix_v.astype(q.dtype).reshape(num_prefix, hkv * d), ((0, np_pad), (0, 0)))
    prefix_len = jnp.minimum(jnp.asarray(prefix_len, jnp.int32), num_prefix)
    prefix_seq = jnp.asarray(prefix_seq, jnp.int32)
    bounds = _block_bounds(seq_p, prefix_len, prefix_seq, blocks)
    kernel = functools.partial(
        _prefill_kernel, head_dim=d, group=hq // hkv, blocks=blocks, scale=d**-0.5
    )
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((tp, hq * d), q.dtype),
        grid=(tp // bq, hq),
        compiler_params=pltr.CompilerParams(
            num_warps=blocks.num_warps, num_stages=blocks.num_stages
        ),
        interpret=interpret,
        name="prefill_attention",
    )(bounds, jnp.stack([prefix_len, prefix_seq]), seq_p, pos_p, q2, k2, v2, pk2, pv2)
    return out[:t].reshape(t, hq, d)
