"""The real runner: jitted prefill and decode steps over the paged KV cache and the LoRA slots.

Every step is padded to a shape bucket (:class:`~jlora.runner.buckets.ShapeBuckets`) and all
buckets are compiled by :meth:`ModelRunner.warmup`. Sequences are laid out grouped by adapter slot
(no-adapter ones last), which is the layout the LoRA kernels read. The KV cache is donated to each
step, and the LoRA slot buffers to their one-slot update.

Under tensor parallelism (``mesh``, static) each step's body runs once per shard
(:func:`jlora.tensor_parallel.per_shard`) over the shard's slices of the weights, LoRA buffers and
KV cache; the host inputs (tokens, routing, sampling) are replicated and so is the sampled token.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jlora.adapters.peft import LoraAdapter
from jlora.adapters.slots import SlotBuffers, lora_specs
from jlora.distributed import assert_same_everywhere
from jlora.kernels.types import NO_SLOT, LoraBatch, make_lora_batch
from jlora.runner.attention import DecodeAttention, PrefillAttention
from jlora.runner.base import DecodeSeq, PrefillSeq
from jlora.runner.buckets import ShapeBuckets
from jlora.runner.host_inputs import PackSpec, pack, unpack
from jlora.runner.kv_cache import (
    TRASH_PAGE,
    KVCache,
    allocate_kv_cache,
    commit_kv_state,
    kv_state,
)
from jlora.runner.sampling import SamplingInputs, sample
from jlora.tensor_parallel import KV_SHARDING, TP_AXIS, local_config, param_specs, per_shard
from models.config import ModelConfig
from models.llama import LlamaParams, LoraLayers, SegmentAttention, forward, logits

_STATIC = ("cfg", "lora_backend", "mesh")
_KV_SPECS = KVCache(k=KV_SHARDING, v=KV_SHARDING)


def _shard(cfg: ModelConfig, mesh: Mesh | None) -> tuple[ModelConfig, str | None]:
    """The config and the axis name one shard's forward runs with."""
    if mesh is None:
        return cfg, None
    return local_config(cfg, mesh.shape[TP_AXIS]), TP_AXIS


@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnames=("kv",))
def model_step(
    params: LlamaParams,
    lora: LoraLayers,
    kv: KVCache,
    tokens: jax.Array,  # [T] int32 (decode: one token per sequence, T = B)
    positions: jax.Array,  # [T] int32
    attention: PrefillAttention | DecodeAttention,
    lora_batch: LoraBatch,
    sampling: SamplingInputs,  # [R]
    rows: jax.Array
    | None = None,  # [R] int32, the tokens sampled from (prefill); None: all (decode)
    *,
    cfg: ModelConfig,
    lora_backend: str,
    mesh: Mesh | None = None,
) -> tuple[jax.Array, KVCache]:  # next tokens [R], kv
    """One prefill or decode step: the forward over the KV cache, a token sampled for each of
    ``rows`` of the hidden states, and the step's new K/V written into the cache (donated). Under
    tensor parallelism the body runs once per shard; the host inputs are replicated."""
    shard_cfg, tp_axis = _shard(cfg, mesh)

    def body(params, lora, kv, host):
        tokens, positions, attention, lora_batch, sampling, rows = host
        hidden, state = forward(
            params,
            shard_cfg,
            tokens,
            positions,
            attention,
            kv_state(kv),
            lora,
            lora_batch,
            lora_backend,
            tp_axis,
        )
        if rows is not None:
            hidden = hidden[rows]
        next_tokens = sample(logits(params, hidden, tp_axis), sampling)
        return next_tokens, commit_kv_state(state, attention.slot_mapping)

    specs = (param_specs(params), lora_specs(cfg.num_layers), _KV_SPECS, P())
    host = (tokens, positions, attention, lora_batch, sampling, rows)
    return per_shard(body, mesh, specs, (P(), _KV_SPECS))(params, lora, kv, host)


