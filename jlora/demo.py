"""``make demo``: the seed's LoRA starvation, scaled down to the tiny model, in two parts.

Six adapters of mixed ranks compete for three device slots under Poisson arrivals, as in the seed
(SGLang's LoRADrainer pull request). The same workload runs with the drainer off, with SGLang's
drainer and with our ``fair`` policy, each at the same drain threshold:

1. **simulated**: the engine and scheduler on the simulator, with the cost model shipped for the
   tiny model (``jlora/sim/cost_models/cpu__tiny.json``). Time is virtual, so this part gives the
   same table on every machine, in seconds; its verdict is the demo's conclusion.
2. **real**: the tiny model computed on this machine's CPU. A host's speed is its own, so the
   request rate is not a constant: each part first measures its capacity (requests/s with the
   drainer off, every request sent at once) and sends the workload at ``load_fraction`` of it. An
   overloaded run tells another story (every policy queues); a host too slow for the real part in
   ``max_real_seconds`` skips it, and a run that did not keep up with its arrivals says so.

Each part prints the side-by-side table (% change against the drainer off), the P99 TTFT of each
adapter, and who wins what; the last table sets the two parts' winners side by side. TensorBoard
runs, PNG plots and a JSON line per setting go under ``out/sim`` and ``out/real``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from jlora.bench.cli import RunnerCache, run_bench
from jlora.bench.config import BenchConfig
from jlora.bench.driver import RunResult
from jlora.bench.metrics import per_adapter_ttft
from jlora.bench.report import format_compare
from jlora.bench.trace import SlotTimeline
from jlora.config import EngineConfig
from jlora.flags import FlagParser, add_dataclass_flags, dataclass_from_args, run_command

RANKS = (8, 16, 16, 32, 64, 8)
"""Ranks of the demo's six random adapters ``adapter0..adapter5`` (the seed's mix)."""

# The comparisons whose winner the demo reports: (label, metric key, True when lower is better).
VERDICT_METRICS = (
    ("P99 TTFT", "p99_ttft_ms", True),
    ("mean TTFT", "mean_ttft_ms", True),
    ("median TTFT", "median_ttft_ms", True),
    ("P99 E2E", "p99_e2e_latency_ms", True),
    ("median E2E", "median_e2e_latency_ms", True),
    ("mean TPOT", "mean_tpot_ms", True),
    ("output throughput", "output_throughput", False),
)


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """The demo's own settings; the engine's are fixed by :func:`demo_engine_config`."""

    out: str = "runs/demo"
    """TensorBoard runs, plots and results go under ``OUT/sim`` and ``OUT/real``."""
    num_prompts: int = 200
    """Requests of each compared run."""
    capacity_prompts: int = 100
    """Requests sent at once to measure a part's capacity (requests/s, drainer off)."""
    load_fraction: float = 0.7
    """The request rate of each part as a fraction of its measured capacity: below 1, so that the
    drain policies, not an overloaded queue, decide who waits."""
    threshold: float = 1.0
    """Drain wait threshold of both drainers, seconds. Over the workload suite of the 8B model
    ``fair`` fares best at 3 s (``experiments/results/policy_suite.md``); the tiny model's requests
    end several times sooner than the 8B model's (the README's demo table), so 1 s here."""
    real: bool = True
    """Run the real part after the simulated one (``--no-real``: the simulated part only)."""
    max_real_seconds: float = 600.0
    """Skip the real part when its three runs would take longer than this at the measured
    capacity (a host too slow to keep up)."""
    seed: int = 1
    """Seed of the workload (the same in both parts)."""

    def __post_init__(self) -> None:
        for name in ("num_prompts", "capacity_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if not 0 < self.load_fraction <= 1:
            raise ValueError(f"load_fraction={self.load_fraction} must be in (0, 1]")
        if not self.threshold > 0:
            raise ValueError(f"threshold={self.threshold} must be a positive number of seconds")


@dataclass(frozen=True)
class PartResult:
    """One part of the demo: its capacity, the rate it ran at, and each setting's results."""

    name: str
    capacity: float
    """Requests/s with the drainer off, every request sent at once."""
    request_rate: float
    metrics: dict[str, dict]
    """SGLang's metrics per setting (:func:`jlora.bench.metrics.compute_metrics`)."""
    per_adapter: dict[str, dict]
    """TTFT P50 / P99 per adapter, per setting."""
    kept_up: bool
    """Whether every run served its requests about as fast as they arrived (a simulated part
    always does: its clock waits for the engine)."""
    results: dict[str, RunResult]
    """Each setting's requests and steps (for plots)."""
    timelines: dict[str, SlotTimeline]
    """Each setting's slot occupancy and waiting requests over time (for plots)."""
    ranks: dict[str, int]
    """Each adapter's rank."""


def demo_engine_config() -> EngineConfig:
    """The tiny model with random weights and six random adapters on three slots, in the setting
    the shipped tiny cost model was calibrated with (so that the simulated part models the very
    steps the real part runs)."""
    return EngineConfig(
        model="tiny",
        load_format="dummy",
        dtype="float32",
        lora_paths={f"adapter{i}": f"dummy:{r}" for i, r in enumerate(RANKS)},
        max_loaded_loras=6,
        max_loras_per_batch=3,
        max_lora_rank=64,
        context_length=512,
        max_running_requests=32,
        max_prefill_tokens=512,
        decode_batch_buckets=(8, 32),
        prefill_token_buckets=(128, 512),
        kv_len_buckets=(128, 512),
    )


def settings(threshold: float) -> tuple[str, ...]:
    """The compared settings, as ``--compare`` takes them."""
    return (
        "off",
        f"sglang:lora_drain_wait_threshold={threshold:g},lora_drain_policy=sglang",
        f"fair:lora_drain_wait_threshold={threshold:g},lora_drain_policy=fair",
    )


def workload(demo: DemoConfig, backend: str, **fields) -> BenchConfig:
    """The demo's workload (inputs up to 128 tokens, outputs up to 256) on ``backend``."""
    return BenchConfig(
        backend=backend,
        num_prompts=demo.num_prompts,
        random_input_len=128,
        random_output_len=256,
        seed=demo.seed,
        disable_tqdm=True,
        **fields,
    )


def measure_capacity(
    engine: EngineConfig, demo: DemoConfig, backend: str, runners: RunnerCache | None = None
) -> float:
    """Requests/s the engine serves with the drainer off when ``capacity_prompts`` requests
    arrive at once."""
    bench = dataclasses.replace(
        workload(demo, backend), num_prompts=demo.capacity_prompts, request_rate=float("inf")
    )
    out = run_bench(engine, bench, quiet=True, runners=runners)
    return out["metrics"]["run"]["request_throughput"]


def run_part(
    name: str,
    backend: str,
    demo: DemoConfig,
    *,
    capacity: float | None = None,
    runners: RunnerCache | None = None,
) -> PartResult:
    """Measure the capacity (unless given), then run the three settings at ``load_fraction`` of
    it, writing TensorBoard runs, plots and results under ``out/name``."""
    engine = demo_engine_config()
    if capacity is None:
        capacity = measure_capacity(engine, demo, backend, runners)
    rate = demo.load_fraction * capacity
    out = Path(demo.out) / name
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.jsonl"
    results_file.unlink(missing_ok=True)  # this run's lines only
    bench = workload(
        demo,
        backend,
        request_rate=rate,
        compare=settings(demo.threshold),
        tensorboard_dir=str(out / "tensorboard"),
        plot_dir=str(out / "plots"),
        output_file=str(results_file),
    )
    ran = run_bench(engine, bench, quiet=True, runners=runners)
    kept_up = all(backlog(r.outputs) <= 0.2 * len(r.outputs) for r in ran["results"].values())
    return PartResult(
        name=name,
        capacity=capacity,
        request_rate=rate,
        metrics=ran["metrics"],
        per_adapter={s: per_adapter_ttft(r.outputs) for s, r in ran["results"].items()},
        kept_up=kept_up or backend == "sim",
        results=ran["results"],
        timelines=ran["timelines"],
        ranks=ran["ranks"],
    )


def backlog(outputs) -> int:
    """Requests unfinished when the last one arrives. An engine that keeps up holds about the
    arrival rate times the mean latency (Little's law: a few % of a 200-request run); one that
    falls behind holds a backlog that grows with every arrival."""
    last = max(o.arrival_time for o in outputs)
    return sum(o.finish_time is None or o.finish_time > last for o in outputs)


TIE = 0.03
"""Settings within this fraction of the best value of a metric share the win (a tie)."""


def winners(metrics: dict[str, dict]) -> dict[str, tuple[tuple[str, ...], float]]:
    """For each metric of :data:`VERDICT_METRICS`: the settings that do best (all those within
    :data:`TIE` of the best value) and the best value's change against the first setting (the
    drainer off), in %."""
    base = next(iter(metrics.values()))
    out = {}
    for label, key, lower in VERDICT_METRICS:
        best = (min if lower else max)(m[key] for m in metrics.values())
        tied = tuple(s for s, m in metrics.items() if abs(m[key] - best) <= TIE * abs(best))
        out[label] = (tied, 100 * (best / base[key] - 1) if base[key] else 0.0)
    return out


def _won(names: tuple[str, ...], change: float) -> str:
    return f"{' = '.join(names)} ({change:+.0f}%)"


def format_part(part: PartResult) -> str:
    """The side-by-side table, each adapter's P99 TTFT and who wins what."""
    lines = [format_compare(part.metrics), ""]
    names = list(part.metrics)
    lines.append("| adapter (rank) | " + " | ".join(f"{n} P99 TTFT ms" for n in names) + " |")
    lines.append("| --- |" + " ---: |" * len(names))
    for i, rank in enumerate(RANKS):
        a = f"adapter{i}"
        got = [part.per_adapter[n].get(a) for n in names]  # a short run may miss an adapter
        cells = ["-" if g is None else f"{g['p99_ttft_ms']:.0f}" for g in got]
        lines.append(f"| {a} (r{rank}) | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "who wins (best value's change against off; = a tie within 3%): "
        + "; ".join(f"{m} {_won(s, c)}" for m, (s, c) in winners(part.metrics).items())
    )
    return "\n".join(lines)


def format_verdicts(sim: PartResult, real: PartResult | None) -> str:
    """The winner of each metric in each part, and whether they agree."""
    ws = winners(sim.metrics)
    wr = winners(real.metrics) if real is not None else {}
    lines = [
        "| metric | best, simulated | best, real (this machine) | same? |",
        "| --- | --- | --- | --- |",
    ]
    for label, (s, c) in ws.items():
        if label in wr:
            r, cr = wr[label]
            same = "yes" if set(r) & set(s) else "no"
            lines.append(f"| {label} | {_won(s, c)} | {_won(r, cr)} | {same} |")
        else:
            lines.append(f"| {label} | {_won(s, c)} | not run | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m jlora.demo``: bad flags print one line and exit with code 2."""
    run_command("python -m jlora.demo", _main, sys.argv[1:] if argv is None else list(argv))


def _main(argv: list[str]) -> None:
    parser = FlagParser(prog="python -m jlora.demo", description=__doc__.split("\n\n")[0])
    add_dataclass_flags(parser, DemoConfig, group_title="demo")
    demo = dataclass_from_args(DemoConfig, parser.parse_args(argv))
    start = time.perf_counter()
    print(
        "jlora demo: the seed's LoRA starvation, scaled to the tiny model\n"
        f"  6 adapters (ranks {', '.join(map(str, RANKS))}), 3 device slots, "
        f"{demo.num_prompts} requests, inputs of 1-128 tokens, outputs of 1-256; drainer off vs "
        f"SGLang's drainer vs fair, both at {demo.threshold:g} s; each part sends requests at "
        f"{demo.load_fraction:.0%} of its measured capacity\n"
    )
    sim = run_part("sim", "sim", demo)
    print(
        "== 1. SIMULATED (virtual time, the shipped cost model of the tiny model; the same on "
        "every machine) ==\n"
        f"capacity {sim.capacity:.1f} req/s, sent at {sim.request_rate:.1f} req/s\n"
    )
    print(format_part(sim))
    real = None
    if demo.real:
        runners = RunnerCache()
        capacity = measure_capacity(demo_engine_config(), demo, "engine", runners)
        rate = demo.load_fraction * capacity
        expected = 3 * demo.num_prompts / rate
        print("\n== 2. REAL (the tiny model on this machine's CPU, wall-clock time) ==")
        if expected > demo.max_real_seconds:
            print(
                f"skipped: this host serves {capacity:.1f} req/s; the three runs would take about "
                f"{expected:.0f} s, over max_real_seconds={demo.max_real_seconds:g}"
            )
        else:
            print(f"capacity {capacity:.1f} req/s, sent at {rate:.1f} req/s (~{expected:.0f} s)\n")
            real = run_part("real", "engine", demo, capacity=capacity, runners=runners)
            print(format_part(real))
            if not real.kept_up:
                print(
                    "\nWARNING: this host did not keep up with the arrivals (another load on it?): "
                    "the real table is of an overloaded engine; trust the simulated one"
                )
        runners.clear()
    print("\n== the winners side by side ==")
    print(format_verdicts(sim, real))
    print(
        f"\nplots: {demo.out}/{{sim,real}}/plots/*.png   tensorboard: make tensorboard   "
        f"({time.perf_counter() - start:.0f} s in all)"
    )


if __name__ == "__main__":
    main()
