"""Prefill speed against the matmul peak: the attention of one layer alone (dense XLA, the Pallas
flash kernel at a few tilings, cuDNN through ``jax.nn.dot_product_attention``), then whole
prefill steps of the engine (512 and 2048 tokens of 512-token prompts) with each attention
backend, with LoRA off and with three rank-16 adapters, and the start-up time of the default
engine (every bucket of the preset compiled).

    PYTHONPATH=. python experiments/bench_prefill.py --model llama-3.1-8b --json prefill.json

(it prints its figures and writes them, raw, to ``--json``; it writes no results file)

The matmul floor of a token is ``2 x`` the parameters its projections read (every layer's
q|k|v, o, gate|up, down; the embedding is a lookup and the LM head runs on sampled rows only);
``--peak-tflops`` is the bf16 matmul ceiling measured on the machine (790 on the H100).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

ADAPTERS = ("a0", "a1", "a2")


def _time_calls(fn, *args, reps: int = 20) -> float:
    """Median ms of ``fn(*args)`` over ``reps`` calls, each waited for (compiled beforehand)."""
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _attention_inputs(cfg, num_tokens: int, prompt_len: int, num_prefix: int):
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    hq, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q = jnp.asarray(rng.normal(size=(num_tokens, hq, d)), jnp.bfloat16)
    k, v = (jnp.asarray(rng.normal(size=(num_tokens, hkv, d)), jnp.bfloat16) for _ in range(2))
    pk, pv = (jnp.asarray(rng.normal(size=(num_prefix, hkv, d)), jnp.bfloat16) for _ in range(2))
    seq = np.arange(num_tokens, dtype=np.int32) // prompt_len
    pos = np.arange(num_tokens, dtype=np.int32) % prompt_len
    step = (jnp.asarray(seq), jnp.asarray(pos), jnp.int32(0), jnp.int32(-2))
    return (q, k, v, pk, pv, *step)


def attention_part(args, cfg) -> dict:
    """One layer's prefill attention at each variant; the flash variants checked against dense."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jlora.kernels.prefill_attention import (
        PrefillAttentionBlocks,
        prefill_attention_gpu,
        prefill_attention_ref,
    )

    out: dict = {}
    tilings = [PrefillAttentionBlocks(*map(int, t.split("x"))) for t in args.tilings.split(",")]
    for num_tokens in (512, 2048):
        inputs = _attention_inputs(cfg, num_tokens, args.prompt_len, args.context)
        ref_fn = jax.jit(prefill_attention_ref)
        want = np.asarray(ref_fn(*inputs), np.float32)
        row = {"xla": _time_calls(ref_fn, *inputs)}
        for blocks in tilings:
            fn = jax.jit(lambda *a, b=blocks: prefill_attention_gpu(*a, blocks=b))
            got = np.asarray(fn(*inputs), np.float32)
            name = (
                f"pallas {blocks.block_q}x{blocks.block_k}w{blocks.num_warps}s{blocks.num_stages}"
            )
            row[name] = _time_calls(fn, *inputs)
            row[name + " max_err"] = float(np.abs(got - want).max())
        q, k, v, pk, pv, seq, pos, _, _ = inputs
        mask = (seq[:, None] == seq[None, :]) & (pos[None, :] <= pos[:, None])

        def cudnn(q, k, v, mask):
            return jax.nn.dot_product_attention(
                q[None], k[None], v[None], mask=mask[None, None], implementation="cudnn"
            )[0]

        try:  # the step's own keys only: the prefix is empty in this case
            fn = jax.jit(cudnn)
            got = np.asarray(fn(q, k, v, mask), np.float32)
            row["cudnn (mask)"] = _time_calls(fn, q, k, v, mask)
            row["cudnn (mask) max_err"] = float(np.abs(got - want).max())
        except Exception as e:  # noqa: BLE001 - report what cuDNN refused
            row["cudnn (mask)"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        print(f"attention T={num_tokens}: {json.dumps(row)}", flush=True)
        out[str(num_tokens)] = row
        del inputs
        jnp.zeros(()).block_until_ready()
    return out


def _engine(args, attention: str, lora: str | None):
    from jlora.config import EngineConfig
    from jlora.engine import Engine

    return Engine(
        EngineConfig(
            model=args.model,
            load_format="dummy",
            dtype="bfloat16",
            lora_paths={n: "dummy:16" for n in ADAPTERS} if lora else {},
            enable_lora=bool(lora),
            max_loras_per_batch=3,
            max_lora_rank=16,
            lora_backend=lora or "xla",
            attention_backend=attention,
            context_length=args.context,
            max_running_requests=8,
            max_prefill_tokens=2048,
            prefill_token_buckets=(512, 2048),
            decode_batch_buckets=(8,),
            kv_len_buckets=(args.context,),
            max_total_tokens=8 * args.context,
        )
    )


def _prefill_tok_s(engine, per_step: int, adapters: bool, reps: int) -> list[float]:
    """Tokens/s of ``reps`` prefill steps of ``per_step`` 512-token prompts (after one untimed
    step, which loads the adapters), each through ``Engine.step`` and waited for."""
    import numpy as np

    from jlora.sampling_params import SamplingParams

    rng = np.random.default_rng(per_step)
    params = SamplingParams(max_new_tokens=1, ignore_eos=True)
    rates = []
    for rep in range(reps + 1):
        for i in range(per_step):
            prompt = rng.integers(3, engine.model_config.vocab_size, 512).tolist()
            engine.add_request(prompt, params, ADAPTERS[i % 3] if adapters else None)
        t = time.perf_counter()
        engine.step()
        dt = time.perf_counter() - t
        plan = engine.last_plan
        assert plan.kind == "prefill" and len(plan.prefill) == per_step, plan
        if rep:
            rates.append(512 * per_step / dt)
        while engine.has_unfinished():
            engine.step()
    return rates


def engine_part(args) -> dict:
    out: dict = {}
    settings = [s.split(":") for s in args.settings.split(",")]
    for attention, lora in settings:
        lora = None if lora == "none" else lora
        label = f"attention={attention} lora={lora or 'off'}"
        t0 = time.perf_counter()
        engine = _engine(args, attention, lora)
        startup = time.perf_counter() - t0
        row: dict = {"startup_s": startup}
        for per_step in (1, 4):
            rates = _prefill_tok_s(engine, per_step, adapters=bool(lora), reps=args.reps)
            row[str(512 * per_step)] = {"median": statistics.median(rates), "all": rates}
        print(f"{label}: {json.dumps(row)}", flush=True)
        out[label] = row
        del engine
        gc.collect()
    return out


def startup_part(args) -> dict:
    """Start-up of the engine with every default (buckets, backends) and three adapters."""
    from jlora.config import EngineConfig
    from jlora.engine import Engine

    t0 = time.perf_counter()
    engine = Engine(
        EngineConfig(
            model=args.model,
            load_format="dummy",
            lora_paths={n: "dummy:16" for n in ADAPTERS},
            max_lora_rank=16,
        )
    )
    row = {
        "startup_s": time.perf_counter() - t0,
        "shapes": len(engine.buckets.all_shapes()),
    }
    print(f"default start-up: {json.dumps(row)}", flush=True)
    del engine
    gc.collect()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--context", type=int, default=1024, help="context length (tokens)")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument(
        "--tilings",
        default="64x64x4,128x64x8,64x128x4",
        help="flash kernel tilings block_q x block_k x num_warps [x num_stages], comma-separated",
    )
    parser.add_argument(
        "--settings",
        default="xla:none,pallas:none,xla:pallas,pallas:pallas",
        help="engines to time, attention_backend:lora_backend (none: LoRA off)",
    )
    parser.add_argument("--reps", type=int, default=5, help="timed prefill steps per size")
    parser.add_argument("--peak-tflops", type=float, default=790.0)
    parser.add_argument("--skip", default="", help="parts to skip: attention,engine,startup")
    parser.add_argument("--json", default=None, help="write the raw results here")
    args = parser.parse_args()

    import jax

    from models.presets import get_preset

    cfg = get_preset(args.model)
    skip = set(filter(None, args.skip.split(",")))
    embed = cfg.vocab_size * cfg.hidden_size
    matmul_params = cfg.num_params() - embed - (0 if cfg.tie_word_embeddings else embed)
    result = {
        "model": args.model,
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "gflop_per_token": 2 * matmul_params / 1e9,
        "floor_tok_s": args.peak_tflops * 1e12 / (2 * matmul_params),
    }
    print(json.dumps(result), flush=True)
    if "attention" not in skip:
        result["attention_ms"] = attention_part(args, cfg)
    if "engine" not in skip:
        result["engine"] = engine_part(args)
    if "startup" not in skip:
        result["startup_default"] = startup_part(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
