"""The seed's experiment (SGLang PR #17913), reproduced with jlora.

Llama-3.1-8B preset with dummy weights, bfloat16; six dummy adapters of ranks 8, 16, 16, 32, 64, 8
on all seven modules; 200 prompts, input and output lengths uniform in [1, 512] (range ratio 0.0,
as the seed's run); max loaded 6, per batch 3; Poisson arrivals at each ``--rates``; the drainer
off, SGLang's drainer at the seed's 3 s, and each of our policies at ``--thresholds``.

    PYTHONPATH=. python experiments/seed_repro.py --rates 4 8 \
        --out experiments/results/seed_repro.md

``--settings`` picks a subset (e.g. ``off sglang@3 preempt@0.5``); ``--backend sim`` runs the same
workload through the simulator. Writes our table beside the seed's A100 table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jlora.bench.cli import RunnerCache, run_bench
from jlora.bench.config import BenchConfig
from jlora.bench.results_file import run_header, write_results_file
from jlora.bench.seed import SEED_RANKS, seed_engine_config

SEED_A100 = {  # the seed's own table: SGLang main vs the drainer PR at 3 s (A100, rate 4)
    "mean_e2e_latency_ms": (12060.28, 8502.00),
    "median_e2e_latency_ms": (7051.01, 8069.63),
    "p90_e2e_latency_ms": (32927.73, 15974.35),
    "p99_e2e_latency_ms": (45870.02, 19969.72),
    "mean_ttft_ms": (7910.15, 4279.28),
    "median_ttft_ms": (83.30, 3728.36),
    "p99_ttft_ms": (39550.49, 12081.23),
}
ROWS = [
    ("Mean E2E ms", "mean_e2e_latency_ms"),
    ("Median E2E ms", "median_e2e_latency_ms"),
    ("P90 E2E ms", "p90_e2e_latency_ms"),
    ("P99 E2E ms", "p99_e2e_latency_ms"),
    ("Mean TTFT ms", "mean_ttft_ms"),
    ("Median TTFT ms", "median_ttft_ms"),
    ("P99 TTFT ms", "p99_ttft_ms"),
    ("Output tok/s", "output_throughput"),
]


def all_settings(thresholds: list[float]) -> list[str]:
    names = ["off", "sglang@3"]
    for policy in ("sglang", "reserve", "preempt", "fair"):
        names += [f"{policy}@{t:g}" for t in thresholds if not (policy == "sglang" and t == 3)]
    return names


def to_compare(name: str) -> str:
    if name == "off":
        return "off"
    policy, _, threshold = name.partition("@")
    return f"{name}:lora_drain_wait_threshold={threshold},lora_drain_policy={policy}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--rates", type=float, nargs="+", default=[4.0, 8.0])
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 1.0, 3.0])
    p.add_argument("--settings", nargs="+", default=None, help="subset, e.g. off sglang@3")
    p.add_argument("--num-prompts", type=int, default=200)
    p.add_argument("--backend", default="engine", choices=["engine", "sim"])
    p.add_argument(
        "--out",
        default=None,
        help="results file: its Current rewritten, a Log entry added on top of its Log",
    )
    p.add_argument("--log", default=None, help="the Log entry's verdict (default: the claim)")
    p.add_argument("--json", default=None, help="also append the raw metrics here")
    p.add_argument("--tensorboard-dir", default=None)
    p.add_argument(
        "--output-file", default=None, help="SGLang-style JSON line per setting, as each ends"
    )
    p.add_argument(
        "--render",
        nargs="+",
        default=None,
        help="no run: render --out from --json files of earlier runs (e.g. one per rate)",
    )
    args = p.parse_args()
    settings = args.settings or all_settings(args.thresholds)
    if args.render:
        tables: dict[float, dict] = {}
        for path in args.render:
            for line in Path(path).read_text().splitlines():
                record = json.loads(line)
                if "setting" in record:  # an --output-file line: one setting of one rate
                    rate = record["bench_config"]["request_rate"]
                    tables.setdefault(rate, {})[record["setting"]] = record
                else:  # a --json line: every setting of one rate
                    tables.setdefault(record["rate"], {}).update(record["metrics"])
        if not args.settings:  # every setting found, in the canonical order
            found = {name for metrics in tables.values() for name in metrics}
            settings = [s for s in all_settings(sorted({0.5, 1.0, 3.0, *args.thresholds}))]
            settings = [s for s in settings if s in found]
            settings += sorted(found - set(settings))
        tables = dict(sorted(tables.items()))
        print(render(args, settings, tables))
        if args.out:
            write_seed_results(args.out, args, settings, tables, raw=args.render)
        return
    engine = seed_engine_config(args.model)
    tables = {}
    runners = RunnerCache()  # every rate's settings share one device runner
    for rate in args.rates:
        bench = BenchConfig(
            backend=args.backend,
            num_prompts=args.num_prompts,
            request_rate=rate,
            random_input_len=512,
            random_output_len=512,
            random_range_ratio=0.0,
            compare=tuple(to_compare(s) for s in settings),
            tensorboard_dir=None
            if not args.tensorboard_dir
            else f"{args.tensorboard_dir}/r{rate:g}",
            disable_tqdm=True,
            output_file=args.output_file,
        )
        out = run_bench(engine, bench, runners=runners)
        tables[rate] = out["metrics"]
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({"rate": rate, "metrics": out["metrics"]}) + "\n")
    print(render(args, settings, tables))
    if args.out:
        write_seed_results(args.out, args, settings, tables, raw=[args.json] if args.json else [])


def claim(settings: list[str], tables: dict[float, dict]) -> list[str]:
    """One line per rate: each setting's P99 TTFT and throughput against the first setting's."""
    lines = []
    for rate, metrics in tables.items():
        names = [s for s in settings if s in metrics]
        if len(names) < 2:
            continue
        base = metrics[names[0]]
        cells = []
        for n in names[1:]:
            ttft = metrics[n]["p99_ttft_ms"] / base["p99_ttft_ms"] if base["p99_ttft_ms"] else 0
            tput = (
                metrics[n]["output_throughput"] / base["output_throughput"]
                if base["output_throughput"]
                else 0
            )
            cells.append(f"`{n}` {ttft:.2f}x / {tput:.2f}x")
        lines.append(
            f"rate {rate:g}: P99 TTFT / throughput against `{names[0]}`: " + ", ".join(cells)
        )
    return lines


def write_seed_results(
    out, args, settings: list[str], tables: dict[float, dict], raw: list[str]
) -> None:
    """Write ``out``: ``## Current`` (header, workload, the claim of :func:`claim`) over the old
    one, and a Log entry (``--log``, default the claim) with the tables of :func:`render` on top
    of the file's Log, which is kept."""
    claims = claim(settings, tables) or ["no setting to compare"]
    current = [
        "# The seed's experiment, reproduced",
        "",
        "## Current",
        "",
        *run_header().lines(),
        *[f"- claim: {c}" for c in claims],
        "- raw data: " + (", ".join(f"`{r}`" for r in raw) or "the tables of the newest Log entry"),
        *(
            [
                "- rendered (`--render`): the header is the renderer's; the raw data's run "
                "measured it"
            ]
            if args.render
            else []
        ),
        "",
    ]
    body = render(args, settings, tables, heading="####")
    write_results_file(out, "\n".join(current) + "\n", args.log or "; ".join(claims), body=body)


