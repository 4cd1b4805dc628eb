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
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from jlora.adapters.peft import LoraAdapter
from jlora.adapters.slots import SlotAdapter, SlotBuffers, lora_specs
from jlora.distributed import assert_same_everywhere
from jlora.kernels.types import NO_SLOT, LoraBatch, make_lora_batch
from jlora.runner.attention import DecodeAttention, PrefillAttention
from jlora.runner.base import FED_BACK, DecodeSeq, LaunchedDecode, PrefillSeq
from jlora.runner.buckets import ShapeBuckets
from jlora.runner.host_inputs import PackSpec, pack, stage, unpack
from jlora.runner.kv_cache import (
    TRASH_PAGE,
    KVCache,
    allocate_kv_cache,
    commit_kv_state,
    kv_state,
)
from jlora.runner.sampling import SamplingInputs, greedy, sample
from jlora.sampling_params import SamplingParams
from jlora.tensor_parallel import KV_SHARDING, TP_AXIS, local_config, param_specs, per_shard
from models.config import ModelConfig
from models.llama import LlamaParams, LoraSlots, SegmentAttention, forward, logits

_STATIC = ("cfg", "lora_backend", "mesh")
_KV_SPECS = KVCache(k=KV_SHARDING, v=KV_SHARDING)


def _shard(cfg: ModelConfig, mesh: Mesh | None) -> tuple[ModelConfig, str | None]:
    """The config and the axis name one shard's forward runs with."""
    if mesh is None:
        return cfg, None
    return local_config(cfg, mesh.shape[TP_AXIS]), TP_AXIS


def _lora_specs(lora: LoraSlots | None):
    """Shardings of the slot buffers (nothing to shard when LoRA is off)."""
    return P() if lora is None else lora_specs()


@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnames=("kv",))
def model_step(
    params: LlamaParams,
    lora: LoraSlots | None,  # None: LoRA off, no LoRA ops
    kv: KVCache,
    tokens: jax.Array,  # [T] int32 (decode: one token per sequence, T = B)
    positions: jax.Array,  # [T] int32
    attention: PrefillAttention | DecodeAttention,
    lora_batch: LoraBatch | None,
    rows: jax.Array
    | None = None,  # [R] int32, the tokens sampled from (prefill); None: all (decode)
    fed_back: jax.Array | None = None,  # [Bmax] int32, the in-flight step's tokens (decode)
    *,
    cfg: ModelConfig,
    lora_backend: str,
    mesh: Mesh | None = None,
) -> tuple[jax.Array, jax.Array, KVCache]:  # greedy tokens [R], logits [R, V] f32, kv
    """One prefill or decode step: the forward over the KV cache, the logits and greedy token of
    each of ``rows`` of the hidden states, and the step's new K/V written into the cache
    (donated). Rows that sample are drawn from the logits by :func:`sample_step`. Under tensor
    parallelism the body runs once per shard; the host inputs are replicated.

    ``fed_back`` (overlap scheduling): a token ``-1 - i`` is the in-flight step's ``fed_back[i]``,
    sampled on the device and never seen by the host."""
    shard_cfg, tp_axis = _shard(cfg, mesh)
    if fed_back is not None:
        tokens = jnp.where(tokens < 0, fed_back[jnp.maximum(-1 - tokens, 0)], tokens)

    def body(params, lora, kv, host):
        tokens, positions, attention, lora_batch, rows = host
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
        row_logits = logits(params, hidden, tp_axis)
        return greedy(row_logits), row_logits, commit_kv_state(state, attention.slot_mapping)

    specs = (param_specs(params), _lora_specs(lora), _KV_SPECS, P())
    host = (tokens, positions, attention, lora_batch, rows)
    return per_shard(body, mesh, specs, (P(), P(), _KV_SPECS))(params, lora, kv, host)


