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

import numpy as np

from jlora.bench.driver import RunResult
from jlora.bench.metrics import compute_metrics

COMPARED = ("median_ttft_ms", "p99_ttft_ms", "median_e2e_latency_ms", "p99_e2e_latency_ms")
# Shown beside the compared metrics: where a TTFT distribution is bimodal (adapters waiting for a
# slot), its median can sit on the gap between the modes, and these say how the mass is split.
DISTRIBUTION = ("p25_ttft_ms", "p75_ttft_ms", "ttft_under_1s_pct")
FAST_TTFT_S = 1.0


def ttfts_ms(run: RunResult) -> list[float]:
    """Per request, in workload order: TTFT in ms (NaN where the request failed)."""
    return [
        float("nan") if o.error is not None or o.first_token_time is None else 1e3 * o.ttft
        for o in run.outputs
    ]


def run_metrics(run: RunResult) -> dict[str, float]:
    """The compared metrics, the TTFT distribution details, duration and step count of a run."""
    m = compute_metrics(run.outputs, run.duration)
    ttft = np.asarray([x for x in ttfts_ms(run) if x == x])
    out = {k: m[k] for k in COMPARED}
    out["p25_ttft_ms"] = float(np.percentile(ttft, 25))
    out["p75_ttft_ms"] = float(np.percentile(ttft, 75))
    out["ttft_under_1s_pct"] = float(100 * np.mean(ttft < 1e3 * FAST_TTFT_S))
    out["duration_s"] = run.duration
    out["steps"] = len(run.steps)
    return out


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
    """Per metric of :func:`run_metrics`: (real, simulated, relative error of the simulated
    one)."""
    a, b = run_metrics(real), run_metrics(sim)
    return {k: (a[k], b[k], b[k] / a[k] - 1 if a[k] else float("nan")) for k in a}


def format_comparison(rows: dict[str, tuple[float, float, float]]) -> str:
    lines = ["| metric | real | simulated | error |", "| --- | ---: | ---: | ---: |"]
    for k, (a, b, e) in rows.items():
        lines.append(f"| {k} | {a:.1f} | {b:.1f} | {100 * e:+.1f}% |")
    return "\n".join(lines)
