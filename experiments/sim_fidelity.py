"""Simulator fidelity: calibrate the cost model on this device, then run the same workloads through
the real engine and through the simulator and compare median and P99 TTFT and E2E.

    PYTHONPATH=. python experiments/sim_fidelity.py --model llama-3.1-8b          # on the H100
    JAX_PLATFORMS=cpu .venv/bin/python experiments/sim_fidelity.py --model tiny --clock cpu

One engine is built and compiled (the setting of ``calibrate_costs.SETUPS``); calibration writes
the cost model (``jlora/sim/cost_models/<device>__<model>.json``) and its summary, unless
``--cost-model`` gives one. Each workload then runs ``--real-runs`` times on the real engine (a
fresh scheduler, adapter pool and page pool each time, on the same compiled runner), so the spread
of the real runs shows the noise floor, and once in the simulator (with ``--cost-model``, one
unmeasured run first warms the engine up, as calibration otherwise does). Two workloads:

* ``burst``: every request at time 0. The scheduler's decisions then depend on its state alone, so
  the real engine and the simulator run the same steps (checked), and the difference is the cost
  model's.
* ``poisson``: the seed's shape (Poisson arrivals, six adapters over three slots, uniform lengths).
  Where arrivals fall between steps now matters, so the two runs take different (equally valid)
  schedules; the comparison is of the distributions.

Beside the four compared metrics the report gives the TTFT's P25, P75 and the share of requests
served within a second (a bimodal TTFT can put its median on the gap between its modes), the
simulated values against the mean of the real runs, and the real runs' own range. ``--details``
writes every run's per-request TTFTs (JSON).

Writes ``experiments/results/sim_fidelity.md`` (or ``--report``).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import statistics
import time
from pathlib import Path

import jlora.sim.calibration_run as cc
from jlora.bench.results_file import run_header, write_results_file

# Per model: (requests, rate, longest prompt and output) of each workload.
WORKLOADS = {
    "tiny": {"burst": (64, float("inf"), 256, 128), "poisson": (200, 20.0, 128, 256)},
    "llama-3.1-8b": {"burst": (128, float("inf"), 512, 256), "poisson": (120, 6.0, 512, 512)},
}


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(cc.ROOT)) if path.is_relative_to(cc.ROOT) else str(path)


def main() -> None:
    parser = cc.build_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--cost-model", help="use this cost model instead of calibrating")
    parser.add_argument("--real-runs", type=int, default=2, help="real runs of each workload")
    parser.add_argument("--workloads", nargs="+", default=["burst", "poisson"])
    parser.add_argument(
        "--report",
        default=str(cc.ROOT / "experiments/results/sim_fidelity.md"),
        help="results file: its Current rewritten, a Log entry added on top of its Log",
    )
    parser.add_argument("--log", default=None, help="the Log entry's verdict (default: the claim)")
    parser.add_argument("--details", help="write each run's per-request TTFTs (ms) here, JSON")
    args = parser.parse_args()

    from jlora.bench.driver import run_workload
    from jlora.bench.workload import make_random_workload
    from jlora.engine import Engine
    from jlora.sim import CostModel, make_sim_engine
    from jlora.sim.fidelity import COMPARED, DISTRIBUTION, compare, ttfts_ms

    s = cc.setup(args)
    t_start = time.perf_counter()
    clock = cc.make_clock(args)
    base = cc.build_engine(args, s, clock)
    if args.cost_model:
        cost, cost_path = CostModel.load_file(args.cost_model), Path(args.cost_model)
    else:
        cost = cc.calibrate_engine(base, args, s, clock)
        cost_path, _ = cc.write_outputs(cost, args, args.clock)
    config = dataclasses.replace(
        base.config, max_total_tokens=(base.pages.num_pages - 1) * base.config.page_size
    )
    names = sorted(config.lora_paths)
    warm = not args.cost_model  # calibration served a burst: the engine is warm
    gc.collect()
    gc.freeze()  # what start-up built is never collected: collections stay short, as in a server
    sections = []
    worst_of: dict[str, float] = {}  # per workload: the largest error against the real runs' mean
    details: dict[str, dict[str, list[float]]] = {}

    def real_engine() -> Engine:
        """A fresh scheduler, adapter pool and page pool on the compiled runner."""
        return Engine(
            config,
            runner=base.runner,
            clock=cc.make_clock(args),
            adapter_loader=lambda name, path: base.adapters.get(name),
        )

    for wname in args.workloads:
        n, rate, in_len, out_len = WORKLOADS[args.model][wname]
        work = make_random_workload(
            num_prompts=n,
            request_rate=rate,
            input_len=in_len,
            output_len=out_len,
            range_ratio=0.0,
            vocab_size=base.model_config.vocab_size,
            lora_names=names,
            seed=7,
        )
        reals = []
        if not warm:  # first runs touch fresh memory (the KV cache's pages...): not measured
            run_workload(real_engine(), work, progress=False, desc="warm-up")
            print(f"{wname}: warm-up run done", flush=True)
            warm = True
        for i in range(args.real_runs):
            engine = real_engine()
            gc.collect()
            t = time.perf_counter()
            reals.append(run_workload(engine, work, progress=False, desc=f"real {i}"))
            print(f"{wname}: real run {i} took {time.perf_counter() - t:.1f} s", flush=True)
        sim_engine = make_sim_engine(config, cost=cost)
        t = time.perf_counter()
        sim = run_workload(sim_engine, work, progress=False, desc="sim")
        sim_s = time.perf_counter() - t
        same = all(
            [(x.kind, x.batch, x.tokens) for x in r.steps]
            == [(x.kind, x.batch, x.tokens) for x in sim.steps]
            for r in reals
        )
        rows = [compare(r, sim) for r in reals]  # per metric: (real, simulated, error)
        details[wname] = {f"real {i}": ttfts_ms(r) for i, r in enumerate(reals)}
        details[wname]["simulated"] = ttfts_ms(sim)
        lines = [
            f"#### {wname}: {n} requests, rate {rate:g}/s, prompts and outputs uniform in "
            f"[1, {in_len}] / [1, {out_len}], adapters {', '.join(names)} uniformly",
            "",
            f"Simulated in {sim_s:.2f} s of CPU. Same steps as every real run: "
            f"{'yes' if same else 'no (arrivals fell differently between steps)'}.",
            "",
            "| metric | "
            + " | ".join(f"real {i}" for i in range(len(reals)))
            + " | simulated | sim vs real (each) | sim vs mean of real | real range |",
            "| --- | " + " | ".join("---:" for _ in reals) + " | ---: | ---: | ---: | ---: |",
        ]
        vs_mean = {}
        for key in (*COMPARED, *DISTRIBUTION, "duration_s", "steps"):
            values = [r[key][0] for r in rows]
            mean = statistics.fmean(values)
            errs = ", ".join(f"{100 * r[key][2]:+.1f}%" for r in rows)
            sim_value = rows[0][key][1]
            spread = max(values) / min(values) - 1 if min(values) > 0 else float("nan")
            vs_mean[key] = sim_value / mean - 1 if mean else float("nan")
            lines.append(
                f"| {key} | {' | '.join(f'{v:.1f}' for v in values)} | {sim_value:.1f} | {errs} | "
                f"{100 * vs_mean[key]:+.1f}% | {100 * spread:.0f}% |"
            )
        worst = max(abs(r[k][2]) for r in rows for k in COMPARED)
        worst_mean = max(abs(vs_mean[k]) for k in COMPARED)
        worst_of[wname] = worst_mean
        lines += [
            "",
            f"Largest error on the four compared metrics: {100 * worst:.1f}% against a single "
            f"real run, {100 * worst_mean:.1f}% against the mean of the {len(reals)} real runs. "
            "`real range`: largest over smallest real run, - 1 (the real runs' own spread).",
            "",
        ]
        sections.append("\n".join(lines))
        print(sections[-1], flush=True)

    if args.details:
        Path(args.details).parent.mkdir(parents=True, exist_ok=True)
        Path(args.details).write_text(json.dumps(details))
    cal = cost.info.get("calibrated_with", {})
    setting = [
        f"- model: `{args.model}` preset, dummy weights, {config.dtype}; "
        f"{len(names)} adapters (ranks {', '.join(str(r) for r in s['ranks'])}), "
        f"{config.max_loras_per_batch} slots, max rank {config.max_lora_rank}, "
        f"context {config.context_length}, KV cache {config.max_total_tokens} tokens",
        f"- cost model: `{_shown(cost_path)}` ({cost.info.get('device')}, calibrated "
        f"{cost.info.get('date')}"
        + (
            f", buckets {cal.get('prefill_token_buckets')} / {cal.get('decode_batch_buckets')}"
            if cal
            else ""
        )
        + ")",
    ]
    claim = (
        f"on `{args.model}`, the simulator's four compared metrics are within "
        + ", ".join(f"{100 * w:.1f}% ({wname})" for wname, w in worst_of.items())
        + f" of the mean of {args.real_runs} real runs"
    )
    current = [
        "# Simulator fidelity: the real engine against the simulator",
        "",
        "## Current",
        "",
        *run_header().lines(),
        f"- clock: {args.clock}",
        *setting,
        f"- claim: {claim}",
        "- raw data: "
        + (f"`{_shown(Path(args.details))}`, " if args.details else "")
        + "the tables of the newest Log entry",
        "",
    ]
    body = [
        f"- took {time.perf_counter() - t_start:.0f} s in all",
        "",
        "Compared: median and P99 of TTFT and E2E (ms), as `jlora bench` reports them; the "
        "error is simulated / real - 1.",
        "",
        *sections,
    ]
    write_results_file(
        args.report, "\n".join(current) + "\n", args.log or claim, body="\n".join(body)
    )
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
