"""Decode step time of an engine, as the engine and tensor-parallel benchmarks measure it, and the
per-step times of ``experiments/step_spread.py`` and ``experiments/graph_rewrites.py`` (one
engine setting, built from their shared flags)."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import numpy as np

from jlora.config import GRAPH_SCHEDULING, EngineConfig
from jlora.engine import Engine
from jlora.sampling_params import SamplingParams


def median_decode_step_ms(
    engine: Engine,
    lora_names: list[str | None],
    steps: int,
    prompt_len: int = 128,
    warm: int = 3,
    seed: int = 0,
) -> float:
    """Median wall time (ms) of ``engine.step`` over ``steps`` decode steps of one batch.

    One request per entry of ``lora_names`` (random prompts of ``prompt_len`` tokens, outputs long
    enough to decode throughout) is prefilled, then ``warm`` steps run untimed; each timed step
    must be a decode of the whole batch. The requests are aborted at the end, so the engine can
    time another batch.
    """
    rng = np.random.default_rng(seed)
    params = SamplingParams(max_new_tokens=steps + warm + 8, ignore_eos=True)
    vocab = engine.model_config.vocab_size
    rids = [
        engine.add_request(rng.integers(3, vocab, prompt_len).tolist(), params, name)
        for name in lora_names
    ]
    while engine.scheduler.waiting or any(engine.requests[r].in_prefill for r in rids):
        engine.step()
    for _ in range(warm):
        engine.step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t)
        plan = engine.last_plan
        assert plan.kind == "decode" and len(plan.decode) == len(lora_names), plan.kind
    for r in rids:
        engine.abort(r)
    return 1e3 * statistics.median(times)


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