def render(args, settings: list[str], tables: dict[float, dict], heading: str = "##") -> str:
    """The run's tables, one per rate beside the seed's A100 figures, under ``heading``."""
    lines = [
        f"- backend: {args.backend}; workload: `{args.model}` preset, dummy weights, bfloat16; "
        "6 dummy adapters of ranks "
        f"{', '.join(map(str, SEED_RANKS))} on all seven modules; {args.num_prompts} prompts, "
        "input and output lengths uniform in [1, 512]; max loaded 6, per batch 3",
        "",
    ]
    for rate, metrics in tables.items():
        names = [s for s in settings if s in metrics]
        lines += [f"{heading} Rate {rate:g} req/s", ""]
        head = "| Metric | seed main (A100, rate 4) | seed PR @3 s (A100) | " + " | ".join(names)
        lines += [head + " |", "| --- |" + " ---: |" * (2 + len(names))]
        for label, key in ROWS:
            seed = SEED_A100.get(key, (float("nan"), float("nan")))
            cells = []
            for n in names:
                v = metrics[n][key]
                base = metrics[names[0]][key]
                rel = f" ({v / base:.2f}x)" if n != names[0] and base else ""
                cells.append(f"{v:.0f}{rel}" if key != "output_throughput" else f"{v:.0f}")
            lines.append(f"| {label} | {seed[0]:.0f} | {seed[1]:.0f} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
