"""Every decision the scheduler makes over seeded random workloads, one line per round: to show
that a change to the scheduler or the policies (e.g. to make a round cheaper) decides nothing
differently. Run it at two commits and compare the files byte for byte:

    PYTHONPATH=. python experiments/scheduler_decisions.py --seeds 60 --out /tmp/decisions.txt

Each seed draws a configuration (slots, adapters, pinned ones, the base model taking a slot unit
or not, LRU or FIFO, prefetch, budgets, a page pool from tight to ample) and a workload (arrival
rates, prompt and output lengths, skewed adapter popularity, aborts of waiting and paused
requests), and runs it under every policy (FCFS and the four drainers) on a fake clock, the driver
applying each plan as the engine would (prefill chunks, decode tokens, finishes). A line gives the
plan (kind, prefill items, decode batch, loads, prefetches, preemptions, pauses, resumes), the
policy's marks, the guarded rounds and the slot table; another the snapshot's counts. No model, no
device: the scheduler's own Python.
"""

from __future__ import annotations

import argparse
import random
import sys
from types import SimpleNamespace

import numpy as np

from jlora.adapters.pool import AdapterPool
from jlora.sampling_params import SamplingParams
from jlora.scheduler.pages import PagePool
from jlora.scheduler.policies import FairDrainer, PreemptDrainer, ReserveDrainer, SGLangDrainer
from jlora.scheduler.request import Request
from jlora.scheduler.scheduler import FCFS, Scheduler, SchedulerConfig

POLICIES = {
    "off": FCFS,
    "sglang": SGLangDrainer,
    "reserve": ReserveDrainer,
    "preempt": PreemptDrainer,
    "fair": FairDrainer,
}


def run(seed: int, policy: str, out) -> None:
    rng = random.Random(seed)
    slots = rng.choice([2, 3, 4, 8])
    num_adapters = rng.choice([3, 6, 12, 40])
    pool = AdapterPool(
        lambda name, path: SimpleNamespace(name=name),
        slots,
        rng.choice([None, num_adapters]),
        rng.choice(["lru", "fifo"]),
    )
    names: list[str | None] = [f"a{i}" for i in range(num_adapters)]
    for i, name in enumerate(names):
        pool.register(name, "stub", pinned=(i == 0 and slots > 2 and rng.random() < 0.3))
    names.append(None)  # the base model
    config = SchedulerConfig(
        max_running_requests=rng.choice([4, 8, 32, 128]),
        max_prefill_tokens=rng.choice([64, 256, 2048]),
        chunked_prefill_size=rng.choice([32, 128, 2048]),
        max_prefill_seqs=rng.choice([2, 8, 64]),
        base_uses_slot=rng.random() < 0.3,
        context_length=512,
        prefetch=rng.random() < 0.4,
    )
    threshold = rng.choice([0.01, 0.05, 0.3])
    drainer = FCFS() if policy == "off" else POLICIES[policy](threshold)
    pages = PagePool(rng.choice([60, 200, 2000]), rng.choice([4, 16]))
    sched = Scheduler(config, pages, pool, drainer)
    now, rid = 0.0, 0
    popularity = [rng.random() ** 3 for _ in names]
    for step in range(rng.choice([200, 600])):
        arrivals = np.random.RandomState(seed * 1000 + step).poisson(rng.choice([0.2, 1.0, 3.0]))
        for _ in range(arrivals):
            name = rng.choices(names, popularity)[0]
            params = SamplingParams(max_new_tokens=rng.choice([1, 5, 30, 120]), ignore_eos=True)
            prompt = np.ones(rng.choice([3, 20, 90, 300]), np.int32)
            sched.add(Request(rid=rid, prompt=prompt, params=params, lora_name=name, arrival=now))
            rid += 1
        if rng.random() < 0.3:
            sched.observe_step("decode", rng.choice([0.001, 0.01, 0.03]))
        if rng.random() < 0.05:
            sched.observe_load(rng.choice([0.0001, 0.002]))
        plan = sched.schedule(now)
        decided = [
            plan.kind,
            [(i.req.rid, i.start, i.end) for i in plan.prefill],
            [r.rid for r in plan.decode],
            plan.loads,
            plan.prefetch,
            [r.rid for r in plan.preempted],
            [r.rid for r in plan.paused],
            [r.rid for r in plan.resumed],
            sorted(map(str, drainer.draining().items())),
            sched.guarded_rounds,
            list(pool.occupant),
            pool.slot_loads,
        ]
        print(step, decided, file=out)
        now += rng.choice([0.001, 0.005, 0.02])
        for item in plan.prefill:  # the step, as the engine applies it
            item.req.num_computed = item.end
            if item.completes:
                item.req.append_token(1, now)
        for req in plan.decode:
            req.append_token(1, now)
            req.num_computed = req.num_tokens - 1
        for req in list(sched.running):
            done = len(req.output) >= req.params.max_new_tokens or req.num_tokens >= 500
            if req.output and done and not req.in_prefill:
                sched.finish(req)
        if rng.random() < 0.02 and sched.waiting:  # aborts
            sched.finish(rng.choice(sched.waiting))
        if rng.random() < 0.01 and sched.paused:
            sched.finish(rng.choice(sched.paused))
        state = sched.snapshot(now)
        print(" snap", state.waiting, state.running, state.paused, file=out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=60)
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--out", default="-", help="file to write (default: stdout)")
    args = p.parse_args()
    out = sys.stdout if args.out == "-" else open(args.out, "w")  # noqa: SIM115
    with out:
        for seed in range(args.seeds):
            for policy in args.policies.split(","):
                print("== seed", seed, policy, file=out)
                run(seed, policy, out)


if __name__ == "__main__":
    main()
