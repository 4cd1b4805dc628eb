"""Fidelity: the same workload through the real engine and through the simulator, compared.

Both runs go through :func:`jlora.bench.driver.run_workload` with the same engine configuration;
the real one on the device and a clock, the simulated one on :func:`jlora.sim.make_sim_engine` with
a cost model calibrated on that device. The comparison is on the serving metrics
(:func:`jlora.bench.metrics.compute_metrics`): median and P99 of TTFT and E2E.

On a CPU shared with other work, wall time measures the neighbours as much as the engine, so the
CPU comparison (calibration and real run alike) can read :class:`CpuClock`: the process's CPU time,
which does not move while the process is descheduled, and which jumps over idle gaps as the
simulator's clock does. On a GPU the wall clock is the one to use (the device's time is not the
process's CPU time).
"""

from __future__ import annotations

import time

from jlora.bench.driver import RunResult
from jlora.bench.metrics import compute_metrics

COMPARED = ("median_ttft_ms", "p99_ttft_ms", "median_e2e_latency_ms", "p99_e2e_latency_ms")


class CpuClock:
    """Seconds of this process's CPU time, plus the idle gaps it was told to skip.

    ``sleep_until`` jumps (as :class:`~jlora.clock.FakeClock` does) instead of waiting: waiting
    would not move a CPU-time clock. Use it on a CPU only, with the engine's work on this process.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.process_time() + self.offset

    def sleep_until(self, t: float) -> None:
        self.offset += max(0.0, t - self.now())


def compare(real: RunResult, sim: RunResult) -> dict[str, tuple[float, float, float]]:
    """Per compared metric: (real, simulated, relative error of the simulated one)."""
    a = compute_metrics(real.outputs, real.duration)
    b = compute_metrics(sim.outputs, sim.duration)
    out = {k: (a[k], b[k], b[k] / a[k] - 1) for k in COMPARED}
    out["duration_s"] = (real.duration, sim.duration, sim.duration / real.duration - 1)
    out["steps"] = (len(real.steps), len(sim.steps), len(sim.steps) / len(real.steps) - 1)
    return out


def format_comparison(rows: dict[str, tuple[float, float, float]]) -> str:
    lines = ["| metric | real | simulated | error |", "| --- | ---: | ---: | ---: |"]
    for k, (a, b, e) in rows.items():
        lines.append(f"| {k} | {a:.1f} | {b:.1f} | {100 * e:+.1f}% |")
    return "\n".join(lines)
