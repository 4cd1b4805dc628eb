"""Engine configuration: one frozen dataclass, a docstring under every field.

Field names follow SGLang's ``ServerArgs`` wherever the concept is the same, so the command line
derived from this class (``--max-loras-per-batch`` ...) reads as SGLang's does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from jlora.flags import nearest
from jlora.scheduler.policies import DRAIN_POLICIES
from models.config import ModelConfig
from models.presets import PRESETS, get_preset

LORA_BACKENDS = ("auto", "xla", "pallas")
ATTENTION_BACKENDS = ("auto", "xla", "pallas")
LOAD_FORMATS = ("auto", "dummy")
DTYPES = ("bfloat16", "float32")
GRAPH_SCHEDULING = ("concurrent", "serialize")


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """Everything the engine needs to start. Invalid values raise ``ValueError`` naming them."""

    model: str
    """A Hugging Face model directory (config.json + safetensors) or a preset name
    (``llama-3.1-8b``, ``llama-3.1-70b``, ``llama-3.2-1b``, ``tiny``)."""
    load_format: str = "auto"
    """``auto``: read the directory's safetensors (a preset has no files: random weights);
    ``dummy``: random weights of the right shapes and scales, no files read."""
    dtype: str = "bfloat16"
    """Weights and activations: ``bfloat16`` or ``float32``."""
    tokenizer_path: str | None = None
    """Directory of the tokenizer (``tokenizer.json``, with ``tokenizer_config.json`` and
    ``generation_config.json`` if there): default the model directory. With one, prompts may be
    text and outputs carry text (:mod:`jlora.text`); without, the engine takes token ids only."""
    lora_paths: dict[str, str] = field(default_factory=dict)
    """Adapters by name: a PEFT directory, or ``dummy:RANK`` for a random adapter of that rank on
    all seven target modules."""
    enable_lora: bool | None = None
    """Compile the steps with LoRA (the adapter slots and their kernels). None: on when
    ``lora_paths`` names an adapter; set it to load adapters only at run time
    (``load_lora_adapter``). Off, the steps carry no LoRA ops at all and run at the base model's
    speed (SGLang without ``--enable-lora``), and no adapter can be loaded."""
    max_loras_per_batch: int = 8
    """Device slots: the most distinct adapters one batch can mix."""
    max_loaded_loras: int | None = None
    """Adapters kept in host memory (None: all of ``lora_paths``)."""
    max_lora_rank: int = 64
    """Rank of the device slot buffers; an adapter above it is refused at load."""
    lora_backend: str = "auto"
    """LoRA math: ``xla`` (reference, one-hot einsum), ``pallas`` (kernels for the platform;
    interpret mode on CPU) or ``auto`` (``pallas`` on GPU, ``xla`` elsewhere: the TPU kernels are
    tested in TPU interpret mode only)."""
    attention_backend: str = "auto"
    """Attention of the steps: ``pallas`` (GPU kernels: decode reads the KV pages in place,
    prefill is a flash attention over the step's packed sequences; interpret mode on CPU), ``xla``
    (reference: decode gathers each sequence's pages, prefill is one dense masked softmax) or
    ``auto`` (``pallas`` on GPU, ``xla`` elsewhere; there is no TPU kernel). With ``pallas`` and no
    ``kv_len_buckets`` the decode step has a single page-table width, the full context."""
    graph_scheduling: str = "concurrent"
    """GPU only: how XLA orders the kernels of a step's CUDA graph (its command-buffer scheduling
    mode). ``concurrent``: kernels that share no buffer may run at the same time, so the LoRA
    kernels, which read only a projection's input, overlap the base projection's matmul;
    ``serialize`` (XLA's default): one kernel after another. The outputs are the same either way.
    Ignored on CPU and TPU."""
    stage_host_inputs: bool | None = None
    """Copy each step's host inputs into one persistent device buffer before the step, so that the
    step reads them at the same address every time (:mod:`jlora.runner.host_inputs`). On GPU, XLA
    rewrites the nodes of a step's CUDA graph whose buffers moved since its last launch: unstaged,
    the layers read the step's freshly transferred buffer, and the rewrite costs host time at every
    step, which on a busy or slow host becomes step time; staged, the rewrite is much shorter, for
    one more small launch (how much of each on the H100:
    ``experiments/results/graph_scheduling.md``). ``None``: staged on GPU only (a CPU has no graph
    to rewrite, and there the copy made step times vary more)."""
    lora_eviction_policy: str = "lru"
    """Which adapter leaves a device slot (or the host cache) when another needs it: ``lru`` or
    ``fifo``. An adapter with running requests never leaves its slot."""
    lora_prefetch: bool = True
    """Load the adapter of the next request in line into a free device slot (empty, or held by an
    adapter no request uses) before its turn, so that its load overlaps the steps before it. It
    never evicts an adapter with running, waiting or paused requests; outputs are the same either
    way."""
    lora_load_mb_per_step: float | None = None
    """At most this many MB of a queued slot load start their transfer after each step's dispatch
    (whole module groups, at least one a step), so that a large load spreads over several steps;
    a step that reads the slot sends the rest first. ``None``: a load's transfer starts at once.
    Whether spreading keeps the decode steps beside a load from slowing on a GPU is not yet
    measured (``experiments/results/slot_load.md``)."""
    base_model_uses_slot: bool = False
    """Requests without an adapter count as one adapter against ``max_loras_per_batch``, as in
    SGLang (where the base model takes a slot)."""
    lora_drain_wait_threshold: float = 0.0
    """Seconds a request may wait for its adapter to get a device slot before a drainer makes a
    running adapter give one up (0: off, plain first come first served); for ``fair``, the wait
    bound it aims for."""
    lora_drain_policy: str = "sglang"
    """How the slot is freed once the threshold has passed: ``sglang`` (SGLang's drainer: the
    victim admits no long request until it has drained), ``reserve`` (the same, with the freed
    slot held for the starved adapter), ``preempt`` (the victim's requests are paused, KV kept,
    and resumed when a slot is theirs again) or ``fair`` (the busiest adapters keep their slots;
    a victim is gated, then paused but for requests about to finish). See
    :mod:`jlora.scheduler.policies` and ``experiments/results/policy_suite.md``."""
    random_seed: int = 0
    """Seed of dummy weights, dummy adapters and of requests that set no sampling seed."""
    tp_size: int = 1
    """Tensor parallelism: the weights, the LoRA slots and the KV cache are split over this many
    devices (Megatron-style; see :mod:`jlora.tensor_parallel`). The model's KV heads, heads and
    MLP width must divide by it; with several processes it must span every device."""

    # KV cache and batching
    context_length: int | None = None
    """Longest sequence (prompt + output) served; default: the model's, at most 4096."""
    page_size: int = 16
    """Tokens per KV cache page."""
    max_total_tokens: int | None = None
    """KV cache capacity in tokens; default: ``mem_fraction_static`` of the free device memory
    (on the CPU, which reports none, room for 64 full contexts)."""
    mem_fraction_static: float = 0.85
    """Fraction of free device memory given to the KV cache when ``max_total_tokens`` is unset."""
    max_running_requests: int = 64
    """Most requests running (prefilling or decoding) at once."""
    max_prefill_tokens: int = 2048
    """Token budget of one prefill step (also the largest prefill shape compiled)."""
    chunked_prefill_size: int | None = None
    """Longest piece of one prompt per prefill step (default: ``max_prefill_tokens``)."""
    decode_batch_buckets: tuple[int, ...] | None = None
    """Decode batch sizes compiled (default: 8, 32, 128... up to ``max_running_requests``)."""
    prefill_token_buckets: tuple[int, ...] | None = None
    """Prefill token counts compiled (default: 64, 256, 1024... up to ``max_prefill_tokens``)."""
    kv_len_buckets: tuple[int, ...] | None = None
    """Context lengths (tokens) a decode step is compiled for (default: 256, 1024... up to
    ``context_length``)."""
    warmup: bool = True
    """Compile every bucket at start-up, so serving never compiles."""
    overlap_schedule: bool | None = None
    """Overlap the host's work with the device's (SGLang's overlap scheduler): while decode step
    N runs, step N+1 of the same requests is planned and dispatched, its input tokens read on the
    device from step N's output; step N's tokens reach the host one ``step()`` later. Only while
    the scheduler has nothing else to decide (no request waits, is paused or mid-prefill) and the
    pages for one more token are free; otherwise the engine waits for step N first. Requests that
    end by length at N are left out of N+1; one that stops (EOS) at N has computed one token more,
    which is dropped. Outputs are the same either way. ``None``: on with a GPU (and in a simulation
    of one whose cost model calibrated it), off elsewhere. The fake runner runs without it."""

    @property
    def lora_enabled(self) -> bool:
        """Whether the steps are compiled with LoRA (``enable_lora``, resolved)."""
        return bool(self.lora_paths) if self.enable_lora is None else self.enable_lora

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model={self.model!r} must be a model directory or a preset name")
        if self.model not in PRESETS and not Path(self.model).is_dir():
            raise ValueError(
                f"model={self.model!r} is neither a directory nor a preset "
                f"({', '.join(PRESETS)}){nearest(self.model, PRESETS)}"
            )
        if self.tokenizer_path is not None and not Path(self.tokenizer_path).is_dir():
            raise ValueError(f"tokenizer_path={self.tokenizer_path!r} is not a directory")
        _choice("load_format", self.load_format, LOAD_FORMATS)
        _choice("dtype", self.dtype, DTYPES)
        _choice("lora_backend", self.lora_backend, LORA_BACKENDS)
        _choice("attention_backend", self.attention_backend, ATTENTION_BACKENDS)
        _choice("graph_scheduling", self.graph_scheduling, GRAPH_SCHEDULING)
        _positive_int("max_loras_per_batch", self.max_loras_per_batch)
        _positive_int("max_lora_rank", self.max_lora_rank)
        _positive_int("tp_size", self.tp_size)
        mb = self.lora_load_mb_per_step
        if mb is not None and (
            isinstance(mb, bool) or not isinstance(mb, int | float) or not mb > 0 or mb == math.inf
        ):
            raise ValueError(
                f"lora_load_mb_per_step={mb!r} must be a positive number of MB (or None: a load "
                "moves at once)"
            )
        _choice("lora_eviction_policy", self.lora_eviction_policy, ("lru", "fifo"))
        _choice("lora_drain_policy", self.lora_drain_policy, DRAIN_POLICIES)
        t = self.lora_drain_wait_threshold
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t < 0:
            raise ValueError(
                f"lora_drain_wait_threshold={t!r} must be a finite number of seconds >= 0 "
                "(0 turns the drainer off)"
            )
        for name in ("page_size", "max_running_requests", "max_prefill_tokens"):
            _positive_int(name, getattr(self, name))
        for name in ("context_length", "max_total_tokens", "chunked_prefill_size"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if not 0 < self.mem_fraction_static <= 1:
            raise ValueError(f"mem_fraction_static={self.mem_fraction_static!r} must be in (0, 1]")
        for name in ("decode_batch_buckets", "prefill_token_buckets", "kv_len_buckets"):
            value = getattr(self, name)
            if value is not None:
                if not value or any(not isinstance(v, int) or v < 1 for v in value):
                    raise ValueError(f"{name}={value!r} must be positive integers")
                object.__setattr__(self, name, tuple(sorted(set(value))))
        if self.enable_lora is False and self.lora_paths:
            raise ValueError(
                f"enable_lora=False but lora_paths names adapters ({', '.join(self.lora_paths)})"
            )
        if self.max_loaded_loras is not None:
            _positive_int("max_loaded_loras", self.max_loaded_loras)
            if self.max_loaded_loras < self.max_loras_per_batch:
                raise ValueError(
                    f"max_loaded_loras={self.max_loaded_loras} must be at least "
                    f"max_loras_per_batch={self.max_loras_per_batch}"
                )
        if not isinstance(self.lora_paths, dict):
            raise ValueError(f"lora_paths={self.lora_paths!r} must be a dict of name -> path")
        for name, path in self.lora_paths.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"lora_paths has an invalid adapter name {name!r}")
            if not isinstance(path, str) or not path:
                raise ValueError(f"lora_paths[{name!r}]={path!r} must be a path or 'dummy:RANK'")

    def model_config(self) -> ModelConfig:
        if Path(self.model).is_dir():
            return ModelConfig.from_hf_dir(self.model)
        return get_preset(self.model)

    def resolved_context_length(self, model: ModelConfig) -> int:
        if self.context_length is None:
            return min(model.max_position_embeddings, 4096)
        if self.context_length > model.max_position_embeddings:
            raise ValueError(
                f"context_length={self.context_length} exceeds the model's "
                f"max_position_embeddings={model.max_position_embeddings}"
            )
        return self.context_length

    def resolved_stage_host_inputs(self, platform: str) -> bool:
        """Whether the steps stage their host inputs on ``platform`` (``cpu``, ``gpu``, ``tpu``)."""
        if self.stage_host_inputs is None:
            return platform == "gpu"
        return self.stage_host_inputs

    def resolved_lora_backend(self, platform: str) -> str:
        """``xla`` or ``pallas`` on ``platform`` (``cpu``, ``gpu``, ``tpu``)."""
        if self.lora_backend == "auto":
            return "pallas" if platform == "gpu" else "xla"
        return self.lora_backend

    def resolved_overlap_schedule(self, platform: str) -> bool:
        """Whether decode steps overlap the host's work on ``platform`` (``cpu``, ``gpu``,
        ``tpu``)."""
        if self.overlap_schedule is None:
            return platform == "gpu"
        return self.overlap_schedule

    def resolved_attention_backend(self, platform: str) -> str:
        """``xla`` or ``pallas`` on ``platform`` (``cpu``, ``gpu``, ``tpu``)."""
        if self.attention_backend == "auto":
            return "pallas" if platform == "gpu" else "xla"
        if self.attention_backend == "pallas" and platform == "tpu":
            raise ValueError(
                "attention_backend='pallas' has no TPU kernel (the paged decode attention kernel "
                "is GPU only); use 'xla' or 'auto'"
            )
        return self.attention_backend

    @property
    def resolved_tokenizer_path(self) -> str | None:
        """Where the tokenizer is looked for: ``tokenizer_path``, else the model directory."""
        if self.tokenizer_path is not None:
            return self.tokenizer_path
        return self.model if Path(self.model).is_dir() else None

    @property
    def uses_files(self) -> bool:
        """Whether weights come from the model directory."""
        return self.load_format == "auto" and Path(self.model).is_dir()


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        hint = nearest(value, choices) if isinstance(value, str) else ""
        raise ValueError(f"{name}={value!r} is not one of {', '.join(choices)}{hint}")


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")
