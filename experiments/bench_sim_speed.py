"""How fast the simulator runs on this CPU: the seed workload, and 100,000 requests over 100
adapters, through ``make_sim_engine`` and the benchmark driver (the real engine, scheduler and
adapter pool, on a virtual clock).

    .venv/bin/python experiments/bench_sim_speed.py                     # both workloads
    .venv/bin/python experiments/bench_sim_speed.py --only seed

Writes ``experiments/results/sim_speed.md`` (or ``--out``): per workload, the CPU seconds of the
simulation (drawing the workload not included), steps, tokens, and what the run simulated.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

from jlora.bench.results_file import REPO_ROOT, run_header, write_results_file

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# name: (requests, rate, adapters, slots, longest prompt and output, adapter distribution)
WORKLOADS = {
    "seed": (200, 4.0, 6, 3, 512, "uniform"),
    "scale": (100_000, 3.0, 100, 8, 512, "skewed"),
    "scale-short": (100_000, 12.0, 100, 8, 128, "skewed"),
}
RANKS = (8, 16, 16, 32, 64, 8)


def run_one(name: str, args) -> dict:
    import numpy as np

    from jlora.bench.driver import run_workload
    from jlora.bench.workload import make_random_workload
    from jlora.config import EngineConfig
    from jlora.sim import make_sim_engine

    n, rate, num_adapters, slots, length, dist = WORKLOADS[name]
    if args.num_prompts is not None:
        n = args.num_prompts
    names = [f"a{i}" for i in range(num_adapters)]
    config = EngineConfig(
        model=args.model,
        lora_paths={a: f"dummy:{RANKS[i % len(RANKS)]}" for i, a in enumerate(names)},
        max_loras_per_batch=slots,
        max_lora_rank=64,
        context_length=2 * length,
        max_running_requests=128,
    )
    t = time.perf_counter()
    work = make_random_workload(
        num_prompts=n,
        request_rate=rate,
        input_len=length,
        output_len=length,
        range_ratio=0.0,
        vocab_size=config.model_config().vocab_size,
        lora_names=names,
        distribution=dist,
        seed=1,
    )
    draw_s = time.perf_counter() - t
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = make_sim_engine(config, args.sim_cost_model)
    cost_info = engine.runner.cost.info
    t = time.process_time()  # CPU seconds, as the table says (a busy machine inflates wall time)
    result = run_workload(engine, work, progress=False)
    sim_s = time.process_time() - t
    ttft = np.array([o.ttft for o in result.outputs])
    tokens = sum(len(o.token_ids) for o in result.outputs)
    row = {
        "name": name,
        "requests": n,
        "rate": rate,
        "adapters": num_adapters,
        "slots": slots,
        "length": length,
        "distribution": dist,
        "draw_s": draw_s,
        "sim_s": sim_s,
        "steps": len(result.steps),
        "tokens": tokens,
        "simulated_s": result.duration,
        "median_ttft_s": float(np.median(ttft)),
        "p99_ttft_s": float(np.percentile(ttft, 99)),
        "cost_model": f"{cost_info.get('device')}__{cost_info.get('model')}",
        "note": cost_info.get("note"),
    }
    print(
        f"{name}: {n} requests simulated in {sim_s:.2f} s ({len(result.steps)} steps, "
        f"{tokens} tokens, {result.duration:.0f} s simulated; drawing took {draw_s:.1f} s)",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--sim-cost-model", help="default: the shipped one of the preset")
    parser.add_argument("--only", choices=sorted(WORKLOADS), help="run one workload")
    parser.add_argument("--num-prompts", type=int, help="override the workload's request count")
    parser.add_argument(
        "--out",
        default=str(REPO_ROOT / "experiments/results/sim_speed.md"),
        help="results file: its Current rewritten, a Log entry added on top of its Log",
    )
    parser.add_argument("--log", default=None, help="the Log entry's verdict (default: the claim)")
    args = parser.parse_args()

    rows = [run_one(name, args) for name in ([args.only] if args.only else WORKLOADS)]
    write_speed_results(args.out, rows, args)


def write_speed_results(out, rows: list[dict], args) -> None:
    """Write ``out``: ``## Current`` (header, claim against the 60 s target for the largest
    workload) over the old one, and a Log entry (``--log``, default the claim) with the table on
    top of the file's Log, which is kept."""
    largest = max(rows, key=lambda r: r["requests"])
    if largest["requests"] < 100_000:
        verdict = "not tested: fewer requests than the target's"
    else:
        verdict = "met" if largest["sim_s"] < 60 else "not met"
    claim = (
        f"{largest['requests']:,} requests (`{largest['name']}`) simulate in "
        f"{largest['sim_s']:.2f} s of CPU (target: under 60 s at 100,000 requests, {verdict})"
    )
    current = [
        "# Simulator speed",
        "",
        "## Current",
        "",
        *run_header().lines(),
        f"- model: `{args.model}`; cost model: {rows[0]['cost_model']}"
        + (f" (`{args.sim_cost_model}`)" if args.sim_cost_model else " (shipped)"),
        f"- claim: {claim}",
        "- raw data: the table of the newest Log entry (CPU seconds of `run_workload` on "
        "`make_sim_engine`)",
        "",
    ]
    lines = [
        *([f"- note on the cost model: {rows[0]['note']}", ""] if rows[0].get("note") else []),
        "CPU seconds of the simulation (``run_workload`` on ``make_sim_engine``), without "
        "drawing the workload. Lengths uniform in [1, longest] for prompts and outputs.",
        "",
        "| workload | requests | adapters / slots | rate (req/s) | longest | adapters drawn "
        "| simulation (s) | steps | tokens | us / step | simulated (s) | TTFT median / P99 (s) |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['requests']} | {r['adapters']} / {r['slots']} | {r['rate']:g} "
            f"| {r['length']} | {r['distribution']} | {r['sim_s']:.2f} | {r['steps']} | "
            f"{r['tokens']} | {1e6 * r['sim_s'] / r['steps']:.0f} | {r['simulated_s']:.0f} | "
            f"{r['median_ttft_s']:.2f} / {r['p99_ttft_s']:.1f} |"
        )
    write_results_file(out, "\n".join(current) + "\n", args.log or claim, body="\n".join(lines))
    print("\n".join(current + lines))


if __name__ == "__main__":
    main()
