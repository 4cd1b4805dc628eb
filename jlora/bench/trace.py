"""Traces of a benchmark run: TensorBoard scalars (no TensorFlow) and a jax.profiler window.

Scalars are indexed by milliseconds since the run's start, so the runs of several settings overlay
on one time axis in TensorBoard. Per step: step time, batch size, tokens, waiting and running
counts; per adapter: waiting count, longest wait, slots held, paused requests, draining mark.
Per request (at its arrival time): TTFT and E2E.
"""

from __future__ import annotations

from pathlib import Path

import jax

from jlora.bench.driver import RunResult, StepRecord
from jlora.engine import Engine
from jlora.tensorboard_scalars import ScalarWriter


def _adapter(name: str | None) -> str:
    return "base" if name is None else name


class TensorBoardTrace:
    """A driver observer writing one TensorBoard run directory."""

    def __init__(self, log_dir: str | Path, adapters: list[str | None]):
        self.writer = ScalarWriter(log_dir)
        self.adapters = adapters

    def __call__(self, engine: Engine, step: StepRecord) -> None:
        t = int(step.end * 1e3)
        state = engine.scheduler.snapshot(engine.clock.now())
        w = self.writer
        w.scalars(
            {
                "step/time_ms": (step.end - step.start) * 1e3,
                "step/batch_size": step.batch,
                "step/tokens": step.tokens,
                "step/is_prefill": float(step.kind == "prefill"),
                "step/adapter_loads": step.loads,
                "queue/waiting": sum(state.waiting.values()),
                "queue/running": sum(state.running.values()),
                "queue/paused": sum(state.paused.values()),
                "kv/free_pages": state.free_pages,
            },
            t,
        )
        for name in self.adapters:
            a = _adapter(name)
            w.scalars(
                {
                    f"waiting/{a}": state.waiting.get(name, 0),
                    f"longest_wait_s/{a}": state.longest_wait.get(name, 0.0),
                    f"slots_held/{a}": float(name in state.slots) if name is not None else 0.0,
                    f"paused/{a}": state.paused.get(name, 0),
                    f"draining/{a}": float(name in state.draining),
                },
                t,
            )

    def finish(self, result: RunResult) -> None:
        for o in result.outputs:
            if o.first_token_time is None:
                continue
            t = int((o.arrival_time - result.start) * 1e3)
            self.writer.scalars(
                {
                    "request/ttft_ms": o.ttft * 1e3,
                    "request/e2e_ms": o.e2e * 1e3,
                    f"request_ttft_ms/{_adapter(o.lora_name)}": o.ttft * 1e3,
                },
                t,
            )
        self.writer.close()


class SlotTimeline:
    """Records which adapter holds each device slot after every step (for the timeline plot)."""

    def __init__(self):
        self.points: list[tuple[float, tuple[str | None, ...]]] = []

    def __call__(self, engine: Engine, step: StepRecord) -> None:
        slots = tuple(engine.adapters.occupant)
        if not self.points or self.points[-1][1] != slots:
            self.points.append((step.start, slots))

    def finish(self, result: RunResult) -> None:
        if self.points:
            self.points.append((result.duration, self.points[-1][1]))


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
