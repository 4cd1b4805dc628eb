"""Sweep scheduling policies through the simulator: request rate x device slots x adapter skew x
drain policy, the same engine, scheduler and adapter pool as serving, on a virtual clock.

    .venv/bin/python experiments/sweep_policies.py --model tiny          # make demo's scenario
    .venv/bin/python experiments/sweep_policies.py --model llama-3.1-8b  # the seed's (H100 costs)

The policies are ``off`` (first come, first served) and every ``lora_drain_policy`` that
:mod:`jlora.config` accepts, at ``--threshold`` seconds. Each (rate, skew, seed) draws one workload
that every (slots, policy) point serves. The engine setting is the cost model's calibrated one
(buckets, context, dtype) with the slots of the point. Writes ``sweep_policies.md`` (one row per
point: TTFT and E2E median / P99, throughput) and ``sweep_policies_{median,p99}_ttft.png`` (TTFT
against rate, a line per policy, a panel per skew and slot count) to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Per model: the scenario swept (adapter ranks, longest prompt / output, requests, rates, slots).
SCENARIOS = {
    "tiny": dict(
        ranks=(8, 16, 16, 32, 64, 8),
        input_len=128,
        output_len=256,
        num_prompts=400,
        rates=(5, 10, 15, 20, 25, 30),
        slots=(2, 3, 4),
        threshold=0.25,
    ),
    "llama-3.1-8b": dict(
        ranks=(8, 16, 16, 32, 64, 8),
        input_len=512,
        output_len=512,
        num_prompts=1000,
        rates=(1, 2, 3, 4, 5, 6),
        slots=(2, 3, 4),
        threshold=3.0,
    ),
}


def policies() -> list[str]:
    """``off`` and whatever drain policies the engine configuration accepts."""
    from jlora import config

    return ["off", *getattr(config, "DRAIN_POLICIES", ())]


def skew_label(alpha: float) -> str:
    return "uniform" if alpha == 0 else f"zipf {alpha:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", choices=sorted(SCENARIOS))
    parser.add_argument("--sim-cost-model", help="default: the shipped one of the preset")
    parser.add_argument("--rates", type=float, nargs="+")
    parser.add_argument("--slots", type=int, nargs="+")
    parser.add_argument(
        "--skews", type=float, nargs="+", default=[0.0, 1.5], help="Zipf alphas; 0 = uniform"
    )
    parser.add_argument("--policies", nargs="+", help="default: off and every drain policy")
    parser.add_argument("--threshold", type=float, help="lora_drain_wait_threshold, seconds")
    parser.add_argument("--num-prompts", type=int)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--out-dir", default=str(ROOT / "experiments/results"))
    args = parser.parse_args()

    import numpy as np

    from jlora.bench.driver import run_workload
    from jlora.bench.metrics import compute_metrics
    from jlora.bench.workload import make_random_workload
    from jlora.config import EngineConfig
    from jlora.sim import calibrated_setting, load_cost_model, make_sim_engine

    sc = dict(SCENARIOS[args.model])
    for key in ("rates", "slots", "threshold", "num_prompts"):
        if getattr(args, key) is not None:
            sc[key] = getattr(args, key)
    names = [f"a{i}" for i in range(len(sc["ranks"]))]
    base = EngineConfig(
        model=args.model,
        lora_paths={n: f"dummy:{r}" for n, r in zip(names, sc["ranks"], strict=True)},
    )
    cost = load_cost_model(base, args.sim_cost_model)
    base = dataclasses.replace(base, **calibrated_setting(cost))
    pols = args.policies or policies()
    known = policies()
    for p in pols:
        if p not in known:
            raise SystemExit(f"policy {p!r} is not one of {', '.join(known)}")

    rows = []
    t_all = time.perf_counter()
    for alpha in args.skews:
        for rate in sc["rates"]:
            for seed in args.seeds:
                work = make_random_workload(
                    num_prompts=sc["num_prompts"],
                    request_rate=rate,
                    input_len=sc["input_len"],
                    output_len=sc["output_len"],
                    range_ratio=0.0,
                    vocab_size=base.model_config().vocab_size,
                    lora_names=names,
                    distribution="uniform" if alpha == 0 else "skewed",
                    zipf_alpha=alpha or 1.0,
                    seed=seed,
                )
                for slots in sc["slots"]:
                    for policy in pols:
                        drain = (
                            {}
                            if policy == "off"
                            else {
                                "lora_drain_wait_threshold": sc["threshold"],
                                "lora_drain_policy": policy,
                            }
                        )
                        config = dataclasses.replace(base, max_loras_per_batch=slots, **drain)
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")  # slots other than calibrated
                            engine = make_sim_engine(config, cost=cost)
                        t = time.perf_counter()
                        result = run_workload(engine, work, progress=False)
                        cpu = time.perf_counter() - t
                        m = compute_metrics(result.outputs, result.duration)
                        rows.append(
                            dict(
                                skew=alpha,
                                rate=rate,
                                seed=seed,
                                slots=slots,
                                policy=policy,
                                cpu_s=cpu,
                                pauses=sum(o.num_pauses for o in result.outputs),
                                loads=engine.adapters.slot_loads,
                                **{
                                    k: m[k]
                                    for k in (
                                        "median_ttft_ms",
                                        "p99_ttft_ms",
                                        "median_e2e_latency_ms",
                                        "p99_e2e_latency_ms",
                                        "output_throughput",
                                    )
                                },
                            )
                        )
                        r = rows[-1]
                        print(
                            f"{skew_label(alpha):9s} rate {rate:5g} slots {slots} {policy:8s} "
                            f"TTFT median {r['median_ttft_ms']:9.1f} P99 {r['p99_ttft_ms']:9.1f}"
                            f" ms  ({cpu:.2f} s)",
                            flush=True,
                        )
    total = time.perf_counter() - t_all
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_table(out / "sweep_policies.md", rows, args, sc, cost, total, len(names))
    for which in ("median", "p99"):
        _plot(out / f"sweep_policies_{which}_ttft.png", rows, which, args, sc, pols, np)
    print(f"{len(rows)} points in {total:.0f} s; wrote {out}/sweep_policies.md and plots")


def _write_table(path, rows, args, sc, cost, total, num_adapters) -> None:
    import jax

    cal = cost.info.get("calibrated_with") or {}
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    lines = [
        "# Drain policies swept through the simulator",
        "",
        f"- date: {datetime.date.today().isoformat()}; simulated on a CPU; jax {jax.__version__}",
        f"- cost model: {cost.info.get('device')} / {cost.info.get('model')}, calibrated "
        f"{cost.info.get('date')} with {cal.get('max_loras_per_batch')} slots (other slot "
        "counts reuse its step times: the extra slot buffers' cost is not modeled)",
        f"- scenario: `{args.model}`, {num_adapters} adapters (ranks "
        f"{', '.join(map(str, sc['ranks']))}), {sc['num_prompts']} requests per point, Poisson "
        f"arrivals, prompts uniform in [1, {sc['input_len']}], outputs in [1, "
        f"{sc['output_len']}]; drain threshold {sc['threshold']:g} s; seeds {args.seeds}",
        f"- command: `{command}` ({len(rows)} points in {total:.0f} s of CPU)",
        "",
        "| skew | rate (req/s) | slots | policy | TTFT median (ms) | TTFT P99 (ms) | E2E median "
        "(ms) | E2E P99 (ms) | output tok/s | slot loads | pauses |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {skew_label(r['skew'])} | {r['rate']:g} | {r['slots']} | {r['policy']} | "
            f"{r['median_ttft_ms']:.1f} | {r['p99_ttft_ms']:.1f} | "
            f"{r['median_e2e_latency_ms']:.1f} | {r['p99_e2e_latency_ms']:.1f} | "
            f"{r['output_throughput']:.0f} | {r['loads']} | {r['pauses']} |"
        )
    path.write_text("\n".join(lines) + "\n")


def _plot(path, rows, which, args, sc, pols, np) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    skews, slots = args.skews, sc["slots"]
    fig, axes = plt.subplots(
        len(skews), len(slots), figsize=(4 * len(slots), 3.2 * len(skews)), squeeze=False
    )
    key = f"{which}_ttft_ms"
    for i, alpha in enumerate(skews):
        for j, s in enumerate(slots):
            ax = axes[i][j]
            for policy in pols:
                pts = [
                    r
                    for r in rows
                    if r["skew"] == alpha and r["slots"] == s and r["policy"] == policy
                ]
                rates = sorted({r["rate"] for r in pts})
                vals = [np.mean([r[key] for r in pts if r["rate"] == x]) / 1e3 for x in rates]
                ax.plot(rates, vals, marker="o", label=policy)
            ax.set_yscale("log")
            ax.set_title(f"{skew_label(alpha)}, {s} slots", fontsize=9)
            ax.set_xlabel("request rate (req/s)")
            ax.set_ylabel(f"{'P99' if which == 'p99' else 'median'} TTFT (s)")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{'P99' if which == 'p99' else 'Median'} TTFT by drain policy ({args.model})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
