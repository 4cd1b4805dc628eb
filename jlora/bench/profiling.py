"""Profiling an engine's steps on the host: a ``jax.profiler`` trace of a few calls read back, and
the host's events by time per call (what ``experiments/profile_decode.py`` and
``experiments/step_spread.py`` print)."""

from __future__ import annotations

import collections
import glob
import tempfile
import time

import jax


def profile_calls(step, steps: int):
    """Run ``steps`` calls of ``step`` under the profiler: (wall ms per call, the trace read back
    as ``jax.profiler.ProfileData``, or None if no trace was written)."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with jax.profiler.trace(tmp):
            for _ in range(steps):
                step()
        wall_ms = 1e3 * (time.perf_counter() - t0) / steps
        files = glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True)
        return wall_ms, jax.profiler.ProfileData.from_file(files[0]) if files else None


def host_events(step, steps: int, top: int = 30) -> None:
    """Trace ``steps`` calls of ``step``; print the host's events by total time per call."""
    _, data = profile_calls(step, steps)
    total: dict[str, float] = collections.defaultdict(float)
    count: dict[str, int] = collections.Counter()
    for plane in data.planes if data else ():
        if plane.name.startswith("/host"):
            for line in plane.lines:
                for e in line.events:
                    total[e.name[:110]] += e.duration_ns
                    count[e.name[:110]] += 1
    print("  host events, by total time per step:")
    for name, ns in sorted(total.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {ns / 1e6 / steps:7.3f} ms/step {count[name] / steps:6.1f} x  {name}")
