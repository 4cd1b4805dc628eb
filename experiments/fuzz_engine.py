"""The long randomized run of issue #19: ``tests/test_randomized.py`` with many operations per
configuration, its figures written to ``experiments/results/reliability.md``.

    JAX_PLATFORMS=cpu .venv/bin/python experiments/fuzz_engine.py --ops 2400 --seed 1

The run is the test suite's own (the harness is ``tests/fuzz_engine.py``); this script starts it in
a pytest process with ``JLORA_FUZZ_OPS`` / ``JLORA_FUZZ_SEED`` / ``JLORA_FUZZ_REPORT`` set, reads
back one JSON line per configuration, and renders the table (operations, requests, finish reasons,
greedy outputs checked against the request alone, violations). ``--log`` adds a log entry with a
verdict of your own; the "Current" section is rewritten each time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jlora.bench.results_file import run_header, write_results_file

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results" / "reliability.md"
RAW = ROOT / "experiments" / "results" / "reliability" / "runs.jsonl"


def run(ops: int, seed: int, select: str | None) -> tuple[list[dict], int, float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.jsonl"
        env = {
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            "JLORA_FUZZ_OPS": str(ops),
            "JLORA_FUZZ_SEED": str(seed),
            "JLORA_FUZZ_REPORT": str(report),
            "PYTHONPATH": str(ROOT),
        }
        cmd = [sys.executable, "-m", "pytest", "tests/test_randomized.py", "-q"]
        cmd += ["-p", "no:cacheprovider", "-k", select or "finds_nothing"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        lines = report.read_text().splitlines() if report.exists() else []
        rows = [json.loads(line) for line in lines]
    return rows, proc.returncode, wall, proc.stdout[-3000:]


def render(rows: list[dict], ops: int, seed: int, wall: float, rc: int, command: str) -> str:
    total_ops = sum(r["ops"] for r in rows)
    total_req = sum(r["requests"] for r in rows)
    found = sum(len(r["violations"]) for r in rows)
    lines = [
        "# Reliability: the randomized run (issue #19)",
        "",
        "## Current",
        "",
        *run_header(command=command).lines()[:1],
        f"- claim: {total_ops:,} operations and {total_req:,} requests over {len(rows)} "
        f"configurations (seed {seed}, {ops} operations per configuration, the Pallas one "
        f"fewer) find {found} violations; pytest exit status {rc}; {wall / 60:.1f} min",
        f"- command: `{command}`",
        f"- raw data: `{RAW.relative_to(ROOT)}` (one JSON line per configuration)",
        "- what is checked: `tests/fuzz_engine.py` (module docstring); `make test` runs the same "
        "configurations at 100 operations each (`tests/test_randomized.py`)",
        "",
        "| configuration | operations | requests | greedy checked alone | finish reasons "
        "| violations | seconds |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["finish_reasons"].items()))
        lines.append(
            f"| {r['config']} | {r['ops']} | {r['requests']} | {r['greedy_checked']} | {reasons} "
            f"| {len(r['violations'])} | {r['seconds']} |"
        )
    lines += ["", "Violations (first 5 per configuration):", ""]
    listed = [f"- {v}" for r in rows for v in r["violations"][:5]]
    lines += listed or ["- none"]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=2400, help="operations per configuration")
    parser.add_argument("--seed", type=int, default=1, help="seed of the run")
    parser.add_argument("-k", dest="select", default=None, help="pytest -k expression")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the results file")
    parser.add_argument("--log", default=None, help="a log entry's verdict, added under ## Log")
    args = parser.parse_args(argv)
    command = f"JAX_PLATFORMS=cpu .venv/bin/python experiments/fuzz_engine.py --ops {args.ops} "
    command += f"--seed {args.seed}"
    rows, rc, wall, tail = run(args.ops, args.seed, args.select)
    print(tail)
    RAW.parent.mkdir(parents=True, exist_ok=True)
    RAW.write_text("".join(json.dumps(r) + "\n" for r in rows))
    current = render(rows, args.ops, args.seed, wall, rc, command)
    write_results_file(args.out, current, args.log, ROOT)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
