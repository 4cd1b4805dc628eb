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
import time
from collections.abc import Callable

import jax
import numpy as np
from profile_decode import host_events

from jlora.config import GRAPH_SCHEDULING, EngineConfig
from jlora.engine import Engine
from jlora.sampling_params import SamplingParams

ADAPTERS = ("a0", "a1", "a2")


def step_times_ms(
    engine: Engine,
    names: list[str | None],
    steps: int,
    before_step: Callable[[int], None] = lambda i: None,
) -> np.ndarray:
    """Wall time of each of ``steps`` decode steps of one request per entry of ``names``
    (``before_step(i)`` is called untimed before the i-th)."""
    rng = np.random.default_rng(0)
    params = SamplingParams(max_new_tokens=steps + 20, ignore_eos=True)
    vocab = engine.model_config.vocab_size
    rids = [engine.add_request(rng.integers(3, vocab, 128).tolist(), params, n) for n in names]
    while engine.scheduler.waiting or any(engine.requests[r].in_prefill for r in rids):
        engine.step()
    for _ in range(3):
        engine.step()
    times = []
    for i in range(steps):
        before_step(i)
        t = time.perf_counter()
        engine.step()
        times.append(1e3 * (time.perf_counter() - t))
        assert engine.last_plan.kind == "decode"
    for r in rids:
        engine.abort(r)
    while engine.has_unfinished():
        engine.step()
    return np.asarray(times)


def engine_arguments(p: argparse.ArgumentParser, steps: int) -> None:
    """The options of :func:`make_engine` and of the steps timed."""
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--lora-backend", default="pallas", help="xla, pallas, or none (LoRA off)")
    p.add_argument("--graph-scheduling", default="concurrent", choices=GRAPH_SCHEDULING)
    p.add_argument(
        "--stage-host-inputs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="EngineConfig.stage_host_inputs (default: staged on GPU)",
    )
    p.add_argument("--batches", default="1,16,64")
    p.add_argument("--steps", type=int, default=steps)


def make_engine(args: argparse.Namespace) -> tuple[Engine, tuple[int, ...]]:
    """The engine of ``args`` (:func:`engine_arguments`), overlap scheduling on, and its
    decode batches."""
    batches = tuple(int(b) for b in args.batches.split(","))
    bare = args.lora_backend == "none"
    engine = Engine(
        EngineConfig(
            model=args.model,
            load_format="dummy",
            lora_paths={} if bare else {n: "dummy:16" for n in ADAPTERS},
            enable_lora=not bare,
            max_loras_per_batch=len(ADAPTERS),
            max_lora_rank=16,
            lora_backend="xla" if bare else args.lora_backend,
            graph_scheduling=args.graph_scheduling,
            stage_host_inputs=args.stage_host_inputs,
            context_length=1024,
            max_running_requests=max(batches),
            max_prefill_tokens=2048,
            decode_batch_buckets=batches,
            prefill_token_buckets=(2048,),
            kv_len_buckets=(1024,),
            max_total_tokens=max(batches) * 1024,
            overlap_schedule=True,
        )
    )
    print(
        f"{jax.devices()[0].device_kind}, jax {jax.__version__}, lora {args.lora_backend}, "
        f"graph {args.graph_scheduling}, stage_host_inputs {args.stage_host_inputs}, "
        "overlap scheduling"
    )
    return engine, batches


def adapter_mixes(engine: Engine, batch: int) -> list[tuple[bool, list[str | None]]]:
    """The requests' adapters of a decode batch: none, then (LoRA on) three adapters in turn."""
    mixes = [(False, [None] * batch)]
    if engine.config.enable_lora:
        mixes.append((True, [ADAPTERS[i % len(ADAPTERS)] for i in range(batch)]))
    return mixes


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
