"""How often XLA rewrites a decode step's CUDA graph, and how much host time the rewrite takes.

On GPU a step runs as one CUDA graph. Before each launch XLA compares the addresses of the buffers
that the graph's nodes use with those of the last launch, and rewrites the nodes whose buffers
moved. Its ``command_buffer_thunk`` logs, at verbosity 3, each rewrite with the number of buffer
allocations that changed and the microseconds the rewrite took. This script turns that log on,
runs ``--steps`` decode steps of ``step_spread.py``'s engine (:mod:`jlora.bench.decode_timing`:
Llama-3.1-8B preset, dummy weights, three rank-16 adapters, overlap scheduling) per batch and
adapter mix, reads the log of those steps back, and prints per step: rewrites, changed
allocations, rewrite time, and step time.
Compare ``--stage-host-inputs`` (the default on GPU) with ``--no-stage-host-inputs``
(``EngineConfig.stage_host_inputs``). On CPU there is no graph and nothing is logged.

    PYTHONPATH=. python experiments/graph_rewrites.py --lora-backend pallas --batches 16
"""

from __future__ import annotations

import os

# Before jax loads XLA: its C++ log at INFO, and verbosity 3 for the command-buffer thunk only.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
os.environ["TF_CPP_VMODULE"] = "command_buffer_thunk=3"

import argparse  # noqa: E402
import collections  # noqa: E402
import functools  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402

from jlora.bench.decode_timing import (  # noqa: E402
    adapter_mixes,
    engine_arguments,
    make_engine,
    step_times_ms,
)

MARK = "jlora-graph-rewrites step "
CHANGED = re.compile(r"updated_allocs=(\d+)")
REWRITE_US = re.compile(r"Updated command buffer in (\d+)")


def with_captured_stderr(fn):
    """``fn()`` with file descriptor 2, where XLA logs, sent to a file: (its result, the text)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 2)
        try:
            result = fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        return result, f.read().decode(errors="replace")


def rewrites_per_step(log: str, steps: int) -> list[list[tuple[int, int]]]:
    """(changed allocations, microseconds) of each rewrite logged in each step's call."""
    per_step: list[list[tuple[int, int]]] = [[] for _ in range(steps)]
    step, changed = None, None
    for line in log.splitlines():
        if line.startswith(MARK):
            step = int(line[len(MARK) :])
        elif step is not None and (m := CHANGED.search(line)):
            changed = int(m.group(1))
        elif step is not None and changed is not None and (m := REWRITE_US.search(line)):
            per_step[step].append((changed, int(m.group(1))))
            changed = None
    return per_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    engine_arguments(p, steps=40)
    p.add_argument("--skip", type=int, default=5, help="first steps left out of the figures")
    args = p.parse_args()
    engine, batches = make_engine(args)

    def mark(i: int) -> None:
        os.write(2, f"\n{MARK}{i}\n".encode())

    for b in batches:
        for lora, names in adapter_mixes(engine, b):
            run = functools.partial(step_times_ms, engine, names, args.steps, mark)
            times, log = with_captured_stderr(run)
            steps = rewrites_per_step(log, args.steps)[args.skip :]
            rewrites = [r for step in steps for r in step]
            changed = collections.Counter(c for c, _ in rewrites)
            us = [u for _, u in rewrites] or [0]
            print(
                f"B={b:3d} adapters={lora!s:5}: step p50 {np.median(times[args.skip :]):.2f} ms; "
                f"{len(rewrites)} rewrites in {len(steps)} steps; changed allocations "
                f"{dict(sorted(changed.items()))}; rewrite p50 {np.median(us):.0f} us, "
                f"p90 {np.percentile(us, 90):.0f} us",
                flush=True,
            )


if __name__ == "__main__":
    main()
