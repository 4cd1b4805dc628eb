"""Traces of a benchmark run: TensorBoard summaries (no TensorFlow) and a jax.profiler window.

Each ``jlora bench`` run with ``--tensorboard-dir DIR`` writes a fresh directory
``DIR/<YYYYMMDD-HHMMSS>/<setting>`` per setting, so that a second run never appends to the first's
curves; ``tensorboard --logdir DIR`` shows them all, the runs of one invocation side by side.

**The x axis.** Choose RELATIVE in TensorBoard's settings: each point's wall time is the run's
start plus its time into the run, so RELATIVE reads seconds since the run's start (for a simulated
run, *virtual* seconds, the cost model's), one axis for every setting. STEP is milliseconds since
the run's start (the same axis in ms); WALL is the clock time of the run (for a simulated run, its
start plus the virtual time).

**Tags** (``<a>``: an adapter's name, ``base`` for no adapter):

=============================  ==================================================================
tag                            what (one point per 50 ms of the run at most, over that interval)
=============================  ==================================================================
``step/time_ms``               mean step time
``step/batch_size``            mean sequences per step
``step/tokens``                tokens computed (summed)
``step/prefill_share``         fraction of the steps that were prefills
``step/adapter_loads``         adapters loaded into device slots (summed)
``queue/waiting``              requests waiting for admission, at the interval's end
``queue/running``, ``/paused`` requests running; paused (KV kept, by ``preempt`` or ``fair``)
``kv/free_pages``              free KV cache pages
``waiting/<a>``                waiting requests of adapter ``a``
``longest_wait_s/<a>``         how long its longest-waiting request has waited
``slots_held/<a>``             1 while it holds a device slot
``paused/<a>``                 its paused requests
``draining/<a>``               1 while a drainer makes it give up its slot
``request/ttft_ms`` ...        per request, at its arrival: ``ttft_ms``, ``e2e_ms``, ``tpot_ms``
                               (``(e2e - ttft) / (n - 1)``), ``itl_mean_ms``, ``itl_max_ms``
``request_ttft_ms/<a>``        the TTFT of each request of adapter ``a``
``hist/ttft_ms`` ...           histograms over the run's requests: ``ttft_ms``, ``e2e_ms``,
                               ``tpot_ms``, ``itl_ms`` (every gap between two tokens), and
                               ``hist_ttft_ms/<a>`` per adapter
``settings`` (TEXT tab)        the engine's and the benchmark's settings of the run
=============================  ==================================================================

The HPARAMS tab tabulates the runs by their settings (policy, threshold, slots, rate, backend ...)
beside their scalars.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax

from jlora.bench.driver import RunResult, StepRecord
from jlora.engine import Engine
from jlora.tensorboard_scalars import ScalarWriter


def _adapter(name: str | None) -> str:
    return "base" if name is None else name


class TensorBoardTrace:
    """A driver observer writing one TensorBoard run directory (see the module's docstring for
    its tags and axes).

    The engine's state is written at most once per ``interval_s`` of the run's time (a simulated
    run takes thousands of steps a second; each point costs a record with a checksum computed in
    Python): the step figures over the interval and the queues and adapters as it ends.
    ``settings``: the run's settings by name, written as the TEXT summary ``settings`` (a table)
    and as HPARAMS (values other than bool, int, float and str as their text).
    """

    def __init__(
        self,
        log_dir: str | Path,
        adapters: list[str | None],
        interval_s: float = 0.05,
        settings: dict[str, object] | None = None,
    ):
        self.writer = ScalarWriter(log_dir)
        self.adapters = adapters
        self.interval_s = interval_s
        self.wall_start = time.time()
        self._since = 0.0  # run time of the last point written
        self._steps: list[StepRecord] = []
        if settings:
            rows = "\n".join(f"| {k} | `{v!r}` |" for k, v in settings.items())
            self.writer.text("settings", "| setting | value |\n| --- | --- |\n" + rows)
            self.writer.hparams(
                {
                    k: v if isinstance(v, bool | int | float | str) else repr(v)
                    for k, v in settings.items()
                }
            )

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
        ttft, e2e, tpot, itl = [], [], [], []
        per_adapter: dict[str, list[float]] = {}
        for o in result.outputs:
            if o.first_token_time is None:
                continue
            t = o.arrival_time - result.start
            values = {"request/ttft_ms": o.ttft * 1e3, "request/e2e_ms": o.e2e * 1e3}
            values[f"request_ttft_ms/{_adapter(o.lora_name)}"] = o.ttft * 1e3
            gaps = [1e3 * (b - a) for a, b in zip(o.token_times, o.token_times[1:], strict=False)]
            if gaps:
                values["request/tpot_ms"] = (o.e2e - o.ttft) * 1e3 / len(gaps)
                values["request/itl_mean_ms"] = sum(gaps) / len(gaps)
                values["request/itl_max_ms"] = max(gaps)
                tpot.append(values["request/tpot_ms"])
                itl += gaps
            ttft.append(o.ttft * 1e3)
            e2e.append(o.e2e * 1e3)
            per_adapter.setdefault(_adapter(o.lora_name), []).append(o.ttft * 1e3)
            self.writer.scalars(values, int(t * 1e3), wall_time=self.wall_start + t)
        end = self.wall_start + result.duration
        for tag, values in (("ttft_ms", ttft), ("e2e_ms", e2e), ("tpot_ms", tpot), ("itl_ms", itl)):
            if values:
                self.writer.histogram(f"hist/{tag}", values, 0, wall_time=end)
        for a, values in per_adapter.items():
            self.writer.histogram(f"hist_ttft_ms/{a}", values, 0, wall_time=end)
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
