"""The soak of issue #19: a million requests over 200 adapters through the simulator (the real
engine, scheduler, drainers, adapter pool and page accounting; a cost model instead of the GPU),
with random aborts and adapter churn, under every scheduling policy. Nothing may be lost, nothing
may wedge, and the process's memory must stay flat.

    PYTHONPATH=. JAX_PLATFORMS=cpu .venv/bin/python experiments/soak_sim.py --requests 1000000

The load is closed-loop: new requests arrive (at the virtual clock's now) whenever fewer than
``--in-flight`` are unfinished, so the queue stays bounded and what is measured is the steady
state. Adapters are drawn Zipf-skewed from the live set. Every ``--churn-every`` requests an idle
adapter is unloaded (``unload_lora_adapter``) and a new one loaded in its place; a
``--abort-share`` of the requests are aborted at a random point of their life. Each output is
checked to come back exactly once (``step()`` or ``abort()``) and is then released
(``Engine.release``), as a server that runs for good does.

Checked: every request ends exactly once; the engine is empty at the end with every KV page free;
no stretch of ``--stall-steps`` steps without a token or an end (a livelock); the resident set size
(RSS), sampled every tenth of the run, does not grow from the first tenth's sample to the last by
more than ``--rss-slack-mb``. Writes ``experiments/results/soak.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from jlora.bench.results_file import run_header, write_results_file
from jlora.config import EngineConfig
from jlora.sampling_params import SamplingParams
from jlora.scheduler.policies import DRAIN_POLICIES
from jlora.scheduler.request import Status
from jlora.sim import make_sim_engine

ROOT = Path(__file__).resolve().parent.parent
POLICIES = {  # off, then every drain policy at a short threshold (50 ms: the most churn)
    "off": dict(lora_drain_wait_threshold=0.0),
    **{p: dict(lora_drain_policy=p, lora_drain_wait_threshold=0.05) for p in DRAIN_POLICIES},
}
RANKS = (8, 16, 32, 64)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def soak(policy: str, args) -> dict:
    rng = np.random.default_rng(args.seed)
    live = [f"a{i}" for i in range(args.adapters)]
    config = EngineConfig(
        model=args.model,
        lora_paths={a: f"dummy:{RANKS[i % len(RANKS)]}" for i, a in enumerate(live)},
        max_loras_per_batch=args.slots,
        max_loaded_loras=args.host_cache,
        max_lora_rank=64,
        context_length=512,
        max_running_requests=128,
        **POLICIES[policy],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = make_sim_engine(config)
    free_at_start = engine.pages.num_free
    zipf = 1.0 / np.arange(1, args.adapters + 1) ** 1.1
    zipf /= zipf.sum()
    ended = bytearray(args.requests)  # times each request came back
    rid_of: dict[int, int] = {}  # engine rid -> request index
    users = dict.fromkeys(live, 0)  # unfinished requests per adapter
    to_abort: dict[int, int] = {}  # engine rid -> step at which it is aborted
    added = steps = stalled = worst_stall = churns = refused_unloads = 0
    aborted = 0
    reasons: dict[str, int] = {}
    rss: list[tuple[int, float]] = []
    next_sample = 0
    last_tokens = 0
    t0 = time.perf_counter()

    def done(out) -> None:
        nonlocal aborted
        i = rid_of.pop(out.rid)
        ended[i] += 1
        reasons[out.finish_reason] = reasons.get(out.finish_reason, 0) + 1
        if out.lora_name is not None:
            users[out.lora_name] -= 1
        to_abort.pop(out.rid, None)
        engine.release(out.rid)

    while added < args.requests or engine.has_unfinished():
        while added < args.requests and len(rid_of) < args.in_flight:
            k = int(rng.choice(args.adapters, p=zipf))
            name = None if rng.random() < 0.05 else live[k]
            prompt = rng.integers(3, 32000, int(rng.integers(1, args.input_len + 1)))
            params = SamplingParams(
                max_new_tokens=int(rng.integers(1, args.output_len + 1)), ignore_eos=True
            )
            rid = engine.add_request(prompt, params, name)
            rid_of[rid] = added
            if name is not None:
                users[name] += 1
            if rng.random() < args.abort_share:
                to_abort[rid] = steps + int(rng.integers(0, 40))
            added += 1
            if args.churn_every and added % args.churn_every == 0:
                idle = [a for a in live if users[a] == 0]
                busy = [a for a in live if users[a] > 0]
                if busy:  # an adapter in use must be refused, and nothing changes
                    try:
                        engine.unload_lora_adapter(busy[int(rng.integers(len(busy)))])
                        raise AssertionError("an adapter in use was unloaded")
                    except ValueError:
                        refused_unloads += 1
                if idle:
                    old = idle[int(rng.integers(len(idle)))]
                    engine.unload_lora_adapter(old)
                    new = f"c{churns}"
                    engine.load_lora_adapter(new, f"dummy:{RANKS[churns % len(RANKS)]}")
                    live[live.index(old)] = new
                    del users[old]
                    users[new] = 0
                    churns += 1
            if added >= next_sample:
                rss.append((added, rss_mb()))
                next_sample += max(1, args.requests // 10)
        for out in engine.step():
            done(out)
        steps += 1
        for rid in [r for r, at in to_abort.items() if at <= steps]:
            if rid in rid_of:
                req = engine.requests[rid]
                if req.status is not Status.FINISHED:
                    done(engine.abort(rid))
                    aborted += 1
        tokens = sum(reasons.values()) + sum(
            len(r.output) for r in engine.scheduler.running + engine.scheduler.paused
        )
        if tokens == last_tokens and engine.has_unfinished():
            stalled += 1
            worst_stall = max(worst_stall, stalled)
            if stalled > args.stall_steps:
                break
        else:
            stalled = 0
        last_tokens = tokens
    wall = time.perf_counter() - t0
    rss.append((added, rss_mb()))
    lost = sum(1 for i in range(added) if ended[i] == 0)
    twice = sum(1 for i in range(added) if ended[i] > 1)
    growth = rss[-1][1] - rss[1][1] if len(rss) > 2 else float("nan")
    return {
        "policy": policy,
        "requests": args.requests,
        "added": added,
        "adapters": args.adapters,
        "slots": args.slots,
        "host_cache": args.host_cache,
        "ended_once": added - lost - twice,
        "lost": lost,
        "ended_twice": twice,
        "aborted": aborted,
        "finish_reasons": reasons,
        "churned_adapters": churns,
        "refused_unloads": refused_unloads,
        "steps": steps,
        "worst_stall_steps": worst_stall,
        "wedged": stalled > args.stall_steps,
        "left_unfinished": len(rid_of),
        "pages_free_at_end": engine.pages.num_free,
        "pages_free_at_start": free_at_start,
        "requests_kept_by_engine": len(engine.requests),
        "rss_mb": [(n, round(m, 1)) for n, m in rss],
        "rss_growth_mb": round(growth, 1),
        "flat": growth <= args.rss_slack_mb,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "wall_s": round(wall, 1),
        "simulated_s": round(engine.clock.now(), 1),
    }


def verdict(row: dict) -> bool:
    return (
        row["lost"] == 0
        and row["ended_twice"] == 0
        and not row["wedged"]
        and row["left_unfinished"] == 0
        and row["pages_free_at_end"] == row["pages_free_at_start"]
        and row["requests_kept_by_engine"] == 0
        and row["flat"]
    )


def _provenance(rows: list[dict]) -> str:
    """Which commit ran each row (rows written before the rows kept it say so), the dates, the
    devices and jax versions."""
    by_commit: dict[str, list[str]] = {}
    for r in rows:
        by_commit.setdefault(r.get("commit", "not recorded"), []).append(
            f"`{r['policy']}` {r['added']:,}"
        )
    commits = "; ".join(
        f"{', '.join(runs)} " + ("(commit not recorded)" if c == "not recorded" else f"at `{c}`")
        for c, runs in by_commit.items()
    )

    def seen(key: str) -> str:
        return ", ".join(dict.fromkeys(str(r.get(key, "not recorded")) for r in rows))

    return f"- commits: {commits}; {seen('date')}; device: {seen('device')}; jax {seen('jax')}"


def render(rows: list[dict], args, command: str, raw: Path | None) -> str:
    """The title and ``## Current``: the claim, the setting and a table row per run; ``raw``: the
    JSON-lines file that keeps the rows (the table is rebuilt from it with ``--render``)."""
    ok = all(verdict(r) for r in rows)
    runs = ", ".join(f"{r['policy']} ({r['added']:,} requests)" for r in rows)
    short = [r["policy"] for r in rows if r["added"] < args.requests]
    full = {r["policy"] for r in rows if r["added"] >= args.requests}
    short = [p for p in dict.fromkeys(short) if p not in full]
    target = f"target: {args.requests:,} requests over {args.adapters} adapters, every policy"
    if short:
        target += f"; not run to it: {', '.join(f'`{p}`' for p in short)}"
    raw_line = (
        f"`{raw.resolve().relative_to(ROOT) if raw.resolve().is_relative_to(ROOT) else raw}` "
        "(one JSON line per run; `--render` rebuilds this table from it)"
        if raw
        else "not kept (`--json FILE` keeps the rows)"
    )
    lines = [
        "# Soak: a million requests through the simulator (issue #19)",
        "",
        "## Current",
        "",
        _provenance(rows) + f"; model `{args.model}` (shipped H100 cost model)",
        f"- claim ({target}): nothing lost, nothing wedged, memory flat: "
        f"{'met' if ok else 'NOT met'} for {runs}",
        f"- command: `{command}`",
        f"- setting: {args.adapters} adapters (ranks {', '.join(map(str, RANKS))}, Zipf-skewed), "
        f"{args.slots} slots, host cache {args.host_cache}, {args.in_flight} in flight "
        f"(closed loop), prompts 1-{args.input_len} and outputs 1-{args.output_len} tokens, "
        f"{args.abort_share:.0%} aborted, an adapter swapped every {args.churn_every} requests; "
        "drain thresholds 50 ms",
        "",
        "| policy | requests | ended once | lost | twice | aborted | adapters churned | "
        "steps | worst stall (steps) | RSS first -> last tenth (MB) | peak RSS (MB) | wall (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        first = r["rss_mb"][1][1] if len(r["rss_mb"]) > 2 else float("nan")
        lines.append(
            f"| {r['policy']} | {r['added']:,} | {r['ended_once']:,} | {r['lost']} | "
            f"{r['ended_twice']} | {r['aborted']:,} | {r['churned_adapters']} | {r['steps']:,} | "
            f"{r['worst_stall_steps']} | {first:.0f} -> {r['rss_mb'][-1][1]:.0f} | "
            f"{r['peak_rss_mb']:.0f} | {r['wall_s']:.0f} |"
        )
    lines += [
        "",
        "Peak RSS is the process's (`ru_maxrss`): in a run of several policies in one process, the "
        "largest so far.",
        "",
        f"Raw data: {raw_line}.",
        "",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=1_000_000)
    p.add_argument("--adapters", type=int, default=200)
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--slots", type=int, default=8, help="max_loras_per_batch")
    p.add_argument("--host-cache", type=int, default=32, help="max_loaded_loras")
    p.add_argument("--in-flight", type=int, default=256, help="unfinished requests kept")
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=16)
    p.add_argument("--abort-share", type=float, default=0.05)
    p.add_argument("--churn-every", type=int, default=500)
    p.add_argument("--stall-steps", type=int, default=10_000)
    p.add_argument("--rss-slack-mb", type=float, default=50.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--json", type=Path, default=None, help="append each row to this JSON-lines file"
    )
    p.add_argument("--out", type=Path, default=None, help="write the results file (soak.md)")
    p.add_argument("--log", default=None, help="a log entry's verdict, added under ## Log")
    p.add_argument(
        "--render",
        type=Path,
        default=None,
        help="run nothing: write --out from the rows of this JSONL file (runs of several "
        "processes, e.g. one per policy); --command gives the command shown",
    )
    p.add_argument("--command", default=None, help="the command shown in the results file")
    args = p.parse_args(argv)
    if args.render:
        rows = [json.loads(line) for line in args.render.read_text().splitlines()]
        _write(rows, args, args.command or "", args.render)
        return
    rows = []
    header = run_header()  # the rows' provenance
    for policy in args.policies:
        row = soak(policy, args)
        row.update(commit=header.commit, date=header.date, device=header.device, jax=header.jax)
        print(json.dumps(row), flush=True)
        rows.append(row)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    if args.out:
        command = (
            "PYTHONPATH=. JAX_PLATFORMS=cpu .venv/bin/python experiments/soak_sim.py "
            + " ".join(argv if argv is not None else sys.argv[1:])
        )
        _write(rows, args, command, args.json)


def _write(rows: list[dict], args, command: str, raw: Path | None) -> None:
    """The results file (``--out``), its Log kept; the rows go in the new entry (``--log``) where
    no JSON-lines file keeps them."""
    body = "" if raw else "\n".join(["```", *[json.dumps(r) for r in rows], "```"])
    write_results_file(args.out, render(rows, args, command, raw), args.log, ROOT, body=body)


if __name__ == "__main__":
    main()