def _packed_step(
    params: LlamaParams,
    lora: LoraSlots | None,
    kv: KVCache,
    packed: jax.Array,  # [N] int32: model_step's host inputs (jlora.runner.host_inputs), or
    # [S] int32: the staging buffer, holding them at 0 and the fed-back tokens after them
    fed_back: jax.Array | None,  # [Bmax] int32 (decode, unstaged), None (prefill, or staged)
    spec: PackSpec,
    staged_fed_back: int,  # staged decode: how many fed-back tokens follow the inputs; else 0
    cfg: ModelConfig,
    lora_backend: str,
    mesh: Mesh | None = None,
) -> tuple[jax.Array, jax.Array, KVCache]:
    """:func:`model_step` over inputs that came from the host in one transfer, read from that
    buffer or from the runner's staging buffer (model_step's jit is inlined). Jitted, per set of
    XLA options, by :func:`step_functions`."""
    host = unpack(packed, spec)
    if len(host) == 4:  # decode: no sampled-row selection
        host = (*host, None)
        if staged_fed_back:
            fed_back = packed[spec.size : spec.size + staged_fed_back]
    return model_step(
        params, lora, kv, *host, fed_back, cfg=cfg, lora_backend=lora_backend, mesh=mesh
    )


@functools.partial(jax.jit, static_argnames=("spec",))
def sample_step(
    logits: jax.Array,  # [R, V] float32
    packed: jax.Array,  # [N] int32: the rows' SamplingInputs (jlora.runner.host_inputs)
    spec: PackSpec,
) -> jax.Array:  # [R] int32
    """The tokens of a step with sampling rows, from its logits (see :mod:`~.sampling`)."""
    (sampling,) = unpack(packed, spec)
    return sample(logits, sampling)


@functools.partial(jax.jit, static_argnames=("width",))
def _widen(tokens: jax.Array, width: int) -> jax.Array:  # [B] -> [width]
    """A decode step's sampled tokens padded to the widest decode bucket, so that the next step
    reads them (``fed_back``) with one shape whatever the two steps' buckets."""
    return jnp.zeros(width, tokens.dtype).at[: tokens.shape[0]].set(tokens)


def _score_step(
    params: LlamaParams,
    lora: LoraSlots | None,
    tokens: jax.Array,  # [T] int32
    positions: jax.Array,  # [T] int32
    seq_ids: jax.Array,  # [T] int32, -1 for padding
    lora_batch: LoraBatch | None,
    cfg: ModelConfig,
    lora_backend: str,
    mesh: Mesh | None = None,
) -> jax.Array:  # [T, V] float32
    """All-position logits of whole sequences, no KV cache (``Engine.score``). Jitted, per set
    of XLA options, by :func:`step_functions`."""
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

    specs = (param_specs(params), _lora_specs(lora)) + (P(),) * 4
    return per_shard(body, mesh, specs, P())(params, lora, tokens, positions, seq_ids, lora_batch)


def graph_compiler_options(graph_scheduling: str) -> dict[str, str]:
    """XLA options of the step executables for ``EngineConfig.graph_scheduling``: on GPU, the
    command-buffer (CUDA graph) scheduling mode; nothing elsewhere."""
    if jax.default_backend() != "gpu":
        return {}
    return {"xla_gpu_command_buffer_scheduling_mode": graph_scheduling.upper()}


# The jitted step functions per set of XLA options, made once per process, so that runners with
# the same options (tests build many) share compiled executables.
_STEP_FUNCTIONS: dict[tuple[tuple[str, str], ...], tuple] = {}


def step_functions(compiler_options: dict[str, str]) -> tuple:
    """``(packed_step, score_step)`` jitted with ``compiler_options``: :func:`_packed_step` (the
    prefill and decode step over one packed host transfer, KV cache donated) and
    :func:`_score_step`."""
    key = tuple(sorted(compiler_options.items()))
    if key not in _STEP_FUNCTIONS:
        options = dict(key) or None
        _STEP_FUNCTIONS[key] = (
            jax.jit(
                _packed_step,
                static_argnames=("spec", "staged_fed_back", *_STATIC),
                donate_argnames=("kv",),
                compiler_options=options,
            ),
            jax.jit(_score_step, static_argnames=_STATIC, compiler_options=options),
        )
    return _STEP_FUNCTIONS[key]


