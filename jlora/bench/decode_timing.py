"""Decode step time of an engine, as the engine and tensor-parallel benchmarks measure it."""

from __future__ import annotations

import statistics
import time

import numpy as np

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