@functools.partial(jax.jit, static_argnames=("spec", *_STATIC), donate_argnames=("kv",))
def packed_step(
    params: LlamaParams,
    lora: LoraLayers,
    kv: KVCache,
    packed: jax.Array,  # [N] int32: model_step's host inputs (see jlora.runner.host_inputs)
    spec: PackSpec,
    cfg: ModelConfig,
    lora_backend: str,
    mesh: Mesh | None = None,
) -> tuple[jax.Array, KVCache]:
    """:func:`model_step` over inputs that came from the host in one transfer (its jit is
    inlined)."""
    return model_step(
        params, lora, kv, *unpack(packed, spec), cfg=cfg, lora_backend=lora_backend, mesh=mesh
    )


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
    mesh: Mesh | None = None,
) -> jax.Array:  # [T, V] float32
    shard_cfg, tp_axis = _shard(cfg, mesh)

    def body(params, lora, tokens, positions, seq_ids, lora_batch):
        attention = SegmentAttention(seq_ids=seq_ids, positions=positions)
        hidden, _ = forward(
            params,
            shard_cfg,
            tokens,
            positions,
            attention,
            None,
            lora,
            lora_batch,
            lora_backend,
            tp_axis,
        )
        return logits(params, hidden, tp_axis)

    specs = (param_specs(params), lora_specs(cfg.num_layers)) + (P(),) * 4
    return per_shard(body, mesh, specs, P())(params, lora, tokens, positions, seq_ids, lora_batch)


def _slot_order(slots: list[int]) -> list[int]:
    """Indices ordered by adapter slot, no-adapter (-1) last: contiguous runs per slot."""
    return sorted(range(len(slots)), key=lambda i: (slots[i] == NO_SLOT, slots[i]))


