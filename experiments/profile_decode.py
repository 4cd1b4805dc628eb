"""Where a decode step's time goes: device-only step time against the engine's full step, with a
large and a small KV cache (a step that copied the cache would slow with its size), with each
decode attention backend (``xla`` gathers the page table's pages, ``pallas`` reads each sequence's
own pages in place), the sampler alone, and XLA's own estimate of the bytes the step touches.

    PYTHONPATH=. python experiments/profile_decode.py --model llama-3.1-8b
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jlora import Engine, EngineConfig, SamplingParams
from jlora.runner import model_runner as mr
from jlora.runner.attention import DecodeAttention
from jlora.runner.sampling import SamplingInputs, sample


def _median_ms(fn, reps: int = 20) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def _measure(engine: Engine, b: int, context: int, attention_backend: str) -> float:
    r = engine.runner
    kv_gb = (r.kv.k.nbytes + r.kv.v.nbytes) / 1e9
    pages = context // engine.config.page_size
    rng = np.random.default_rng(0)
    page_table = rng.integers(1, engine.pages.num_pages, (b, pages)).astype(np.int32)
    att = DecodeAttention(
        slot_mapping=jnp.asarray(page_table[:, 8] * engine.config.page_size),
        page_table=jnp.asarray(page_table),
        seq_lens=jnp.full(b, 129, jnp.int32),
        backend=attention_backend,
    )
    tokens = jnp.asarray(rng.integers(0, 1000, b).astype(np.int32))
    positions = jnp.full(b, 128, jnp.int32)
    lb = r._lora_batch(np.full(b, -1))
    sampling = SamplingInputs.build([], b, engine.model_config.vocab_size)

    inputs = (tokens, positions, att, lb, sampling)
    static = {"cfg": r.cfg, "lora_backend": "xla", "mesh": r.mesh}

    def step():
        out, r.kv = mr.model_step(r.params, r.slots.layers, r.kv, *inputs, **static)
        out.block_until_ready()

    device_ms = _median_ms(step)
    lowered = mr.model_step.lower(r.params, r.slots.layers, r.kv, *inputs, **static)
    cost = lowered.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    gb = cost.get("bytes accessed", float("nan")) / 1e9
    print(
        f"kv cache {kv_gb:5.1f} GB  B={b:3d}  attention={attention_backend:6s}: device-only step "
        f"{device_ms:6.2f} ms, XLA bytes accessed {gb:6.1f} GB"
    )
    return device_ms


def _measure_engine_step(engine: Engine, b: int, host_profile: bool) -> None:
    rids = [
        engine.add_request([5] * 128, SamplingParams(max_new_tokens=100, ignore_eos=True))
        for _ in range(b)
    ]
    while any(engine.requests[x].in_prefill for x in rids):
        engine.step()
    engine_ms = _median_ms(engine.step)
    if host_profile:  # where the host's share of a step goes
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(20):
            engine.step()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)
    for x in rids:
        engine.abort(x)
    print(
        f"  B={b:3d}: engine.step {engine_ms:6.2f} ms (attention={engine.runner.attention_backend})"
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--host-profile", action="store_true", help="cProfile 20 engine steps")
    args = p.parse_args()
    print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}")
    for total_tokens in (128 * args.context, 8 * args.context):
        engine = Engine(
            EngineConfig(
                model=args.model,
                load_format="dummy",
                context_length=args.context,
                max_running_requests=64,
                max_prefill_tokens=1024,
                decode_batch_buckets=(1, 64),
                prefill_token_buckets=(1024,),
                kv_len_buckets=(args.context,),
                max_total_tokens=total_tokens,
                warmup=False,
                lora_paths={"a": "dummy:16"},
                max_lora_rank=16,
                max_loras_per_batch=1,
            )
        )
        for b in (1, 64):
            if b <= total_tokens // args.context:
                for backend in ("xla", "pallas"):
                    _measure(engine, b, args.context, backend)
                _measure_engine_step(engine, b, args.host_profile)
        del engine
        gc.collect()  # free its device buffers before the next engine allocates its own
    logits = jax.random.normal(jax.random.key(0), (64, 128256), jnp.float32)
    s = SamplingInputs.build([], 64, 128256)
    fn = jax.jit(sample)
    print(
        "sampler alone, B=64 x 128256: "
        f"{_median_ms(lambda: fn(logits, s).block_until_ready()):.2f} ms"
    )
    fn_greedy = jax.jit(lambda x: jnp.argmax(x, -1))
    print(f"argmax alone, B=64: {_median_ms(lambda: fn_greedy(logits).block_until_ready()):.2f} ms")


if __name__ == "__main__":
    main()
