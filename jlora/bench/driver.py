"""Drive an engine through a workload: requests arrive on the engine's clock by their arrival times.

The engine runs in-process. Before each step, every request whose arrival time has passed is
submitted with that arrival time (so time spent queued behind a running step counts, as a client
would see it); when nothing is running or waiting the driver sleeps until the next arrival (a real
clock sleeps, the simulator's virtual clock jumps). Observers see every step, for traces.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tqdm import tqdm

from jlora.bench.workload import WorkloadRequest
from jlora.engine import Engine
from jlora.sampling_params import SamplingParams
from jlora.scheduler.request import RequestOutput


@dataclass(frozen=True)
class StepRecord:
    index: int
    start: float  # seconds since the run's start
    end: float
    kind: str  # prefill / decode
    batch: int  # sequences in the step
    tokens: int  # tokens fed through the model
    loads: int  # adapters copied into slots before it


@dataclass
class RunResult:
    outputs: list[RequestOutput]  # in workload order
    steps: list[StepRecord] = field(default_factory=list)
    duration: float = 0.0
    start: float = 0.0


Observer = Callable[[Engine, StepRecord], None]


def run_workload(
    engine: Engine,
    workload: list[WorkloadRequest],
    *,
    observers: tuple[Observer, ...] = (),
    progress: bool = True,
    desc: str = "requests",
) -> RunResult:
    clock = engine.clock
    pending = sorted(workload, key=lambda w: (w.arrival, w.index))
    start = clock.now()
    rid_of: dict[int, int] = {}
    errors: dict[int, RequestOutput] = {}
    result = RunResult(outputs=[], start=start)
    bar = tqdm(total=len(workload), desc=desc, disable=not progress, leave=False)
    done = 0
    nxt = 0
    while nxt < len(pending) or engine.has_unfinished():
        now = clock.now()
        while nxt < len(pending) and start + pending[nxt].arrival <= now:
            w = pending[nxt]
            params = SamplingParams(max_new_tokens=w.output_len, ignore_eos=True)
            try:
                rid_of[w.index] = engine.add_request(
                    w.prompt, params, w.lora_name, arrival_time=start + w.arrival
                )
            except ValueError as e:  # refused: it still ends, with its error
                errors[w.index] = RequestOutput(
                    rid=-1,
                    lora_name=w.lora_name,
                    prompt_len=len(w.prompt),
                    token_ids=[],
                    finish_reason="abort",
                    error=str(e),
                    arrival_time=start + w.arrival,
                    first_token_time=None,
                    token_times=[],
                    finish_time=start + w.arrival,
                )
                done += 1
                bar.update(1)
            nxt += 1
        if not engine.has_unfinished():
            if nxt < len(pending):
                clock.sleep_until(start + pending[nxt].arrival)
            continue
        t0 = clock.now()
        finished = engine.step()
        plan = engine.last_plan
        if plan.kind == "idle":
            # Nothing could run (e.g. every waiting request needs a slot held by paused work);
            # wait for the next arrival rather than spin.
            if nxt < len(pending):
                clock.sleep_until(start + pending[nxt].arrival)
                continue
            stuck = [r.rid for r in engine.scheduler.waiting]
            raise RuntimeError(f"the scheduler can run none of the waiting requests {stuck[:5]}")
        record = StepRecord(
            index=len(result.steps),
            start=t0 - start,
            end=clock.now() - start,
            kind=plan.kind,
            batch=len(plan.prefill) if plan.kind == "prefill" else len(plan.decode),
            tokens=sum(i.end - i.start for i in plan.prefill) or len(plan.decode),
            loads=len(plan.loads) + len(plan.prefetch),
        )
        result.steps.append(record)
        for observer in observers:
            observer(engine, record)
        done += len(finished)
        bar.update(len(finished))
    bar.close()
    result.duration = clock.now() - start
    for w in workload:
        if w.index in errors:
            result.outputs.append(errors[w.index])
        else:
            result.outputs.append(RequestOutput.of(engine.requests[rid_of[w.index]]))
    assert done == len(workload), f"{len(workload) - done} requests did not finish"
    return result
