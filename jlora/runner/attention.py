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
(:func:`~jlora.runner.kv_cache.commit_kv_state`). This is the XLA reference of paged attention: it
gathers the pages it reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from models.llama import dense_attention

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

    def __call__(self, layer, q, k, v, state):
        cache, ks, vs = state
        kc, vc = cache.k[layer], cache.v[layer]
        _, ps, h, d = kc.shape
        q, prefix_pages = jax.lax.optimization_barrier((q, self.prefix_pages))  # see _gather_after
        num_prefix = self.prefix_pages.shape[0] * ps
        pk = kc[prefix_pages].reshape(num_prefix, h, d)
        pv = vc[prefix_pages].reshape(num_prefix, h, d)
        keys = jnp.concatenate([pk, k.astype(pk.dtype)], axis=0)
        values = jnp.concatenate([pv, v.astype(pv.dtype)], axis=0)
        prefix_pos = jnp.arange(num_prefix, dtype=jnp.int32)
        key_seq = jnp.concatenate([jnp.full((num_prefix,), self.prefix_seq), self.seq_ids])
        key_pos = jnp.concatenate([prefix_pos, self.positions])
        key_ok = jnp.concatenate([prefix_pos < self.prefix_len, self.seq_ids >= 0])
        mask = (
            (self.seq_ids[:, None] == key_seq[None, :])
            & (key_pos[None, :] <= self.positions[:, None])
            & key_ok[None, :]
        )
        # A padding token sees only itself, so its row stays finite.
        t = q.shape[0]
        mask = mask.at[jnp.arange(t), num_prefix + jnp.arange(t)].set(True)
        return dense_attention(q, keys, values, mask), (cache, ks + (k,), vs + (v,))


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class DecodeAttention:
    slot_mapping: jax.Array  # [B] int32
    page_table: jax.Array  # [B, P] int32 (trash page beyond a sequence's pages)
    seq_lens: jax.Array  # [B] int32, tokens in the cache after this step's write (0: padding row)

    def __call__(self, layer, q, k, v, state):
        cache, ks, vs = state
        kc, vc = cache.k[layer], cache.v[layer]
        b, p = self.page_table.shape
        _, ps, h, d = kc.shape
        q, page_table = jax.lax.optimization_barrier((q, self.page_table))  # see _gather_after
        keys = kc[page_table].reshape(b, p * ps, h, d)  # [B, C, Hkv, D], before this step
        values = vc[page_table].reshape(b, p * ps, h, d)
        hq = q.shape[1]
        qg = q.reshape(b, h, hq // h, d)
        scale = d**-0.5
        cached = jnp.einsum("bkgd,bckd->bkgc", qg, keys, preferred_element_type=jnp.float32)
        own = jnp.einsum("bkgd,bkd->bkg", qg, k, preferred_element_type=jnp.float32)[..., None]
        scores = jnp.concatenate([cached, own], axis=-1) * scale  # [B, Hkv, G, C + 1]
        # The cache holds positions 0..seq_len-2 of each row; its last token is this step's own.
        valid = jnp.arange(p * ps)[None, :] < (self.seq_lens - 1)[:, None]  # [B, C]
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
            + probs[..., -1:] * v.astype(jnp.float32)[:, :, None, :]
        )
        return out.reshape(b, hq, d).astype(q.dtype), (cache, ks + (k,), vs + (v,))
