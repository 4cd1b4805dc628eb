"""Traces of a benchmark run: TensorBoard scalars (no TensorFlow) and a jax.profiler window.

Scalars are indexed by milliseconds since the run's start, so the runs of several settings overlay
on one time axis in TensorBoard. Per step: step time, batch size, tokens, waiting and running
counts; per adapter: waiting count, longest wait, slots held, paused requests, draining mark.
Per request (at its arrival time): TTFT and E2E.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax

from jlora.bench.driver import RunResult, StepRecord
from jlora.engine import Engine
from jlora.metrics.tensorboard import ScalarWriter


def _adapter(name: str | None) -> str:
    return "base" if name is None else name


class TensorBoardTrace:
    """A driver observer writing one TensorBoard run directory.

    The engine's state is written at most once per ``interval_s`` of the run's time (a simulated
    run takes thousands of steps a second; each point costs a record with a checksum computed in
    Python): the step figures over the interval (mean step time and batch, tokens and adapter
    loads summed, the share of prefill steps) and the queues and adapters as the interval ends.
    Each event's wall time is the run's start plus the run's time at that point, so TensorBoard's
    RELATIVE x axis reads seconds since the run's start (virtual seconds for a simulated run),
    the same axis for every setting; the step number is milliseconds since the start.
    """

    def __init__(self, log_dir: str | Path, adapters: list[str | None], interval_s: float = 0.05):
        self.writer = ScalarWriter(log_dir)
        self.adapters = adapters
        self.interval_s = interval_s
        self.wall_start = time.time()
        self._since = 0.0  # run time of the last point written
        self._steps: list[StepRecord] = []

    def __call__(self, engine: Engine, step: StepRecord) -> None:
        self._steps.append(step)
        if step.end - self._since < self.interval_s:
            return
        steps, self._steps, self._since = self._steps, [], step.end
        state = engine.scheduler.snapshot(engine.clock.now())
        values = {
            "step/time_ms": 1e3 * sum(s.end - s.start for s in steps) / len(steps),
            "step/batch_size": sum(s.batch for s in steps) / len(steps),
            "step/tokens": sum(s.tokens for s in steps),
            "step/prefill_share": sum(s.kind == "prefill" for s in steps) / len(steps),
            "step/adapter_loads": sum(s.loads for s in steps),
            "queue/waiting": sum(state.waiting.values()),
            "queue/running": sum(state.running.values()),
            "queue/paused": sum(state.paused.values()),
            "kv/free_pages": state.free_pages,
        }
        for name in self.adapters:
            a = _adapter(name)
            values |= {
                f"waiting/{a}": state.waiting.get(name, 0),
                f"longest_wait_s/{a}": state.longest_wait.get(name, 0.0),
                f"slots_held/{a}": float(name in state.slots) if name is not None else 0.0,
                f"paused/{a}": state.paused.get(name, 0),
                f"draining/{a}": float(name in state.draining),
            }
        self.writer.scalars(values, int(step.end * 1e3), wall_time=self.wall_start + step.end)

    def finish(self, result: RunResult) -> None:
        for o in result.outputs:
            if o.first_token_time is None:
                continue
            t = o.arrival_time - result.start
            self.writer.scalars(
                {
                    "request/ttft_ms": o.ttft * 1e3,
                    "request/e2e_ms": o.e2e * 1e3,
                    f"request_ttft_ms/{_adapter(o.lora_name)}": o.ttft * 1e3,
                },
                int(t * 1e3),
                wall_time=self.wall_start + t,
            )
        self.writer.close()


class SlotTimeline:
    """Records which adapter holds each device slot after every step, and how many requests wait
    (for the timeline plot)."""

    def __init__(self):
        self.points: list[tuple[float, tuple[str | None, ...]]] = []
        """(run time, adapter per slot), at each change."""
        self.waiting: list[tuple[float, int]] = []
        """(run time, requests waiting for admission, paused ones included), at each change."""

    def __call__(self, engine: Engine, step: StepRecord) -> None:
        slots = tuple(engine.adapters.occupant)
        if not self.points or self.points[-1][1] != slots:
            self.points.append((step.start, slots))
        sched = engine.scheduler
        waiting = len(sched.waiting) + len(sched.paused)
        if not self.waiting or self.waiting[-1][1] != waiting:
            self.waiting.append((step.end, waiting))

    def swaps(self) -> list[float]:
        """Run times at which an adapter replaced another in a slot (a slot's first load, into an
        empty slot, is no swap)."""
        out = []
        for (_, before), (t, after) in zip(self.points, self.points[1:], strict=False):
            out += [t] * sum(a is not None and a != b for a, b in zip(before, after, strict=True))
        return out

    def finish(self, result: RunResult) -> None:
        if self.points:
            self.points.append((result.duration, self.points[-1][1]))
        if self.waiting:
            self.waiting.append((result.duration, self.waiting[-1][1]))


class ProfileSteps:
    """Captures a jax.profiler trace of steps ``[first, last)`` into ``log_dir``."""

    def __init__(self, log_dir: str | Path, first: int, last: int):
        self.log_dir, self.first, self.last = str(log_dir), first, last
        self.active = False

    def __call__(self, engine: Engine, step: StepRecord) -> None:
        # Called after step `index`: start before the next one is `first`.
        if not self.active and step.index + 1 == self.first:
            jax.profiler.start_trace(self.log_dir)
            self.active = True
        elif self.active and step.index + 1 >= self.last:
            jax.profiler.stop_trace()
            self.active = False

    def finish(self, result: RunResult) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
