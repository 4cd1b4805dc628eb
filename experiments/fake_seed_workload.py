"""The seed workload on the fake runner: which drain policy and threshold, in seconds of CPU.

Six adapters, three slots, Poisson arrivals at 4 req/s, input and output lengths uniform in
[1, 512], adapters uniform at random (SGLang's ``bench_serving --dataset-name random`` with the
seed's flags). The real engine, scheduler and adapter pool run over :class:`FakeRunner`, whose
steps take a fixed time on a fake clock (default: decode 25 ms, prefill 5 ms + 0.1 ms/token, an
adapter load 2 ms), so a run of hundreds of requests takes seconds.

    .venv/bin/python experiments/fake_seed_workload.py --num-prompts 400 --seeds 1 2 3

Prints the table (means over seeds) and writes it to ``results/fake_seed_workload.md``.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from jlora.bench.results_file import run_header, write_results_file
from jlora.clock import FakeClock
from jlora.config import EngineConfig
from jlora.engine import Engine
from jlora.runner.fake import FakeRunner
from jlora.sampling_params import SamplingParams


def workload(n: int, rate: float, adapters: list[str], seed: int, max_len: int = 512):
    rng = np.random.default_rng(seed)
    arrivals = np.concatenate([[0.0], np.cumsum(rng.exponential(1 / rate, n - 1))])
    ins = rng.integers(1, max_len + 1, n)
    outs = rng.integers(1, max_len + 1, n)
    names = rng.integers(0, len(adapters), n)
    return [
        (float(t), rng.integers(3, 256, int(i)).tolist(), int(o), adapters[k])
        for t, i, o, k in zip(arrivals, ins, outs, names, strict=True)
    ]


def run(work, *, threshold: float, policy: str, slots: int, args) -> dict:
    clock = FakeClock()
    runner = FakeRunner(
        clock,
        prefill_base=args.prefill_base,
        prefill_per_token=args.prefill_per_token,
        decode_base=args.decode_base,
        decode_per_seq=args.decode_per_seq,
        load_time=args.load_time,
    )
    names = sorted({w[3] for w in work})
    config = EngineConfig(
        model="tiny",
        lora_paths={n: "dummy:4" for n in names},
        max_loras_per_batch=slots,
        max_lora_rank=4,
        context_length=1024,
        max_total_tokens=args.kv_tokens,
        max_running_requests=args.max_running,
        max_prefill_tokens=8192,
        lora_drain_wait_threshold=threshold,
        lora_drain_policy=policy,
        warmup=False,
    )
    engine = Engine(config, runner=runner, clock=clock)
    i = 0
    pauses = 0
    while i < len(work) or engine.has_unfinished():
        while i < len(work) and work[i][0] <= clock.now():
            t, prompt, m, name = work[i]
            engine.add_request(prompt, SamplingParams(max_new_tokens=m, ignore_eos=True), name, t)
            i += 1
        if not engine.has_unfinished():
            clock.advance(max(0.0, work[i][0] - clock.now()))
            continue
        engine.step()
        pauses += len(engine.last_plan.paused)
        if engine.last_plan.kind == "idle":
            assert i < len(work), "the scheduler is stuck with nothing left to arrive"
            clock.advance(max(0.0, work[i][0] - clock.now()))
    reqs = list(engine.requests.values())
    ttft = np.array([r.token_times[0] - r.arrival for r in reqs])
    e2e = np.array([r.finish_time - r.arrival for r in reqs])
    return {
        "p50_ttft": np.median(ttft),
        "p99_ttft": np.percentile(ttft, 99),
        "mean_ttft": ttft.mean(),
        "p50_e2e": np.median(e2e),
        "p99_e2e": np.percentile(e2e, 99),
        "loads": engine.adapters.slot_loads,
        "pauses": pauses,
        "duration": clock.now(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--num-prompts", type=int, default=400)
    p.add_argument("--request-rate", type=float, default=4.0)
    p.add_argument("--num-adapters", type=int, default=6)
    p.add_argument("--slots", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    p.add_argument("--policies", nargs="+", default=["sglang", "reserve", "preempt"])
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0, 3.0])
    p.add_argument("--decode-base", type=float, default=0.025)
    p.add_argument("--decode-per-seq", type=float, default=0.0)
    p.add_argument("--prefill-base", type=float, default=0.005)
    p.add_argument("--prefill-per-token", type=float, default=0.0001)
    p.add_argument("--load-time", type=float, default=0.002)
    p.add_argument("--max-running", type=int, default=256)
    p.add_argument("--kv-tokens", type=int, default=400_000)
    p.add_argument(
        "--out",
        default=Path(__file__).parent / "results" / "fake_seed_workload.md",
        help="results file: its Current rewritten, a Log entry added on top of its Log",
    )
    p.add_argument("--log", default=None, help="the Log entry's verdict (default: the claim)")
    args = p.parse_args()
    adapters = [f"adapter{k}" for k in range(args.num_adapters)]
    settings = [("off", 0.0)] + list(itertools.product(args.policies, args.thresholds))
    keys = ["p50_ttft", "p99_ttft", "mean_ttft", "p50_e2e", "p99_e2e", "loads", "pauses"]
    print(f"{'policy':>8} {'thr':>5} " + " ".join(f"{k:>9}" for k in keys) + "   (seconds)")
    table = {}
    lines = [
        "Fake runner on the CPU (step times, not a GPU measurement): "
        f"decode {args.decode_base * 1e3:g} ms + {args.decode_per_seq * 1e3:g} ms/seq, prefill "
        f"{args.prefill_base * 1e3:g} ms + {args.prefill_per_token * 1e3:g} ms/token, load "
        f"{args.load_time * 1e3:g} ms. Means over seeds {args.seeds}; times in seconds; loads: "
        "adapter copies into slots; pauses: request pauses.",
        "",
        "| policy | threshold s | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for policy, thr in settings:
        rows = []
        for seed in args.seeds:
            work = workload(args.num_prompts, args.request_rate, adapters, seed)
            rows.append(
                run(
                    work,
                    threshold=thr,
                    policy="sglang" if policy == "off" else policy,
                    slots=args.slots,
                    args=args,
                )
            )
        avg = {k: float(np.mean([r[k] for r in rows])) for k in keys}
        print(f"{policy:>8} {thr:5.2f} " + " ".join(f"{avg[k]:9.3f}" for k in keys), flush=True)
        lines.append(f"| {policy} | {thr:g} | " + " | ".join(f"{avg[k]:.3f}" for k in keys) + " |")
        table[policy, thr] = avg
    write_fake_seed_results(args.out, table, "\n".join(lines) + "\n", args)


def write_fake_seed_results(out, table: dict, body: str, args) -> None:
    """Write ``out``: ``## Current`` (header, the P99 TTFT of each policy against the drainer off)
    over the old one, and a Log entry (``--log``, default the claim) with ``body``, the table, on
    top of the file's Log, which is kept. ``table``: (policy, threshold) -> the means."""
    off = table.get(("off", 0.0), {}).get("p99_ttft")
    parts = []
    for policy in dict.fromkeys(p for p, _ in table if p != "off"):
        p99 = [v["p99_ttft"] for (q, _), v in table.items() if q == policy]
        parts.append(f"`{policy}` {min(p99):.3f}-{max(p99):.3f} s")
    claim = (
        "on the seed workload with hand-set step times, P99 TTFT "
        + (f"{off:.3f} s with the drainer off; " if off is not None else "")
        + ", ".join(parts)
        + f" at thresholds {min(args.thresholds):g}-{max(args.thresholds):g} s"
    )
    current = [
        "# The seed workload on the fake runner",
        "",
        "## Current",
        "",
        *run_header().lines(),
        "- device note: the fake runner on a CPU (hand-set step times, not a GPU measurement)",
        f"- claim: {claim}",
        f"- raw data: the table of the newest Log entry (means over seeds "
        f"{', '.join(map(str, args.seeds))})",
        "",
    ]
    write_results_file(out, "\n".join(current) + "\n", args.log or claim, body=body)


if __name__ == "__main__":
    main()
