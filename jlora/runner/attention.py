"""Attention over the paged KV cache, the two step kinds the runner compiles.

**Prefill** runs a flat run of ``T`` tokens from several sequences (``seq_ids``). Each token attends
causally to the tokens of its own sequence in this step, and, for at most one sequence per step
(the one whose long prompt is being prefilled in chunks), to that sequence's earlier chunks, read
back from its pages (``prefix_pages``, a fixed ``P`` pages, masked beyond ``prefix_len``). Every
other sequence starts at position 0 in its step, so no other gather is needed.

**Decode** runs one token for each of ``B`` sequences; each attends to its own pages
(``page_table [B, P]``) up to its length.

Both read the cache as it was before the step and take the step's own K/V directly; the step
writes all layers' new K/V into the cache once, at its end
(:func:`~jlora.runner.kv_cache.commit_kv_state`). Prefill gathers the prefix pages it reads (one
sequence at most), then runs one dense masked softmax (``backend="xla"``, the reference) or the
flash-attention kernel of :mod:`jlora.kernels.prefill_attention` (``"pallas"``). Decode either
gathers (``backend="xla"``, the reference) or runs the Pallas kernel that reads pages in place
(``"pallas"``, :mod:`jlora.kernels.paged_attention`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax

from jlora.kernels.paged_attention import paged_decode_attention_gpu, paged_decode_attention_ref
from jlora.kernels.prefill_attention import prefill_attention_gpu, prefill_attention_ref

# _gather_after: every layer reads the cache as it was before the step, so nothing stops XLA from
# hoisting all layers' page gathers to the start of the step and holding them at once. The H100
# ran out of memory on a 12 GiB buffer of the decode step at batch 128 and 1024-token contexts,
# which is about that; the cause is inferred, not yet confirmed on the GPU. Passing the page
# indices through an optimization barrier with the layer's queries makes each gather wait for it.


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class PrefillAttention:
    slot_mapping: jax.Array  # [T] int32
    seq_ids: jax.Array  # [T] int32, -1 for padding
    positions: jax.Array  # [T] int32
    prefix_pages: jax.Array  # [P] int32, pages of the continuing sequence's earlier chunks
    prefix_len: jax.Array  # [] int32, tokens in those pages (0: no continuing sequence)
    prefix_seq: jax.Array  # [] int32, seq_id of the continuing sequence (-2: none)
    backend: str = field(default="xla", metadata=dict(static=True))
    """``"xla"``: one dense masked softmax (reference); ``"pallas"``: the flash-attention kernel
    that visits only the key blocks each query block can see."""
    interpret: bool = field(default=False, metadata=dict(static=True))
    """Run the Pallas kernel in interpret mode (CPU)."""

    def __call__(self, layer, q, k, v, state):
        cache, ks, vs = state
        kc, vc = cache.k[layer], cache.v[layer]
        _, ps, h, d = kc.shape
        q, prefix_pages = jax.lax.optimization_barrier((q, self.prefix_pages))  # see _gather_after
        num_prefix = self.prefix_pages.shape[0] * ps
        pk = kc[prefix_pages].reshape(num_prefix, h, d)
        pv = vc[prefix_pages].reshape(num_prefix, h, d)
        args = (q, k, v, pk, pv, self.seq_ids, self.positions, self.prefix_len, self.prefix_seq)
        if self.backend == "pallas":
            out = prefill_attention_gpu(*args, interpret=self.interpret)
        else:
            out = prefill_attention_ref(*args)
        return out, (cache, ks + (k,), vs + (v,))


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class DecodeAttention:
    slot_mapping: jax.Array  # [B] int32
    page_table: jax.Array  # [B, P] int32 (trash page beyond a sequence's pages)
    seq_lens: jax.Array  # [B] int32, tokens in the cache after this step's write (0: padding row)
    backend: str = field(default="xla", metadata=dict(static=True))
    """``"xla"``: gather the pages (reference); ``"pallas"``: the kernel that reads in place."""
    interpret: bool = field(default=False, metadata=dict(static=True))
    """Run the Pallas kernel in interpret mode (CPU)."""

    def __call__(self, layer, q, k, v, state):
        cache, ks, vs = state
        q, page_table = jax.lax.optimization_barrier((q, self.page_table))  # see _gather_after
        args = (q, k, v, cache.k, cache.v, layer, page_table, self.seq_lens)
        if self.backend == "pallas":
            out = paged_decode_attention_gpu(*args, interpret=self.interpret)
        else:
            out = paged_decode_attention_ref(*args)
        return out, (cache, ks + (k,), vs + (v,))