class ModelRunner:
    """Runs the model on the device. Owns the params, the KV cache and the LoRA slot buffers.

    With a ``mesh`` (tensor parallelism) the params and slot buffers come split over it and the KV
    cache is allocated split on its KV heads; ``num_pages`` is then the pages of every shard.
    """

    def __init__(
        self,
        params: LlamaParams,
        cfg: ModelConfig,
        slots: SlotBuffers,
        buckets: ShapeBuckets,
        num_pages: int,
        page_size: int,
        lora_backend: str,
        mesh: Mesh | None = None,
        attention_backend: str = "xla",
    ):
        self.params, self.cfg, self.slots, self.buckets = params, cfg, slots, buckets
        self.page_size, self.lora_backend, self.mesh = page_size, lora_backend, mesh
        if attention_backend not in ("xla", "pallas"):
            raise ValueError(f"attention_backend={attention_backend!r} is not 'xla' or 'pallas'")
        self.attention_backend = attention_backend
        # On CPU the Pallas kernel runs in its interpreter (tests); on GPU it is compiled.
        self._interpret = jax.default_backend() == "cpu"
        if mesh is None:
            self.kv = allocate_kv_cache(cfg, num_pages, page_size, params.embed.dtype)
        else:  # each device allocates only its KV heads
            allocate = jax.jit(
                allocate_kv_cache,
                static_argnums=(0, 1, 2, 3),
                out_shardings=NamedSharding(mesh, KV_SHARDING),
            )
            self.kv = allocate(cfg, num_pages, page_size, params.embed.dtype)

    # ------------------------------------------------------------------ adapters
    def load_lora(self, slot: int, adapter: LoraAdapter | None) -> None:
        assert_same_everywhere(f"the load of slot {slot}", adapter and adapter.name or "")
        self.slots.put(slot, adapter)

    def _lora_batch(self, token_slot: np.ndarray, on_device: bool = True) -> LoraBatch:
        return make_lora_batch(token_slot, self.slots.slot_rank, on_device=on_device)

    def _packed_call(self, inputs: tuple) -> tuple[tuple, dict]:
        """Arguments of :func:`packed_step` over :func:`model_step`'s numpy host ``inputs``."""
        packed, spec = pack(inputs)
        static = dict(spec=spec, cfg=self.cfg, lora_backend=self.lora_backend, mesh=self.mesh)
        return (self.params, self.slots.layers, self.kv, packed), static

    def _run(self, inputs: tuple) -> jax.Array:
        """Run a step over the numpy ``inputs`` sent in one transfer; keep the new KV cache."""
        args, static = self._packed_call(inputs)
        out, self.kv = packed_step(*args, **static)
        return out

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
        # several processes: each must feed this step the same inputs (see jlora.distributed)
        assert_same_everywhere(
            "a prefill step",
            tokens,
            slot_mapping,
            seq_ids,
            token_slot,
            prefix_pages,
            lambda: repr(rows),
        )
        attention = PrefillAttention(
            slot_mapping=slot_mapping,
            seq_ids=seq_ids,
            positions=positions,
            prefix_pages=prefix_pages,
            prefix_len=np.int32(prefix_len),
            prefix_seq=np.int32(prefix_seq),
        )
        sampling = SamplingInputs.build(rows, b.prefill_rows, self.cfg.vocab_size, False)
        lora_batch = self._lora_batch(token_slot, False)
        inputs = (tokens, positions, attention, lora_batch, sampling, last_index)
        next_tokens = np.asarray(self._run(inputs))
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
        assert_same_everywhere(
            "a decode step", tokens, positions, page_table, token_slot, lambda: repr(rows)
        )
        attention = DecodeAttention(
            slot_mapping=slot_mapping,
            page_table=page_table,
            seq_lens=seq_lens,
            backend=self.attention_backend,
            interpret=self._interpret,
        )
        inputs = (
            tokens,
            positions,
            attention,
            self._lora_batch(token_slot, False),
            SamplingInputs.build(rows, bsz, self.cfg.vocab_size, False),
        )
        next_tokens = np.asarray(self._run(inputs))
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
        assert_same_everywhere("a score step", tokens, seq_ids, token_slot)
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
                mesh=self.mesh,
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
            self._run(self._padding_inputs(shape)).block_until_ready()

    def compiled_text(self, shape: tuple) -> str:
        """The compiled HLO text of one bucket's step (``shape`` from ``buckets.all_shapes()``),
        e.g. to count its collectives."""
        args, static = self._packed_call(self._padding_inputs(shape))
        return packed_step.lower(*args, **static).compile().as_text()

    def _padding_inputs(self, shape: tuple) -> tuple:
        """All-padding host inputs of a bucket's step (they write only the trash page)."""
        if shape[0] == "prefill":
            t, r = shape[1], self.buckets.prefill_rows
            zeros = np.zeros(t, np.int32)
            attention = PrefillAttention(
                slot_mapping=zeros,
                seq_ids=np.full(t, -1, np.int32),
                positions=zeros,
                prefix_pages=np.zeros(self.buckets.prefix_pages, np.int32),
                prefix_len=np.int32(0),
                prefix_seq=np.int32(-2),
            )
            sampling = SamplingInputs.build([], r, self.cfg.vocab_size, False)
            lora_batch = self._lora_batch(np.full(t, NO_SLOT), False)
            return (zeros, zeros, attention, lora_batch, sampling, np.zeros(r, np.int32))
        _, bsz, p = shape
        zeros = np.zeros(bsz, np.int32)
        attention = DecodeAttention(
            slot_mapping=zeros,
            page_table=np.zeros((bsz, p), np.int32),
            seq_lens=zeros,
            backend=self.attention_backend,
            interpret=self._interpret,
        )
        sampling = SamplingInputs.build([], bsz, self.cfg.vocab_size, False)
        lora_batch = self._lora_batch(np.full(bsz, NO_SLOT), False)
        return (zeros, zeros, attention, lora_batch, sampling)

    @staticmethod
    def compiled_count() -> int:
        """Compiled executables of the step functions, summed (tests check it stays flat)."""
        return sum(f._cache_size() for f in (packed_step, model_step, score_step))
