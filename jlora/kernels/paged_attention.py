"""Decode attention over the paged KV cache: a Pallas GPU kernel that reads pages in place.

What is computed (one query token per sequence, grouped-query attention)::

    out[b, hq] = softmax(scale * q[b, hq] . [K_cache(b); k_new[b, kv]]) @ [V_cache(b); v_new[b, kv]]

where ``kv = hq // (Hq / Hkv)``, ``K_cache(b)`` are the first ``seq_lens[b] - 1`` tokens of
sequence ``b``'s pages (``page_table[b]``) in layer ``layer`` of the cache, and ``k_new`` and
``v_new`` are the step's own K/V (the step writes them into the cache only at its end).

**Why a kernel.** The XLA reference (:func:`paged_decode_attention_ref`) gathers every sequence's
pages into a dense ``[B, P * page_size, Hkv, D]`` copy before its einsums: up to the page-table
width, not the sequence's length, and written then read again. At batch 64 and 1024-token tables
that is 8.6 GB of copies per Llama-3.1-8B step, more than the weights. The kernel reads each page
once, where it lies, and only the pages a sequence has.

**Kernel (Triton lowering).** Grid ``(B, Hkv, splits)``. A program takes the ``G = Hq / Hkv``
query heads of one KV head (padded to 16 rows, the smallest ``mma`` tile) and walks its split of
the sequence's pages ``pages_per_block`` at a time: it loads the block's page ids from the page
table, gathers the block's K and V rows straight from the cache (viewed as ``[L * pages *
page_size, Hkv * D]``, a free reshape), and folds them into an online softmax. It stops at the
sequence's own length, so a short sequence in a wide table costs its own pages only. Splits of the
pages (flash-decoding) give the GPU work when ``B * Hkv`` is small; their partial results, and the
step's own token, are merged by a few XLA ops after the kernel. The cache is passed whole and the
layer is a runtime operand, so all layers share one compiled kernel and no layer's slice is copied.

There is no TPU version: on TPU (and CPU) the engine runs the XLA reference; the kernel runs on CPU
in interpret mode, which is how it is tested.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltr

from jlora.kernels import online_softmax

_MIN_ROWS = 16  # Triton's dot needs M >= 16: the query heads of a KV head are padded to it


@dataclass(frozen=True)
class DecodeAttentionBlocks:
    """Static tiling of the decode attention kernel."""

    pages_per_block: int
    """Pages gathered per loop trip (their tokens are the N of the two matmuls)."""
    splits: int
    """Programs per (sequence, KV head), each over a contiguous share of the page table."""
    num_warps: int = 4
    num_stages: int = 2


def _pow2_floor(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def decode_attention_blocks(
    batch: int, num_kv_heads: int, table_pages: int, page_size: int
) -> DecodeAttentionBlocks:
    """Default tiling: ~64-token blocks; split the pages until ~2 programs per SM of an H100
    (132 SMs) are busy, but never into splits of less than one block."""
    pages_per_block = max(1, 64 // page_size)
    blocks_total = max(1, table_pages // pages_per_block)
    wanted = max(1, math.ceil(264 / (batch * num_kv_heads)))
    return DecodeAttentionBlocks(
        pages_per_block=pages_per_block, splits=min(_pow2_floor(wanted), _pow2_floor(blocks_total))
    )


def validate_decode_attention_inputs(
    q: jax.Array,  # [B, Hq, D]
    k_new: jax.Array,  # [B, Hkv, D]
    v_new: jax.Array,  # [B, Hkv, D]
    k_cache: jax.Array,  # [L, N, page_size, Hkv, D]
    v_cache: jax.Array,  # [L, N, page_size, Hkv, D]
    page_table: jax.Array,  # [B, P]
    seq_lens: jax.Array,  # [B]
) -> None:
    """Raise ``ValueError`` naming the bad shape or dtype (static checks: they hold under jit)."""
    if q.ndim != 3:
        raise ValueError(f"q must be [B, Hq, D], got shape {q.shape}")
    b, hq, d = q.shape
    if k_cache.ndim != 5:
        raise ValueError(f"k_cache must be [L, N, page_size, Hkv, D], got shape {k_cache.shape}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache shape {v_cache.shape} != k_cache shape {k_cache.shape}")
    hkv = k_cache.shape[3]
    if k_cache.shape[4] != d:
        raise ValueError(f"k_cache head_dim {k_cache.shape[4]} != q head_dim {d}")
    if hq % hkv:
        raise ValueError(f"Hq={hq} query heads are not a multiple of Hkv={hkv} KV heads")
    for name, x in (("k_new", k_new), ("v_new", v_new)):
        if x.shape != (b, hkv, d):
            raise ValueError(f"{name} shape {x.shape} != (B, Hkv, D) = {(b, hkv, d)}")
    if page_table.ndim != 2 or page_table.shape[0] != b:
        raise ValueError(f"page_table must be [B={b}, P], got shape {page_table.shape}")
    if seq_lens.shape != (b,):
        raise ValueError(f"seq_lens shape {seq_lens.shape} != (B,) = {(b,)}")
    for name, x in (("page_table", page_table), ("seq_lens", seq_lens)):
        if x.dtype != jnp.int32:
            raise ValueError(f"{name} must be int32, got {x.dtype}")


def paged_decode_attention_ref(
    q: jax.Array,  # [B, Hq, D]
    k_new: jax.Array,  # [B, Hkv, D]
    v_new: jax.Array,  # [B, Hkv, D]
    k_cache: jax.Array,  # [L, N, page_size, Hkv, D]
    v_cache: jax.Array,  # [L, N, page_size, Hkv, D]
    layer: int | jax.Array,
    page_table: jax.Array,  # [B, P] int32
    seq_lens: jax.Array,  # [B] int32, tokens including this step's own (0: padding row)
) -> jax.Array:  # [B, Hq, D], q.dtype
    """The XLA reference: gather the pages into a dense context, then softmax attention."""
    kc, vc = k_cache[layer], v_cache[layer]
    b, p = page_table.shape
    _, ps, h, d = kc.shape
    keys = kc[page_table].reshape(b, p * ps, h, d)  # [B, C, Hkv, D], before this step
    values = vc[page_table].reshape(b, p * ps, h, d)
    hq = q.shape[1]
    qg = q.reshape(b, h, hq // h, d)
    scale = d**-0.5
    cached = jnp.einsum("bkgd,bckd->bkgc", qg, keys, preferred_element_type=jnp.float32)
    own = jnp.einsum("bkgd,bkd->bkg", qg, k_new, preferred_element_type=jnp.float32)[..., None]
    scores = jnp.concatenate([cached, own], axis=-1) * scale  # [B, Hkv, G, C + 1]
    # The cache holds positions 0..seq_len-2 of each row; its last token is this step's own.
    valid = jnp.arange(p * ps)[None, :] < (seq_lens - 1)[:, None]  # [B, C]
    valid = jnp.concatenate([valid, jnp.ones((b, 1), bool)], axis=-1)
    scores = jnp.where(valid[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    out = (
        jnp.einsum(
            "bkgc,bckd->bkgd",
            probs[..., :-1].astype(values.dtype),
            values,
            preferred_element_type=jnp.float32,
        )
        + probs[..., -1:] * v_new.astype(jnp.float32)[:, :, None, :]
    )
    return out.reshape(b, hq, d).astype(q.dtype)


def _decode_kernel(
    layer_ref,  # [1] int32
    seq_lens_ref,  # [B] int32
    page_table_ref,  # [B, P] int32
    q_ref,  # [B, Hkv, Gp, D]
    k_ref,  # [L * N * page_size, Hkv * D]
    v_ref,  # [L * N * page_size, Hkv * D]
    acc_ref,  # [B, Hkv, splits, Gp, D] float32
    m_ref,  # [B, Hkv, splits, Gp] float32
    denom_ref,  # [B, Hkv, splits, Gp] float32
    *,
    num_pages: int,
    page_size: int,
    head_dim: int,
    pages_per_split: int,
    blocks: DecodeAttentionBlocks,
    scale: float,
):
    b, h, s = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    rows = q_ref.shape[2]
    block_tokens = blocks.pages_per_block * page_size
    cached = seq_lens_ref[b] - 1  # tokens in the cache; the step's own is merged outside
    first_page = s * pages_per_split
    last_page = jnp.minimum(first_page + pages_per_split, (cached + page_size - 1) // page_size)
    num_blocks = (jnp.maximum(last_page - first_page, 0) + blocks.pages_per_block - 1) // (
        blocks.pages_per_block
    )
    token = jnp.arange(block_tokens, dtype=jnp.int32)
    q = q_ref[b, h, :, :]  # [Gp, D]
    layer_row0 = layer_ref[0] * (num_pages * page_size)
    cols = pl.ds(h * head_dim, head_dim)

    def body(i, carry):
        page0 = first_page + i * blocks.pages_per_block
        pages = page_table_ref[b, page0 + token // page_size]  # [N] page of each token (gather)
        kv_rows = layer_row0 + pages * page_size + token % page_size
        k = k_ref[kv_rows, cols]  # [N, D], read in place
        v = v_ref[kv_rows, cols]
        valid = page0 * page_size + token < cached
        # Rows past the length (stale or trash-page data) get zero weight; zero them too, so that
        # a non-finite value there cannot reach the sum (0 * inf is NaN).
        v = jnp.where(valid[:, None], v, jnp.zeros_like(v))
        return online_softmax.fold_block(carry, q, k, v, valid[None, :], scale)

    init = online_softmax.init(rows, head_dim)
    acc, m, denom = lax.fori_loop(0, num_blocks, body, init)
    acc_ref[b, h, s, :, :] = acc
    m_ref[b, h, s, :] = m
    denom_ref[b, h, s, :] = denom


@functools.partial(jax.jit, static_argnames=("blocks", "interpret"))
def paged_decode_attention_gpu(
    q: jax.Array,  # [B, Hq, D]
    k_new: jax.Array,  # [B, Hkv, D]
    v_new: jax.Array,  # [B, Hkv, D]
    k_cache: jax.Array,  # [L, N, page_size, Hkv, D]
    v_cache: jax.Array,  # [L, N, page_size, Hkv, D]
    layer: int | jax.Array,
    page_table: jax.Array,  # [B, P] int32
    seq_lens: jax.Array,  # [B] int32, tokens including this step's own (0: padding row)
    *,
    blocks: DecodeAttentionBlocks | None = None,
    interpret: bool = False,
) -> jax.Array:  # [B, Hq, D], q.dtype
    """Decode attention of one layer with the Pallas kernel; same contract as the reference."""
    validate_decode_attention_inputs(q, k_new, v_new, k_cache, v_cache, page_table, seq_lens)
    b, hq, d = q.shape
    num_layers, num_pages, page_size, hkv, _ = k_cache.shape
    group = hq // hkv
    rows = max(_MIN_ROWS, 1 << (group - 1).bit_length())
    if blocks is None:
        blocks = decode_attention_blocks(b, hkv, page_table.shape[1], page_size)
    # Pad the table to whole splits of whole blocks; padded entries are never read (past lengths).
    per_split = blocks.pages_per_block * blocks.splits
    table_pages = -(-page_table.shape[1] // per_split) * per_split
    page_table = jnp.pad(page_table, ((0, 0), (0, table_pages - page_table.shape[1])))
    qg = q.reshape(b, hkv, group, d)
    qg = jnp.pad(qg, ((0, 0), (0, 0), (0, rows - group), (0, 0)))
    # Row-major reshapes: free views of the whole cache, so no layer's slice is copied.
    k_flat = k_cache.reshape(num_layers * num_pages * page_size, hkv * d)
    v_flat = v_cache.reshape(num_layers * num_pages * page_size, hkv * d)
    kernel = functools.partial(
        _decode_kernel,
        num_pages=num_pages,
        page_size=page_size,
        head_dim=d,
        pages_per_split=table_pages // blocks.splits,
        blocks=blocks,
        scale=d**-0.5,
    )
    splits = blocks.splits
    acc, m, denom = pl.pallas_call(
        kernel,
        out_shape=(
            jax.ShapeDtypeStruct((b, hkv, splits, rows, d), jnp.float32),
            jax.ShapeDtypeStruct((b, hkv, splits, rows), jnp.float32),
            jax.ShapeDtypeStruct((b, hkv, splits, rows), jnp.float32),
        ),
        grid=(b, hkv, splits),
        compiler_params=pltr.CompilerParams(
            num_warps=blocks.num_warps, num_stages=blocks.num_stages
        ),
        interpret=interpret,
        name="paged_decode_attention",
    )(
        jnp.asarray(layer, jnp.int32).reshape(1),
        seq_lens,
        page_table,
        qg,
        k_flat,
        v_flat,
    )
    acc, m, denom = acc[:, :, :, :group], m[:, :, :, :group], denom[:, :, :, :group]
    # Merge the splits with the step's own token (always present, so the max is finite).
    own = jnp.einsum(
        "bkgd,bkd->bkg", qg[:, :, :group], k_new, preferred_element_type=jnp.float32
    ) * (d**-0.5)
    top = jnp.maximum(m.max(axis=2), own)  # [B, Hkv, G]
    w = jnp.exp(m - top[:, :, None])  # [B, Hkv, S, G]
    w_own = jnp.exp(own - top)
    num = (w[..., None] * acc).sum(axis=2) + w_own[..., None] * v_new.astype(jnp.float32)[
        :, :, None
    ]
    den = (w * denom).sum(axis=2) + w_own
    return (num / den[..., None]).reshape(b, hq, d).astype(q.dtype)
