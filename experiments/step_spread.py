"""How much one engine's decode step varies from step to step, and where its host time goes.

Builds one engine (Llama-3.1-8B preset by default, dummy weights, three rank-16 adapters in three
slots, overlap scheduling on) and times ``--steps`` single ``Engine.step`` calls of decode batches
of 1, 16 and 64 requests, without and with adapters: percentiles, the largest, and the first
steps in order. ``--host-trace`` then traces ten steps of one request and prints the host's events
by time per step (``profile_decode.py``'s reader): the jitted step's dispatch, the CUDA graph's
update and launch. A step that the host cannot dispatch as fast as the device runs it is bound by
the host, and varies with it.

    PYTHONPATH=. python experiments/step_spread.py --lora-backend pallas --host-trace
"""

from __future__ import annotations

import argparse

import numpy as np

from jlora.bench.decode_timing import adapter_mixes, engine_arguments, make_engine, step_times_ms
from jlora.bench.profiling import host_events
from jlora.sampling_params import SamplingParams


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    engine_arguments(p, steps=100)
    p.add_argument("--host-trace", action="store_true")
    args = p.parse_args()
    engine, batches = make_engine(args)
    for b in batches:
        for lora, names in adapter_mixes(engine, b):
            t = step_times_ms(engine, names, args.steps)
            p10, p50, p90 = np.percentile(t, [10, 50, 90])
            print(
                f"B={b:3d} adapters={lora!s:5}: p10 {p10:.2f} p50 {p50:.2f} p90 {p90:.2f} "
                f"max {t.max():.2f} ms; first steps: {' '.join(f'{x:.1f}' for x in t[:12])}",
                flush=True,
            )
    if args.host_trace:
        params = SamplingParams(max_new_tokens=200, ignore_eos=True)
        rid = engine.add_request([5] * 128, params)
        while engine.requests[rid].in_prefill:
            engine.step()
        for _ in range(5):
            engine.step()
        host_events(engine.step, 10, top=20)


if __name__ == "__main__":
    main()