class _Launched:
    """A dispatched decode step (:class:`~jlora.runner.base.LaunchedDecode`)."""

    def __init__(self, out: jax.Array, widened: jax.Array, row_of: dict[int, int], seqs):
        self.out, self.widened, self.row_of, self._seqs = out, widened, row_of, seqs

    def tokens(self) -> list[int]:
        sampled = np.asarray(self.out)  # waits for the step
        return [int(sampled[self.row_of[s.rid]]) for s in self._seqs]


def _slot_order(slots: list[int]) -> list[int]:
    """Indices ordered by adapter slot, no-adapter (-1) last: contiguous runs per slot."""
    return sorted(range(len(slots)), key=lambda i: (slots[i] == NO_SLOT, slots[i]))


class ModelRunner:
    """Runs the model on the device. Owns the params, the KV cache and the LoRA slot buffers
    (``slots``; None: LoRA off, the steps carry no LoRA ops).

    With a ``mesh`` (tensor parallelism) the params and slot buffers come split over it and the KV
    cache is allocated split on its KV heads; ``num_pages`` is then the pages of every shard.
    ``graph_scheduling`` (``EngineConfig.graph_scheduling``) picks how XLA orders each step's
    kernels in its CUDA graph on GPU (:func:`graph_compiler_options`). ``stage_host_inputs``
    (``EngineConfig.stage_host_inputs``): the steps read their host inputs from one persistent
    staging buffer (:mod:`~jlora.runner.host_inputs`).
    """

    def __init__(
        self,
        params: LlamaParams,
        cfg: ModelConfig,
        slots: SlotBuffers | None,
        buckets: ShapeBuckets,
        num_pages: int,
        page_size: int,
        lora_backend: str,
        mesh: Mesh | None = None,
        attention_backend: str = "xla",
        graph_scheduling: str = "concurrent",
        stage_host_inputs: bool = True,
    ):
        self.params, self.cfg, self.slots, self.buckets = params, cfg, slots, buckets
        self._packed_step, self._score_step = step_functions(
            graph_compiler_options(graph_scheduling)
        )
        self.page_size, self.lora_backend, self.mesh = page_size, lora_backend, mesh
        self.num_pages = num_pages  # of the KV cache it owns (an engine taking it over reuses it)
        if attention_backend not in ("xla", "pallas"):
            raise ValueError(f"attention_backend={attention_backend!r} is not 'xla' or 'pallas'")
        self.attention_backend = attention_backend
        # The state the steps carry from one to the next (KV cache, staging buffer, fed-back
        # tokens) is placed on its device ("committed") from the start: the slot loads commit
        # the LoRA buffers, and so every step's outputs; a step compiled at warm-up on state not
        # yet committed would compile again when serving. (Under a mesh the buffers were always
        # committed, and the sharded KV cache and staging buffer too.)
        device = jax.local_devices()[0]
        # The ``fed_back`` of a decode step that reads no token from another step.
        self._no_feedback = jnp.zeros(
            buckets.decode_batch[-1], jnp.int32, device=device if mesh is None else None
        )
        # On CPU the Pallas kernel runs in its interpreter (tests); on GPU it is compiled.
        self._interpret = jax.default_backend() == "cpu"
        # Under tensor parallelism each device allocates only its KV heads.
        allocate = jax.jit(
            allocate_kv_cache,
            static_argnums=(0, 1, 2, 3),
            out_shardings=SingleDeviceSharding(device)
            if mesh is None
            else NamedSharding(mesh, KV_SHARDING),
        )
        self.kv = allocate(cfg, num_pages, page_size, params.embed.dtype)
        # With stage_host_inputs, every step's host inputs are copied into this one buffer, which
        # the step reads (jlora.runner.host_inputs): room for the largest bucket's inputs and the
        # fed-back tokens.
        self._staging = None
        if stage_host_inputs:
            largest = max(pack(self._padding_inputs(s))[1].size for s in buckets.all_shapes())
            staging = np.zeros(largest + buckets.decode_batch[-1], np.int32)
            self._staging = jax.device_put(
                staging, SingleDeviceSharding(device) if mesh is None else NamedSharding(mesh, P())
            )

    # ------------------------------------------------------------------ adapters
    def host_adapter(self, adapter: LoraAdapter) -> SlotAdapter | LoraAdapter:
        """``adapter`` laid out for the slots (:meth:`SlotBuffers.host_adapter`); as read when
        LoRA is off (nothing will load it)."""
        return adapter if self.slots is None else self.slots.host_adapter(adapter)

    def load_lora(self, slot: int, adapter: SlotAdapter | LoraAdapter | None) -> None:
        """Dispatch the load (:meth:`SlotBuffers.put`); the first step that uses the slot waits
        for it."""
        if self.slots is None:
            raise ValueError("LoRA is off in this runner (no slot buffers): cannot load a slot")
        assert_same_everywhere(f"the load of slot {slot}", adapter and adapter.name or "")
        self.slots.put(slot, adapter)

    def take_failed_loads(self) -> dict[int, Exception]:
        return {} if self.slots is None else dict(self.slots.take_failed())

    def _lora_layers(self, token_slot: np.ndarray | None) -> LoraSlots | None:
        """The slot buffers for a step whose tokens read the slots ``token_slot`` (numpy, [T]):
        the loads of those slots are written first (:meth:`SlotBuffers.layers_for`)."""
        if self.slots is None:
            return None
        return self.slots.layers_for(np.unique(token_slot[token_slot >= 0]).tolist())

    def _lora_batch(self, token_slot: np.ndarray, on_device: bool = True) -> LoraBatch | None:
        if self.slots is None:
            return None
        return make_lora_batch(token_slot, self.slots.slot_rank, on_device=on_device)

    def _packed_call(self, inputs: tuple, fed_back: jax.Array | None) -> tuple[tuple, dict]:
        """Arguments of :func:`_packed_step` over :func:`model_step`'s numpy host ``inputs`` (and
        ``fed_back``, decode), copied into the staging buffer first when there is one."""
        packed, spec = pack(inputs)
        static = dict(spec=spec, cfg=self.cfg, lora_backend=self.lora_backend, mesh=self.mesh)
        lora = self._lora_layers(None if inputs[3] is None else inputs[3].token_slot)
        if self._staging is None:
            return (self.params, lora, self.kv, packed, fed_back), dict(static, staged_fed_back=0)
        feedback = self._no_feedback if fed_back is None else fed_back
        self._staging = stage(self._staging, packed, feedback)
        width = 0 if fed_back is None else feedback.shape[0]
        args = (self.params, lora, self.kv, self._staging, None)
        return args, dict(static, staged_fed_back=width)

    def _run(
        self, inputs: tuple, rows: list[tuple], size: int, fed_back: jax.Array | None = None
    ) -> jax.Array:
        """Run a step over the numpy ``inputs`` sent in one transfer; keep the new KV cache. The
        tokens of its ``size`` rows: greedy, or drawn by :func:`sample_step` when one of ``rows``
        (params, seed, output index) has a temperature. Returns at once: the result is a device
        array still being computed."""
        args, static = self._packed_call(inputs, fed_back)
        tokens, row_logits, self.kv = self._packed_step(*args, **static)
        if self.slots is not None:  # loads the step does not read: sent while it runs
            self.slots.send_queued()
        if any(params.temperature > 0 for params, _, _ in rows):
            sampling = SamplingInputs.build(rows, size, self.cfg.vocab_size, False)
            packed, spec = pack((sampling,))
            tokens = sample_step(row_logits, packed, spec)
        return tokens

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
            backend=self.attention_backend,
            interpret=self._interpret,
        )
        lora_batch = self._lora_batch(token_slot, False)
        inputs = (tokens, positions, attention, lora_batch, last_index)
        next_tokens = np.asarray(self._run(inputs, rows, b.prefill_rows))
        return [int(next_tokens[row_of[i]]) if i in row_of else None for i in range(len(seqs))]

    def decode(self, seqs: list[DecodeSeq]) -> list[int]:
        return self.launch_decode(seqs, None).tokens()

    supports_overlap = True

    def launch_decode(
        self, seqs: list[DecodeSeq], in_flight: LaunchedDecode | None
    ) -> LaunchedDecode:
        """Dispatch a decode step and return without waiting for it (see :class:`LaunchedDecode`);
        a sequence whose ``token`` is ``FED_BACK`` reads the token it sampled in ``in_flight``."""
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
        row_of: dict[int, int] = {}
        for row, i in enumerate(order):
            s = seqs[i]
            # The in-flight step's output row of this sequence, encoded as -1 - row.
            token = s.token if s.token != FED_BACK else -1 - in_flight.row_of[s.rid]
            tokens[row], positions[row] = token, s.position
            page_table[row, : len(s.pages)] = s.pages
            slot_mapping[row] = s.pages[s.position // self.page_size] * self.page_size + (
                s.position % self.page_size
            )
            seq_lens[row] = s.position + 1
            token_slot[row] = s.lora_slot
            rows.append((s.params, s.seed, s.out_index))
            row_of[s.rid] = row
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
        inputs = (tokens, positions, attention, self._lora_batch(token_slot, False))
        fed_back = self._no_feedback if in_flight is None else in_flight.widened
        out = self._run(inputs, rows, bsz, fed_back)
        return _Launched(out, _widen(out, self.buckets.decode_batch[-1]), row_of, seqs)

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
            self._score_step(
                self.params,
                self._lora_layers(token_slot),
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
        and the one-slot adapter write of every rank bucket (:meth:`SlotBuffers.warmup`)."""
        if self.slots is not None:
            self.slots.warmup()
        # A row that samples, so that the sampling step is compiled for each row count too.
        sampled_row = [(SamplingParams(temperature=1.0), 0, 0)]
        for shape in self.buckets.all_shapes():
            fed_back = None if shape[0] == "prefill" else self._no_feedback
            size = self.buckets.prefill_rows if shape[0] == "prefill" else shape[1]
            out = self._run(self._padding_inputs(shape), sampled_row, size, fed_back)
            if shape[0] == "decode":  # what a decode step hands the next (overlap scheduling)
                out = _widen(out, self.buckets.decode_batch[-1])
            out.block_until_ready()

    def compiled_text(self, shape: tuple) -> str:
        """The compiled HLO text of one bucket's step (``shape`` from ``buckets.all_shapes()``),
        e.g. to count its collectives."""
        fed_back = None if shape[0] == "prefill" else self._no_feedback
        args, static = self._packed_call(self._padding_inputs(shape), fed_back)
        return self._packed_step.lower(*args, **static).compile().as_text()

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
                backend=self.attention_backend,
                interpret=self._interpret,
            )
            lora_batch = self._lora_batch(np.full(t, NO_SLOT), False)
            return (zeros, zeros, attention, lora_batch, np.zeros(r, np.int32))
        _, bsz, p = shape
        zeros = np.zeros(bsz, np.int32)
        attention = DecodeAttention(
            slot_mapping=zeros,
            page_table=np.zeros((bsz, p), np.int32),
            seq_lens=zeros,
            backend=self.attention_backend,
            interpret=self._interpret,
        )
        lora_batch = self._lora_batch(np.full(bsz, NO_SLOT), False)
        return (zeros, zeros, attention, lora_batch)

    @staticmethod
    def compiled_count() -> int:
        """Compiled executables of the step functions and the slot write, summed (tests check it
        stays flat)."""
        steps = (
            model_step,
            sample_step,
            _widen,
            stage,
            *(f for fs in _STEP_FUNCTIONS.values() for f in fs),
        )
        return sum(f._cache_size() for f in steps) + SlotBuffers.compiled_count()
