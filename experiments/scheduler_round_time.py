"""Host time of one scheduling round: the scheduler and a drain policy deciding between two steps,
with many requests running and many adapters competing for the slots (issue #18: under 0.2 ms at
128 running requests and 100 adapters, beside a decode step of the 8B model of about 6 ms).

    .venv/bin/python experiments/scheduler_round_time.py --policies off,sglang,preempt,fair

Each round is an admission round (requests wait for adapters without a slot, so every policy
hook runs): ``--running`` decoding requests over the slots' adapters, ``--waiting`` requests
spread over the other adapters, and between two rounds every running request gets a token, as a
decode step would give it. No model, no device: the scheduler's own Python.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import numpy as np

from jlora.adapters.pool import AdapterPool
from jlora.build import make_policy
from jlora.config import EngineConfig
from jlora.sampling_params import SamplingParams
from jlora.scheduler.pages import PagePool
from jlora.scheduler.request import Request
from jlora.scheduler.scheduler import Scheduler, SchedulerConfig


def build(policy: str, threshold: float, adapters: int, slots: int, running: int, waiting: int):
    pool = AdapterPool(lambda name, path: SimpleNamespace(name=name), slots, None)
    names = [f"a{i}" for i in range(adapters)]
    for name in names:
        pool.register(name, "stub")
    config = SchedulerConfig(
        max_running_requests=running,  # full: the waiting ones stay waiting, every round
        max_prefill_tokens=2048,
        chunked_prefill_size=2048,
        max_prefill_seqs=running,
        context_length=1024,
    )
    engine_config = EngineConfig(
        model="tiny",
        lora_drain_wait_threshold=0.0 if policy == "off" else threshold,
        lora_drain_policy="sglang" if policy == "off" else policy,
    )
    sched = Scheduler(config, PagePool(running * 80, 16), pool, make_policy(engine_config))
    sched.observe_step("decode", 0.006)
    rid = 0
    params = SamplingParams(max_new_tokens=512, ignore_eos=True)
    for i in range(running):  # decoding requests of the seated adapters
        name = names[i % slots]
        req = Request(
            rid=rid, prompt=np.ones(256, np.int32), params=params, lora_name=name, arrival=0.0
        )
        rid += 1
        if sched.adapters.slot_of(name) is None:
            sched.adapters.take_slot(name, sched.running_adapters() - {None})
        req.pages = sched.pages.alloc(sched.pages.pages_for(req.num_tokens + 1))
        req.append_token(7, 0.0)
        req.num_computed = req.num_tokens - 1
        sched.waiting.append(req)
        sched._admit(req)
    for i in range(waiting):  # the others wait for a slot
        name = names[slots + i % (adapters - slots)]
        sched.add(
            Request(
                rid=rid,
                prompt=np.ones(256, np.int32),
                params=params,
                lora_name=name,
                arrival=0.1 * i / waiting,
            )
        )
        rid += 1
    return sched


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policies", default="off,sglang,reserve,preempt,fair")
    p.add_argument("--threshold", type=float, default=1.0)
    p.add_argument("--adapters", type=int, default=100)
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--running", type=int, default=128)
    p.add_argument("--waiting", type=int, default=200)
    p.add_argument("--rounds", type=int, default=2000)
    p.add_argument(
        "--since",
        type=float,
        default=0.5,
        help="seconds the waiting requests have waited at the first round (past --threshold: "
        "adapters starve, and the drainers mark, pause and reorder)",
    )
    args = p.parse_args()
    print(f"{args.running} running, {args.waiting} waiting,", end=" ")
    print(f"{args.adapters} adapters, {args.slots} slots")
    print("| policy | median round (ms) | P99 round (ms) |")
    print("| --- | ---: | ---: |")
    for policy in args.policies.split(","):
        sched = build(policy, args.threshold, args.adapters, args.slots, args.running, args.waiting)
        times = []
        now = args.since
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            plan = sched.schedule(now)
            times.append(time.perf_counter() - t0)
            for req in plan.decode:  # the decode step's tokens
                req.append_token(7, now)
                req.num_computed = req.num_tokens - 1
            now += 1e-6
        times.sort()
        med, p99 = statistics.median(times), times[int(0.99 * len(times))]
        print(f"| {policy} | {med * 1e3:.3f} | {p99 * 1e3:.3f} |")


if __name__ == "__main__":
    main()
