"""The real runner: jitted prefill and decode steps over the paged KV cache and the LoRA slots.

Every step is padded to a shape bucket (:class:`~jlora.runner.buckets.ShapeBuckets`) and all
buckets are compiled by :meth:`ModelRunner.warmup`. Sequences are laid out grouped by adapter slot
(no-adapter ones last), which is the layout the LoRA kernels read. The KV cache is donated to each
step, and the LoRA slot buffers to their one-slot update.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jlora.adapters.peft import LoraAdapter
from jlora.adapters.slots import SlotBuffers
from jlora.kernels.types import NO_SLOT, LoraBatch, make_lora_batch
from jlora.runner.attention import DecodeAttention, PrefillAttention
from jlora.runner.base import DecodeSeq, PrefillSeq
from jlora.runner.buckets import ShapeBuckets
from jlora.runner.kv_cache import (
    TRASH_PAGE,
    KVCache,
    allocate_kv_cache,
    commit_kv_state,
    kv_state,
)
from jlora.runner.sampling import SamplingInputs, sample
from models.config import ModelConfig
from models.llama import LlamaParams, LoraLayers, SegmentAttention, forward, logits

_STATIC = ("cfg", "lora_backend")


@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnames=("kv",))
def prefill_step(
    params: LlamaParams,
    lora: LoraLayers,
    kv: KVCache,
    tokens: jax.Array,  # [T] int32
    attention: PrefillAttention,
    lora_batch: LoraBatch,
    last_index: jax.Array,  # [R] int32, each sampled sequence's last token
    sampling: SamplingInputs,  # [R]
    cfg: ModelConfig,
    lora_backend: str,
) -> tuple[jax.Array, KVCache]:  # next tokens [R], kv
    hidden, state = forward(
        params,
        cfg,
        tokens,
        attention.positions,
        attention,
        kv_state(kv),
        lora,
        lora_batch,
        lora_backend,
    )
    return sample(logits(params, hidden[last_index]), sampling), commit_kv_state(
        state, attention.slot_mapping
    )


@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnames=("kv",))
def decode_step(
    params: LlamaParams,
    lora: LoraLayers,
    kv: KVCache,
    tokens: jax.Array,  # [B] int32
    positions: jax.Array,  # [B] int32
    attention: DecodeAttention,
    lora_batch: LoraBatch,
    sampling: SamplingInputs,  # [B]
    cfg: ModelConfig,
    lora_backend: str,
) -> tuple[jax.Array, KVCache]:  # next tokens [B], kv
    hidden, state = forward(
        params, cfg, tokens, positions, attention, kv_state(kv), lora, lora_batch, lora_backend
    )
    return sample(logits(params, hidden), sampling), commit_kv_state(state, attention.slot_mapping)


@functools.partial(jax.jit, static_argnames=_STATIC)
def score_step(
    params: LlamaParams,
    lora: LoraLayers,
    tokens: jax.Array,  # [T] int32
    positions: jax.Array,  # [T] int32
    seq_ids: jax.Array,  # [T] int32, -1 for padding
    lora_batch: LoraBatch,
    cfg: ModelConfig,
    lora_backend: str,
) -> jax.Array:  # [T, V] float32
    attention = SegmentAttention(seq_ids=seq_ids, positions=positions)
    hidden, _ = forward(
        params, cfg, tokens, positions, attention, None, lora, lora_batch, lora_backend
    )
    return logits(params, hidden)


def _slot_order(slots: list[int]) -> list[int]:
    """Indices ordered by adapter slot, no-adapter (-1) last: contiguous runs per slot."""
    return sorted(range(len(slots)), key=lambda i: (slots[i] == NO_SLOT, slots[i]))


class ModelRunner:
    """Runs the model on the device. Owns the params, the KV cache and the LoRA slot buffers."""

    def __init__(
        self,
        params: LlamaParams,
        cfg: ModelConfig,
        slots: SlotBuffers,
        buckets: ShapeBuckets,
        num_pages: int,
        page_size: int,
        lora_backend: str,
    ):
        self.params, self.cfg, self.slots, self.buckets = params, cfg, slots, buckets
        self.page_size, self.lora_backend = page_size, lora_backend
        self.kv = allocate_kv_cache(cfg, num_pages, page_size, params.embed.dtype)

    # ------------------------------------------------------------------ adapters
    def load_lora(self, slot: int, adapter: LoraAdapter | None) -> None:
        self.slots.put(slot, adapter)

    def _lora_batch(self, token_slot: np.ndarray) -> LoraBatch:
        return make_lora_batch(token_slot, self.slots.slot_rank)

    # ------------------------------------------------------------------ steps
    def prefill(self, seqs: list[PrefillSeq]) -> list[int | None]:
        b = self.buckets
        total = sum(len(s.tokens) for s in seqs)
        t = b.prefill_bucket(total)
        if len(seqs) > b.prefill_rows:
            raise ValueError(f"{len(seqs)} sequences exceed prefill_rows={b.prefill_rows}")
        continuing = [i for i, s in enumerate(seqs) if s.start > 0]
        if len(continuing) > 1:
            raise ValueError("a prefill step may continue at most one chunked sequence")
        tokens = np.zeros(t, np.int32)
        positions = np.zeros(t, np.int32)
        seq_ids = np.full(t, -1, np.int32)
        slot_mapping = np.full(t, TRASH_PAGE * self.page_size, np.int32)
        token_slot = np.full(t, NO_SLOT, np.int32)
        last_index = np.zeros(b.prefill_rows, np.int32)
        rows: list[tuple] = []
        row_of: dict[int, int] = {}
        off = 0
        for i in _slot_order([s.lora_slot for s in seqs]):
            s = seqs[i]
            n = len(s.tokens)
            pos = np.arange(s.start, s.start + n)
            pages = np.asarray(s.pages, np.int32)
            tokens[off : off + n] = s.tokens
            positions[off : off + n] = pos
            seq_ids[off : off + n] = i
            slot_mapping[off : off + n] = pages[pos // self.page_size] * self.page_size + (
                pos % self.page_size
            )
            token_slot[off : off + n] = s.lora_slot
            if s.sample:
                row_of[i] = len(rows)
                last_index[len(rows)] = off + n - 1
                rows.append((s.params, s.seed, s.out_index))
            off += n
        prefix_pages = np.full(b.prefix_pages, TRASH_PAGE, np.int32)
        prefix_len, prefix_seq = 0, -2
        if continuing:
            s = seqs[continuing[0]]
            used = -(-s.start // self.page_size)
            prefix_pages[:used] = s.pages[:used]
            prefix_len, prefix_seq = s.start, continuing[0]
        attention = PrefillAttention(
            slot_mapping=jnp.asarray(slot_mapping),
            seq_ids=jnp.asarray(seq_ids),
            positions=jnp.asarray(positions),
            prefix_pages=jnp.asarray(prefix_pages),
            prefix_len=jnp.int32(prefix_len),
            prefix_seq=jnp.int32(prefix_seq),
        )
        sampling = SamplingInputs.build(rows, b.prefill_rows, self.cfg.vocab_size)
        next_tokens, self.kv = prefill_step(
            self.params,
            self.slots.layers,
            self.kv,
            jnp.asarray(tokens),
            attention,
            self._lora_batch(token_slot),
            jnp.asarray(last_index),
            sampling,
            cfg=self.cfg,
            lora_backend=self.lora_backend,
        )
        next_tokens = np.asarray(next_tokens)
        return [int(next_tokens[row_of[i]]) if i in row_of else None for i in range(len(seqs))]

    def decode(self, seqs: list[DecodeSeq]) -> list[int]:
        most_pages = max(len(s.pages) for s in seqs)
        bsz, p = self.buckets.decode_bucket(len(seqs), most_pages)
        tokens = np.zeros(bsz, np.int32)
        positions = np.zeros(bsz, np.int32)
        slot_mapping = np.full(bsz, TRASH_PAGE * self.page_size, np.int32)
        page_table = np.full((bsz, p), TRASH_PAGE, np.int32)
        seq_lens = np.zeros(bsz, np.int32)
        token_slot = np.full(bsz, NO_SLOT, np.int32)
        order = _slot_order([s.lora_slot for s in seqs])
        rows = []
        for row, i in enumerate(order):
            s = seqs[i]
            tokens[row], positions[row] = s.token, s.position
            page_table[row, : len(s.pages)] = s.pages
            slot_mapping[row] = s.pages[s.position // self.page_size] * self.page_size + (
                s.position % self.page_size
            )
            seq_lens[row] = s.position + 1
            token_slot[row] = s.lora_slot
            rows.append((s.params, s.seed, s.out_index))
        attention = DecodeAttention(
            slot_mapping=jnp.asarray(slot_mapping),
            page_table=jnp.asarray(page_table),
            seq_lens=jnp.asarray(seq_lens),
        )
        next_tokens, self.kv = decode_step(
            self.params,
            self.slots.layers,
            self.kv,
            jnp.asarray(tokens),
            jnp.asarray(positions),
            attention,
            self._lora_batch(token_slot),
            SamplingInputs.build(rows, bsz, self.cfg.vocab_size),
            cfg=self.cfg,
            lora_backend=self.lora_backend,
        )
        next_tokens = np.asarray(next_tokens)
        out = [0] * len(seqs)
        for row, i in enumerate(order):
            out[i] = int(next_tokens[row])
        return out

    def score(self, seqs: list[tuple[np.ndarray, int]]) -> list[np.ndarray]:
        """All-position logits of whole prompts ``(tokens, lora_slot)``, with no KV cache."""
        total = sum(len(x) for x, _ in seqs)
        t = self.buckets.prefill_bucket(total)
        tokens = np.zeros(t, np.int32)
        positions = np.zeros(t, np.int32)
        seq_ids = np.full(t, -1, np.int32)
        token_slot = np.full(t, NO_SLOT, np.int32)
        spans, off = {}, 0
        for i in _slot_order([slot for _, slot in seqs]):
            x, slot = seqs[i]
            n = len(x)
            tokens[off : off + n], positions[off : off + n] = x, np.arange(n)
            seq_ids[off : off + n], token_slot[off : off + n] = i, slot
            spans[i] = (off, off + n)
            off += n
        out = np.asarray(
            score_step(
                self.params,
                self.slots.layers,
                jnp.asarray(tokens),
                jnp.asarray(positions),
                jnp.asarray(seq_ids),
                self._lora_batch(token_slot),
                cfg=self.cfg,
                lora_backend=self.lora_backend,
            )
        )
        return [out[spans[i][0] : spans[i][1]] for i in range(len(seqs))]

    # ------------------------------------------------------------------ compilation
    def warmup(self) -> None:
        """Compile every prefill and decode bucket with an all-padding step (writes only trash),
        and the one-slot adapter update (by clearing a slot that is still empty)."""
        empty = [s for s, name in enumerate(self.slots.occupant) if name is None]
        if empty:  # a slot already written means the update is compiled
            self.slots.put(empty[0], None)
        for shape in self.buckets.all_shapes():
            if shape[0] == "prefill":
                t, r = shape[1], self.buckets.prefill_rows
                zeros = jnp.zeros(t, jnp.int32)
                attention = PrefillAttention(
                    slot_mapping=zeros,
                    seq_ids=jnp.full(t, -1, jnp.int32),
                    positions=zeros,
                    prefix_pages=jnp.zeros(self.buckets.prefix_pages, jnp.int32),
                    prefix_len=jnp.int32(0),
                    prefix_seq=jnp.int32(-2),
                )
                sampling = SamplingInputs.build([], r, self.cfg.vocab_size)
                out, self.kv = prefill_step(
                    self.params,
                    self.slots.layers,
                    self.kv,
                    zeros,
                    attention,
                    self._lora_batch(np.full(t, NO_SLOT)),
                    jnp.zeros(r, jnp.int32),
                    sampling,
                    cfg=self.cfg,
                    lora_backend=self.lora_backend,
                )
            else:
                _, bsz, p = shape
                zeros = jnp.zeros(bsz, jnp.int32)
                attention = DecodeAttention(
                    slot_mapping=zeros, page_table=jnp.zeros((bsz, p), jnp.int32), seq_lens=zeros
                )
                out, self.kv = decode_step(
                    self.params,
                    self.slots.layers,
                    self.kv,
                    zeros,
                    zeros,
                    attention,
                    self._lora_batch(np.full(bsz, NO_SLOT)),
                    SamplingInputs.build([], bsz, self.cfg.vocab_size),
                    cfg=self.cfg,
                    lora_backend=self.lora_backend,
                )
            out.block_until_ready()

    @staticmethod
    def compiled_count() -> int:
        """Compiled executables of the step functions, summed (tests check it stays flat)."""
        return sum(f._cache_size() for f in (prefill_step, decode_step, score_step))
