"""The benchmark's own settings (the engine's are :class:`jlora.config.EngineConfig`); flag names
are SGLang ``bench_serving``'s."""

from __future__ import annotations

import math
from dataclasses import dataclass

from jlora.bench.workload import (
    DATASETS,
    AdapterMix,
    WorkloadRequest,
    make_random_workload,
    make_sharegpt_workload,
    make_trace_workload,
)


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """A workload and where its results go. Invalid values raise ``ValueError`` naming them."""

    backend: str = "engine"
    """``engine``: the real model in-process; ``sim``: the same engine and scheduler with the
    runner replaced by a cost model and a virtual clock; ``http``: any OpenAI-compatible server at
    ``--base-url`` (``jlora serve``, SGLang, vLLM), driven over HTTP with the same workload (the
    engine flags then only describe the model: its vocabulary, context and tokenizer)."""
    base_url: str | None = None
    """The server of ``--backend http``, e.g. ``http://127.0.0.1:30000``."""
    sim_cost_model: str | None = None
    """Cost-model JSON for ``--backend sim`` (default: the shipped one of the model preset)."""
    dataset_name: str = "random"
    """``random``: token ids uniform over the vocabulary, lengths and arrivals drawn; ``trace``:
    arrivals and lengths replayed from the CSV at ``--dataset-path``, token ids drawn;
    ``sharegpt``: prompts and completion lengths from the ShareGPT JSON at ``--dataset-path``,
    tokenized with the model's tokenizer (as SGLang's bench_serving; e.g. the shipped
    ``jlora/bench/data/sharegpt_synthetic.json``)."""
    dataset_path: str | None = None
    """The trace CSV of ``--dataset-name trace``, with a header: ``TIMESTAMP`` (ISO date-time or
    seconds), ``ContextTokens``, ``GeneratedTokens`` (the Azure LLM inference trace's columns; or
    ``arrival_s``, ``input_len``, ``output_len``) and optionally ``adapter`` (when absent or empty,
    drawn by ``--lora-request-distribution``). Arrivals count from the first row's; lengths are
    clipped to the context. E.g. the shipped ``jlora/bench/data/azure_synthetic_trace.csv``."""
    sharegpt_output_len: int | None = None
    """``sharegpt``: every output this many tokens (default: each completion's own length)."""
    trace_time_scale: float = 1.0
    """The trace's arrival times are multiplied by this: 0.5 replays it at twice its rate."""
    num_prompts: int = 1000
    """Requests in the workload."""
    request_rate: float = float("inf")
    """Arrival rate in requests/s (Poisson unless ``--burstiness``); ``inf`` sends all at once."""
    burstiness: float = 1.0
    """Shape of the gamma law of the gaps between arrivals, whose mean stays ``1 / rate``
    (SGLang's flag): 1.0 is Poisson, below 1 burstier (the gaps' coefficient of variation is
    ``1 / sqrt(burstiness)``), above 1 more regular."""
    random_input_len: int = 1024
    """Largest prompt length."""
    random_output_len: int = 1024
    """Largest output length (outputs ignore EOS, so lengths are exact)."""
    random_range_ratio: float = 0.0
    """Lengths are uniform in ``[max(1, len * ratio), len]``."""
    lora_name: tuple[str, ...] = ()
    """Adapters the requests use (default: every adapter of ``--lora-paths``)."""
    lora_request_distribution: str = "uniform"
    """How requests pick adapters: ``uniform``, ``distinct`` (round-robin), ``skewed`` (Zipf: the
    k-th adapter weighs ``1 / k**alpha``) or ``power`` (S-LoRA's power law: adapter ``floor(n *
    X)``, ``X ~ np.random.power(alpha)``). The first adapters are the hot ones."""
    lora_zipf_alpha: float = 1.5
    """Exponent of the ``skewed`` distribution."""
    lora_power_alpha: float = 0.5
    """Exponent of the ``power`` distribution: below 1 skewed toward the first adapters (the
    smaller, the more), 1 uniform."""
    lora_on_mean_s: float = 0.0
    """On/off bursts per adapter: the mean of its on periods in seconds (exponential; 0: every
    adapter always on). Requests go only to the adapters on at their arrival."""
    lora_off_mean_s: float = 0.0
    """The mean of each adapter's off periods in seconds (needed with ``--lora-on-mean-s``)."""
    lora_shift_at: float | None = None
    """A popularity shift: from this fraction of the requests on (in arrival order, in [0, 1]) the
    adapters' weights are reversed, the hottest becoming the coldest (default: no shift)."""
    seed: int = 1
    """Seed of the workload."""
    compare: tuple[str, ...] = ()
    """Run the same workload under several settings, ``NAME`` or ``NAME:field=value,...`` with
    engine fields, e.g. ``off sglang:lora_drain_wait_threshold=3,lora_drain_policy=sglang``."""
    output_file: str | None = None
    """Append one JSON line per setting with SGLang's metric keys and the config."""
    output_details: str | None = None
    """Write one JSON line per request (setting, adapter, lengths, arrival, TTFT, E2E, ITLs)."""
    tensorboard_dir: str | None = None
    """Write TensorBoard scalars, one run directory per setting."""
    plot_dir: str | None = None
    """Write PNG plots: TTFT CDF per setting, per-adapter TTFT, slot timeline."""
    profile_steps: str | None = None
    """``A:B``: capture a jax.profiler trace of steps A to B into the TensorBoard directory."""
    disable_tqdm: bool = False
    """No progress bar."""

    def __post_init__(self) -> None:
        if self.backend not in ("engine", "sim", "http"):
            raise ValueError(f"backend={self.backend!r} is not one of engine, sim, http")
        if (self.backend == "http") != (self.base_url is not None):
            raise ValueError(
                f"base_url={self.base_url!r} goes with backend='http' (and only with it; "
                f"backend={self.backend!r})"
            )
        if self.backend == "http" and self.compare:
            raise ValueError(
                f"compare={self.compare!r} cannot be run by backend='http': the server's "
                "settings are its own (start one server per setting)"
            )
        if self.dataset_name not in DATASETS:
            raise ValueError(
                f"dataset_name={self.dataset_name!r} is not one of {', '.join(DATASETS)}"
            )
        if (self.dataset_name in ("trace", "sharegpt")) != (self.dataset_path is not None):
            raise ValueError(
                f"dataset_path={self.dataset_path!r} goes with dataset_name='trace' or 'sharegpt' "
                f"(and only with them; dataset_name={self.dataset_name!r})"
            )
        if self.num_prompts < 1:
            raise ValueError(f"num_prompts={self.num_prompts} must be at least 1")
        if not self.request_rate > 0:
            raise ValueError(f"request_rate={self.request_rate} must be positive (or inf)")
        for name in ("burstiness", "trace_time_scale"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{name}={v} must be a positive finite number")
        adapter_mix(self)  # the adapter fields, each checked by name
        if self.profile_steps is not None:
            parse_step_range(self.profile_steps)


def parse_step_range(text: str) -> tuple[int, int]:
    a, sep, b = text.partition(":")
    try:
        lo, hi = int(a), int(b)
    except ValueError:
        lo, hi = -1, -1
    if not sep or lo < 0 or hi <= lo:
        raise ValueError(f"profile_steps={text!r} must be A:B with 0 <= A < B")
    return lo, hi


def adapter_mix(bench: BenchConfig) -> AdapterMix:
    return AdapterMix(
        distribution=bench.lora_request_distribution,
        zipf_alpha=bench.lora_zipf_alpha,
        power_alpha=bench.lora_power_alpha,
        on_mean_s=bench.lora_on_mean_s,
        off_mean_s=bench.lora_off_mean_s,
        shift_at=bench.lora_shift_at,
    )


def build_workload(
    bench: BenchConfig,
    *,
    vocab_size: int,
    lora_names: list[str | None],
    context_length: int,
    tokenizer=None,
) -> list[WorkloadRequest]:
    """The workload a :class:`~jlora.bench.config.BenchConfig` describes (``sharegpt`` needs the
    model's ``tokenizer``, a :class:`~jlora.text.Tokenizer`)."""
    if bench.dataset_name == "sharegpt":
        if tokenizer is None:
            raise ValueError(
                "dataset_name='sharegpt' needs the model's tokenizer (tokenizer.json in the "
                "model directory, or --tokenizer-path)"
            )
        return make_sharegpt_workload(
            bench.dataset_path,
            tokenizer=tokenizer,
            num_prompts=bench.num_prompts,
            request_rate=bench.request_rate,
            burstiness=bench.burstiness,
            context_length=context_length,
            lora_names=lora_names,
            mix=adapter_mix(bench),
            output_len=bench.sharegpt_output_len,
            seed=bench.seed,
        )
    if bench.dataset_name == "trace":
        return make_trace_workload(
            bench.dataset_path,
            num_prompts=bench.num_prompts,
            time_scale=bench.trace_time_scale,
            vocab_size=vocab_size,
            lora_names=lora_names,
            context_length=context_length,
            mix=adapter_mix(bench),
            seed=bench.seed,
        )
    return make_random_workload(
        num_prompts=bench.num_prompts,
        request_rate=bench.request_rate,
        input_len=bench.random_input_len,
        output_len=bench.random_output_len,
        range_ratio=bench.random_range_ratio,
        vocab_size=vocab_size,
        lora_names=lora_names,
        seed=bench.seed,
        burstiness=bench.burstiness,
        mix=adapter_mix(bench),
    )
