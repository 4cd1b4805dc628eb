"""The seed's workload through the simulator with a cost model's load terms before and after issue
#17 (asynchronous slot loads), prefetch off and on: the virtual time spent in slot loads and the
latencies it moves.

    JAX_PLATFORMS=cpu .venv/bin/python experiments/sim_slot_loads.py --model tiny \
        --before BASE:jlora/sim/cost_models/cpu__tiny.json \
        --after jlora/sim/cost_models/cpu__tiny.json
    PYTHONPATH=. python experiments/sim_slot_loads.py      # the H100 model (after its re-fit)

The workload and engine setting are the seed's (``experiments/seed_repro.py``: six dummy adapters
of ranks 8, 16, 16, 32, 64, 8, 200 prompts of lengths uniform in [1, 512], Poisson arrivals at
``--rate``, max loaded 6, per batch 3) on ``--model``. ``--before`` / ``--after``: cost-model
files, or ``COMMIT:PATH`` for a file as it was at a commit (``BASE`` is the commit before #17,
``bac44e0``). Per setting: slot loads, the virtual seconds they held the host loop (``load``) and
that steps waited for them to land (``load_wait``), and TTFT / E2E latencies. Writes
``experiments/results/sim_slot_loads.md`` (``## Current`` replaced, ``## Log`` kept).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import warnings
from pathlib import Path

from jlora.bench.results_file import REPO_ROOT as ROOT
from jlora.bench.results_file import run_header, write_results_file

BASE = "bac44e0"  # the commit before issue #17


def read_cost_model(spec: str):
    from jlora.sim import CostModel

    if ":" in spec and not Path(spec).exists():
        commit, path = spec.split(":", 1)
        commit = BASE if commit == "BASE" else commit
        text = subprocess.run(
            ["git", "show", f"{commit}:{path}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return CostModel.from_json(json.loads(text), spec)
    return CostModel.load_file(spec)


def run_one(model: str, cost, prefetch: bool, drain: float, rate: float, n: int) -> dict:
    from jlora.bench.driver import run_workload
    from jlora.bench.metrics import compute_metrics
    from jlora.bench.seed import seed_engine_config
    from jlora.bench.workload import make_random_workload
    from jlora.sim import make_sim_engine

    config = seed_engine_config(
        model,
        lora_prefetch=prefetch,
        lora_drain_wait_threshold=drain,
        lora_drain_policy="preempt",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a cost model calibrated at another setting
        engine = make_sim_engine(config, cost=cost)
    work = make_random_workload(
        num_prompts=n,
        request_rate=rate,
        input_len=512,
        output_len=512,
        range_ratio=0.0,
        vocab_size=engine.model_config.vocab_size,
        lora_names=list(config.lora_paths),
        seed=0,
    )
    result = run_workload(engine, work, progress=False)
    metrics = compute_metrics(result.outputs, result.duration)
    busy, steps = engine.runner.busy, engine.runner.steps
    return {
        "slot_loads": steps["load"],
        "load_s": busy["load"],
        "load_wait_s": busy["load_wait"],
        "duration_s": result.duration,
        **{k: metrics[k] for k in ("median_ttft_ms", "p99_ttft_ms", "p99_e2e_latency_ms")},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--before", default="BASE:jlora/sim/cost_models/h100__llama-3.1-8b.json")
    p.add_argument("--after", default="jlora/sim/cost_models/h100__llama-3.1-8b.json")
    p.add_argument("--rate", type=float, default=4.0)
    p.add_argument("--num-prompts", type=int, default=200)
    p.add_argument("--drain", type=float, nargs="+", default=[0.0, 3.0], help="preempt at (0: off)")
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "sim_slot_loads.md"))
    args = p.parse_args(argv)

    rows = []
    for label, spec in (("before", args.before), ("after", args.after)):
        cost = read_cost_model(spec)
        for drain in args.drain:
            for prefetch in (False, True):
                r = run_one(args.model, cost, prefetch, drain, args.rate, args.num_prompts)
                rows.append({"cost": label, "drain": drain, "prefetch": prefetch, **r})
                print(json.dumps(rows[-1]), flush=True)
    table = [
        "| load terms | preempt at | prefetch | slot loads | load (ms) | load wait (ms) | "
        "TTFT P50 (ms) | TTFT P99 (ms) | E2E P99 (ms) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        table.append(
            f"| {r['cost']} | {r['drain'] or 'off'} | {'on' if r['prefetch'] else 'off'} | "
            f"{r['slot_loads']} | {1e3 * r['load_s']:.1f} | {1e3 * r['load_wait_s']:.1f} | "
            f"{r['median_ttft_ms']:.0f} | {r['p99_ttft_ms']:.0f} | {r['p99_e2e_latency_ms']:.0f} |"
        )
    out = Path(args.out)
    first = next(r for r in rows if not r["prefetch"] and r["cost"] == "before")
    last = next(r for r in rows if not r["prefetch"] and r["cost"] == "after")
    verdict = (
        f"{args.model}, rate {args.rate:g}: virtual time in slot loads (host + waits) "
        f"{1e3 * (first['load_s'] + first['load_wait_s']):.1f} ms -> "
        f"{1e3 * (last['load_s'] + last['load_wait_s']):.1f} ms (drainer off, prefetch off)"
    )
    lines = [
        "# The seed's workload in the simulator: slot-load time before and after #17",
        "",
        "## Current",
        "",
        *run_header().lines(),
        "- simulator: virtual time; the cost models' own devices, see their summaries",
        f"- `before`: `{args.before}`; `after`: `{args.after}`",
        f"- {verdict}",
        "",
        *table,
        "",
    ]
    write_results_file(out, "\n".join(lines) + "\n", verdict)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
