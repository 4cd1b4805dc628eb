"""The benchmark's own settings (the engine's are :class:`jlora.config.EngineConfig`); flag names
are SGLang ``bench_serving``'s."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """A workload and where its results go. Invalid values raise ``ValueError`` naming them."""

    backend: str = "engine"
    """``engine``: the real model in-process; ``sim``: the same engine and scheduler with the
    runner replaced by a cost model and a virtual clock."""
    sim_cost_model: str | None = None
    """Cost-model JSON for ``--backend sim`` (default: the shipped one of the model preset)."""
    dataset_name: str = "random"
    """Only ``random``: token ids uniform over the vocabulary."""
    num_prompts: int = 1000
    """Requests in the workload."""
    request_rate: float = float("inf")
    """Poisson arrival rate in requests/s; ``inf`` sends all at once."""
    random_input_len: int = 1024
    """Largest prompt length."""
    random_output_len: int = 1024
    """Largest output length (outputs ignore EOS, so lengths are exact)."""
    random_range_ratio: float = 0.0
    """Lengths are uniform in ``[max(1, len * ratio), len]``."""
    lora_name: tuple[str, ...] = ()
    """Adapters the requests use (default: every adapter of ``--lora-paths``)."""
    lora_request_distribution: str = "uniform"
    """How requests pick adapters: ``uniform``, ``distinct`` (round-robin), ``skewed`` (Zipf)."""
    lora_zipf_alpha: float = 1.5
    """Exponent of the ``skewed`` distribution."""
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
        if self.backend not in ("engine", "sim"):
            raise ValueError(f"backend={self.backend!r} is not one of engine, sim")
        if self.dataset_name != "random":
            raise ValueError(f"dataset_name={self.dataset_name!r} is not supported (only random)")
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
