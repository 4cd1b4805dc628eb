"""Benchmark one serving step's LoRA work: our Pallas kernels against the XLA baselines.

The unit is a whole step as the forward runs it: all seven target modules (4 groups: qkv, o,
gate_up, down) of all layers of Llama-3.1-8B, unrolled in one jitted program, per token count and
adapter mix. Methods:

- ``pallas``: :func:`jlora.kernels.lora_gpu.lora_group_gpu` (tuned blocks), one call per group;
- ``onehot``: one-hot einsum over all slots (sglang-jax's bgmv backend, vLLM-TPU);
- ``gather``: per-token gather of each token's A and B, then batched matmuls (decode sizes only:
  it materialises T copies of the weights);
- ``ragged``: ``jax.lax.ragged_dot`` over the slot-sorted tokens (shrink, then expand per module);
- ``base``: the base projections of the same layers (x @ W), for scale.

Baselines return each module's delta separately (no concatenation), their most favourable form.
Every method reads its own layer's weights and one of several input sets (rotated so that inputs
do not sit in L2 across layers). Times are wall-clock medians of pipelined calls after warm-up,
on random non-zero data; ``kernels`` is the sum of the kernels' own durations (CUPTI), so
``time - kernels`` is launch overhead. The floor is the bytes a fused implementation must move
(each used adapter's weights at its own rank, each group's input once and its output once) over
the copy ceiling.

    PYTHONPATH=. python3 experiments/bench_kernels.py            # full run, writes the results
    PYTHONPATH=. python3 experiments/bench_kernels.py --tune     # also tune the GPU block sizes
    JAX_PLATFORMS=cpu PYTHONPATH=. python3 experiments/bench_kernels.py --small  # CPU smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import gc
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jlora.kernels import tuned_blocks
from jlora.kernels.lora_gpu import lora_group_gpu
from jlora.kernels.lora_xla import lora_group_ref
from jlora.kernels.tuned_blocks import GpuBlocks, gpu_blocks, token_bucket
from jlora.kernels.types import LoraGroup, make_lora_batch

COPY_CEILING = 2.9e12  # bytes/s, the H100's device-to-device copy (read + write)

# group -> (d_in, out_sizes) of Llama-3.1-8B (hidden 4096, kv 1024, intermediate 14336)
LLAMA_8B = {
    "qkv": (4096, (4096, 1024, 1024)),
    "o": (4096, (4096,)),
    "gate_up": (4096, (14336, 14336)),
    "down": (14336, (4096,)),
}
SMALL = {
    "qkv": (64, (64, 16, 16)),
    "o": (64, (64,)),
    "gate_up": (64, (128, 128)),
    "down": (128, (64,)),
}

# name -> rank of each of the 8 slots (0 = empty slot), max rank 64
SCENARIOS = {
    "3x16": (16, 16, 16, 0, 0, 0, 0, 0),
    "8_16_64": (8, 16, 64, 0, 0, 0, 0, 0),
    "mixed8": (8, 8, 16, 16, 32, 32, 64, 64),
}
SCENARIO_TEXT = {
    "3x16": "3 adapters of rank 16",
    "8_16_64": "3 adapters of ranks 8, 16, 64",
    "mixed8": "8 adapters of ranks 8, 8, 16, 16, 32, 32, 64, 64",
}
NUM_SLOTS, MAX_RANK = 8, 64


def log(*a):
    print(*a, flush=True)


# ------------------------------------------------------------------------------------------------
# Data.


def make_weights(key, shapes, layers: int, dtype) -> list[dict[str, LoraGroup]]:
    """Random full-rank slot buffers for every layer and group (ranks are masked per scenario)."""
    out = []
    for layer in range(layers):
        groups = {}
        for gi, (name, (d_in, outs)) in enumerate(shapes.items()):
            ka, kb, ks = jax.random.split(jax.random.fold_in(key, layer * 8 + gi), 3)
            a = jax.random.normal(ka, (NUM_SLOTS, len(outs), MAX_RANK, d_in), dtype) * (d_in**-0.5)
            b = jax.random.normal(kb, (NUM_SLOTS, sum(outs), MAX_RANK), dtype) * 0.25
            scale = jax.random.uniform(ks, (NUM_SLOTS, len(outs)), jnp.float32, 0.5, 2.0)
            groups[name] = LoraGroup(a=a, b=b, scale=scale)
        out.append(groups)
    return out


@jax.jit
def _mask_ranks(group: LoraGroup, ranks: jax.Array) -> LoraGroup:
    live = jnp.arange(group.a.shape[2])[None, :] < ranks[:, None]  # [S, R]
    return LoraGroup(
        a=group.a * live[:, None, :, None].astype(group.a.dtype),
        b=group.b * live[:, None, :].astype(group.b.dtype),
        scale=group.scale,
    )


def routing(num_tokens: int, ranks: tuple[int, ...]) -> np.ndarray:
    """Tokens split evenly among the loaded adapters, in contiguous runs by ascending slot."""
    live = [s for s, r in enumerate(ranks) if r > 0]
    return np.array([live[t * len(live) // num_tokens] for t in range(num_tokens)], np.int32)


def make_inputs(key, shapes, num_tokens: int, num_sets: int, dtype) -> list[dict[str, jax.Array]]:
    return [
        {
            name: jax.random.normal(
                jax.random.fold_in(key, 100 * i + gi), (num_tokens, d_in), dtype
            )
            for gi, (name, (d_in, _)) in enumerate(shapes.items())
        }
        for i in range(num_sets)
    ]


def floor_bytes(shapes, num_tokens: int, ranks: tuple[int, ...], token_slot, layers: int) -> int:
    used = sorted(set(int(s) for s in token_slot if s >= 0))
    rank_sum = sum(ranks[s] for s in used)
    per_layer = 0
    for d_in, outs in shapes.values():
        per_layer += rank_sum * (len(outs) * d_in + sum(outs)) * 2  # A and B at own rank, bf16
        per_layer += num_tokens * (d_in + sum(outs)) * 2  # input once, output once
    return per_layer * layers


# ------------------------------------------------------------------------------------------------
# Methods: (x [T, d_in], group, batch, out_sizes, extra) -> delta (array or tuple of per-module).


def onehot_parts(x, group, batch, outs, extra):
    num_slots = group.a.shape[0]
    onehot = jax.nn.one_hot(batch.token_slot, num_slots, dtype=jnp.float32)
    h = jnp.einsum("td,smrd->tsmr", x, group.a, preferred_element_type=jnp.float32)
    h = h * jnp.einsum("ts,sm->tsm", onehot, group.scale)[..., None]
    h = h.astype(group.b.dtype)
    parts, off = [], 0
    for m, size in enumerate(outs):
        y = jnp.einsum("tsr,sor->to", h[:, :, m], group.b[:, off : off + size])
        parts.append(y.astype(x.dtype))
        off += size
    return tuple(parts)


def gather_parts(x, group, batch, outs, extra):
    slot = jnp.maximum(batch.token_slot, 0)
    live = (batch.token_slot >= 0)[:, None, None]
    h = jnp.einsum("td,tmrd->tmr", x, group.a[slot], preferred_element_type=jnp.float32)
    h = jnp.where(live, h * group.scale[slot][..., None], 0.0).astype(group.b.dtype)
    parts, off = [], 0
    for m, size in enumerate(outs):
        parts.append(jnp.einsum("tr,tor->to", h[:, m], group.b[slot, off : off + size]))
        off += size
    return tuple(parts)


def ragged_layout(group: LoraGroup, outs):
    """ragged_dot's operand layout, prepared once outside the timed step."""
    num_slots, num_modules, rank, d_in = group.a.shape
    a_r = jnp.transpose(group.a, (0, 3, 1, 2)).reshape(num_slots, d_in, num_modules * rank)
    b_r, off = [], 0
    for size in outs:
        b_r.append(jnp.transpose(group.b[:, off : off + size], (0, 2, 1)))  # [S, R, out]
        off += size
    return {"a": a_r, "b": tuple(b_r)}


def ragged_parts(x, group, batch, outs, extra):
    num_slots, num_modules, rank, _ = group.a.shape
    sizes = jnp.bincount(
        jnp.where(batch.token_slot >= 0, batch.token_slot, num_slots), length=num_slots + 1
    )
    sizes = sizes[:num_slots].astype(jnp.int32)
    h = jax.lax.ragged_dot(x, extra["a"], sizes, preferred_element_type=jnp.float32)
    slot = jnp.maximum(batch.token_slot, 0)
    scale = jnp.repeat(group.scale[slot], rank, axis=1)  # [T, M*R]
    h = (h * scale).astype(group.b.dtype)
    return tuple(
        jax.lax.ragged_dot(h[:, m * rank : (m + 1) * rank], extra["b"][m], sizes)
        for m in range(num_modules)
    )


def make_pallas(blocks_fn, interpret):
    def pallas_delta(x, group, batch, outs, extra):
        blocks = blocks_fn(x.shape[0], x.shape[1], outs)
        return lora_group_gpu(x, group, batch, outs, blocks=blocks, interpret=interpret)

    return pallas_delta


def base_proj(x, group, batch, outs, extra):
    return x @ extra


def make_step(method, shapes, layers: int, num_sets: int):
    """The jitted step: every group of every layer, unrolled."""

    def step(xs, weights, extras, batch):
        outs = []
        for layer in range(layers):
            for name, (_, sizes) in shapes.items():
                x = xs[layer % num_sets][name]
                outs.append(method(x, weights[layer][name], batch, sizes, extras[layer][name]))
        return outs

    return jax.jit(step)


# ------------------------------------------------------------------------------------------------
# Timing.


def wall_time(f, args, reps: int, inner: int) -> float:
    """Median seconds per call over ``reps`` runs of ``inner`` pipelined calls."""
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            out = f(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / inner)
        del out
    return statistics.median(times)


def kernel_time(f, args, iterations: int = 5):
    """(median summed kernel ms, kernels per call) by CUPTI, or (None, None) where unavailable."""
    try:
        from jax.experimental.mosaic.gpu import profiler

        _, runs = profiler.measure(f, aggregate=False, iterations=iterations)(*args)
        if runs and isinstance(runs[0], tuple):
            runs = [runs]
        sums = [sum(ms for _, ms in run) for run in runs]
        return statistics.median(sums), len(runs[0])
    except Exception as e:  # noqa: BLE001 - a profiler failure must not stop the benchmark
        log(f"  (CUPTI timing unavailable: {type(e).__name__}: {str(e)[:200]})")
        return None, None


def rel_err(got, want) -> float:
    got = np.asarray(jnp.asarray(got, jnp.float32))
    want = np.asarray(jnp.asarray(want, jnp.float32))
    if not np.isfinite(got).all():
        return float("inf")
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


# ------------------------------------------------------------------------------------------------
# Checks and tuning (single group calls).


@functools.partial(jax.jit, static_argnames=("outs",))
def _oracle(x, group, batch, outs):
    """The one-hot einsum in float32 at full precision (no TF32)."""
    group32 = jax.tree.map(lambda v: v.astype(jnp.float32), group)
    with jax.default_matmul_precision("highest"):
        return lora_group_ref(x.astype(jnp.float32), group32, batch, outs)


def check_kernels(shapes, weights, tokens, interpret) -> list[str]:
    """The GPU kernels (tuned, and the other launch form) against the float32 oracle, on fresh
    data with tokens without an adapter, writing into an output poisoned with NaN."""
    lines = []
    key = jax.random.key(7)
    ref_fn = jax.jit(lora_group_ref, static_argnames=("out_sizes",))
    for ti, num_tokens in enumerate(tokens):
        ranks = SCENARIOS["mixed8"]
        slot = routing(num_tokens, ranks)
        if num_tokens >= 37:  # some tokens without an adapter, first and between two runs
            slot[:3] = -1
            boundary = int(np.flatnonzero(np.diff(slot[3:]))[0]) + 4
            slot[boundary - 3 : boundary] = -1
        batch = make_lora_batch(slot, np.array(ranks, np.int32))
        for gi, (name, (d_in, outs)) in enumerate(shapes.items()):
            group = _mask_ranks(weights[0][name], jnp.array(ranks, jnp.int32))
            kx = jax.random.fold_in(key, ti * 10 + gi)
            x = jax.random.normal(kx, (num_tokens, d_in), jnp.bfloat16)
            oracle = _oracle(x, group, batch, outs)
            onehot = ref_fn(x, group, batch, out_sizes=outs)
            base = gpu_blocks(num_tokens, d_in, outs)
            variants = {"tuned": base}
            variants["fused" if base.split_k else "split4"] = dataclasses.replace(
                base, split_k=0 if base.split_k else 4
            )
            for vname, blocks in variants.items():
                poison = jnp.full((num_tokens, sum(outs)), jnp.nan, x.dtype)
                y = lora_group_gpu(
                    x, group, batch, outs, blocks=blocks, interpret=interpret, out=poison
                )
                err = rel_err(y, oracle)
                ok = err < 2e-2
                line = (
                    f"check T={num_tokens:5d} {name:8s} {vname:7s} rel err vs f32 oracle {err:.2e}"
                    f" (one-hot bf16: {rel_err(onehot, oracle):.2e}) {'ok' if ok else 'FAIL'}"
                )
                log(line)
                lines.append(line)
    return lines


def tune_candidates(num_tokens: int, d_in: int, outs) -> list[GpuBlocks]:
    """Tilings to try: (block_t, block_k at rank 16, block_o, o_chunk, split_k, warps, stages)."""
    long_k = d_in > 2 * sum(outs)
    g = GpuBlocks
    if num_tokens <= 256:
        c = [
            g(16, 1024, 256, 512, 0, 4, 3),
            g(16, 1024, 256, 1024, 0, 4, 3),
            g(16, 1024, 256, 256, 0, 4, 3),
            g(16, 2048, 256, 512, 0, 8, 2),
            g(16, 512, 128, 512, 0, 4, 3),
        ]
        if num_tokens >= 64:
            c.append(g(32, 1024, 256, 512, 0, 4, 3))
        for split in (4, 7) if long_k else (2, 4):
            c.append(g(16, 1024, 256, 512, split, 4, 3))
    else:
        c = [
            g(16, 1024, 256, 16384, 0, 4, 3),
            g(32, 1024, 256, 16384, 0, 4, 3),
            g(64, 512, 256, 16384, 0, 8, 2),
            g(32, 1024, 256, 4096, 0, 4, 3),
            g(16, 1024, 256, 4096, 0, 4, 3),
            g(128, 256, 128, 16384, 0, 8, 2),
        ]
        if long_k:
            c.append(g(32, 1024, 256, 4096, 4, 4, 3))
        else:
            c.append(g(16, 1024, 256, 16384, 2, 4, 3))
    return c


def tune(shapes, weights, tokens, deadline: float, launch_ms: float) -> dict:
    """CUPTI kernel time of each candidate tiling per (group, token count), scenario 3x16;
    the split form pays ``launch_ms`` more for its second launch."""
    ranks = SCENARIOS["3x16"]
    best = {}
    for num_tokens in tokens:
        batch = make_lora_batch(routing(num_tokens, ranks), np.array(ranks, np.int32))
        for name, (d_in, outs) in shapes.items():
            group = _mask_ranks(weights[0][name], jnp.array(ranks, jnp.int32))
            x = jax.random.normal(jax.random.key(num_tokens), (num_tokens, d_in), jnp.bfloat16)
            results = []
            for blocks in tune_candidates(num_tokens, d_in, outs):
                if time.time() > deadline:
                    log("  tune: out of time")
                    return best
                f = jax.jit(functools.partial(lora_group_gpu, out_sizes=outs, blocks=blocks))
                try:
                    t0 = time.perf_counter()
                    jax.block_until_ready(f(x, group, batch))
                    compile_s = time.perf_counter() - t0
                    ms, nk = kernel_time(f, (x, group, batch), iterations=10)
                    if ms is None:  # no CUPTI: pipelined wall time, an upper bound
                        ms = wall_time(f, (x, group, batch), 5, 50) * 1e3
                except Exception as e:  # noqa: BLE001 - a failing tiling is skipped, and reported
                    log(f"  tune T={num_tokens} {name} {blocks}: {type(e).__name__} {str(e)[:300]}")
                    continue
                # a second launch costs about a launch gap more than its kernel time
                cost = ms + (launch_ms if blocks.split_k else 0.0)
                results.append((cost, ms, compile_s, blocks))
                us = ms * 1e3
                log(f"  tune T={num_tokens:5d} {name:8s} {us:8.1f} us ({compile_s:.1f} s) {blocks}")
            if results:
                results.sort(key=lambda r: r[0])
                cost, ms, _, blocks = results[0]
                best[(token_bucket(num_tokens), d_in, sum(outs))] = blocks
                log(f"BEST T={num_tokens} {name}: {ms * 1e3:.1f} us {blocks}")
    return best


def mgpu_compare(shapes, weights, tokens) -> list[str]:
    """The o_proj group through jax's Mosaic GPU grouped matmul (ragged_dot_mgpu), vs ours.

    A Mosaic GPU data point for the choice of lowering: shrink and expand as two Hopper
    wgmma/TMA ragged dots over the slot-sorted tokens (at the padded rank), against our one
    Triton launch; CUPTI kernel times and per-call-site compile times.
    """
    lines = []
    try:
        from jax.experimental.pallas.ops.gpu import ragged_dot_mgpu
    except Exception as e:  # noqa: BLE001
        return [f"mgpu: unavailable ({type(e).__name__}: {e})"]
    ranks = SCENARIOS["3x16"]
    d_in, outs = shapes["o"]
    group = _mask_ranks(weights[0]["o"], jnp.array(ranks, jnp.int32))
    for num_tokens in tokens:
        slot = routing(num_tokens, ranks)
        batch = make_lora_batch(slot, np.array(ranks, np.int32))
        sizes = jnp.asarray(np.bincount(slot, minlength=NUM_SLOTS), jnp.int32)
        x = jax.random.normal(jax.random.key(3), (num_tokens, d_in), jnp.bfloat16)
        scale_tok = group.scale[jnp.asarray(slot), 0]

        def mgpu(x, a, b, sizes, scale_tok):
            h = ragged_dot_mgpu.ragged_dot(
                x,
                a,
                group_sizes=sizes,
                block_m=64,
                block_n=64,
                block_k=64,
                max_concurrent_steps=4,
                grid_block_n=1,
                transpose_rhs=True,
            )
            h = (h.astype(jnp.float32) * scale_tok[:, None]).astype(b.dtype)
            return ragged_dot_mgpu.ragged_dot(
                h,
                b,
                group_sizes=sizes,
                block_m=64,
                block_n=128,
                block_k=64,
                max_concurrent_steps=1,
                grid_block_n=1,
                transpose_rhs=True,
            )

        ref = lora_group_ref(x, group, batch, outs)
        for name, f, fargs in (
            (
                "mosaic-gpu ragged_dot x2",
                jax.jit(mgpu),
                (x, group.a[:, 0], group.b, sizes, scale_tok),
            ),
            (
                "ours (triton, fused)",
                jax.jit(functools.partial(lora_group_gpu, out_sizes=outs)),
                (x, group, batch),
            ),
        ):
            try:
                t0 = time.perf_counter()
                y = jax.block_until_ready(f(*fargs))
                comp = time.perf_counter() - t0
                ms, nk = kernel_time(f, fargs, iterations=10)
                us = ms * 1e3 if ms else float("nan")
                line = (
                    f"o_proj T={num_tokens:5d} {name:26s} kernels {us:8.1f} us"
                    f" ({nk} launches), first call {comp:.1f} s, rel err {rel_err(y, ref):.1e}"
                )
            except Exception as e:  # noqa: BLE001
                line = f"o_proj T={num_tokens:5d} {name}: FAILED {type(e).__name__}: {str(e)[:300]}"
            log(line)
            lines.append(line)
    return lines


FLAG_SETS = {
    "default": "",
    "no-graphs": "--xla_gpu_enable_command_buffer=",
    "graphs+custom": (
        "--xla_gpu_enable_command_buffer=+CUSTOM_CALL --xla_gpu_graph_min_graph_size=1"
        " --xla_gpu_require_exclusive_lock=true"
    ),
    "exclusive-lock": "--xla_gpu_require_exclusive_lock=true",
}


def ab_flag_sets(layers: int) -> tuple[str, list[str], float | None]:
    """Time T=1 and T=64 steps (pallas, one-hot) under each XLA flag set, each in a fresh
    process; return the fastest set for pallas, the report lines, and its cost per launch."""
    import subprocess
    import tempfile

    best, lines, gap = ("", float("inf")), [], None
    for name, flags in FLAG_SETS.items():
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            cmd = [
                sys.executable, __file__, "--tokens", "1,64", "--scenarios", "3x16",
                "--methods", "pallas,onehot", "--no-check", "--reps", "5", "--out", "",
                "--json", tmp.name, "--layers", str(layers), f"--xla-flags={flags}", "--no-copy",
            ]  # fmt: skip
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=200)
                rows = json.load(open(tmp.name))["rows"] if r.returncode == 0 else None
            except Exception as e:  # noqa: BLE001
                rows, r = None, None
                log(f"ab {name}: {type(e).__name__}: {e}")
        if not rows:
            tail = (r.stdout + r.stderr)[-600:] if r is not None else ""
            line = f"ab {name:14s} FAILED: {tail}"
        else:
            t = {row["tokens"]: row for row in rows}
            total = t[1].get("pallas_ms", float("inf")) + t[64].get("pallas_ms", float("inf"))
            kern = t[1].get("pallas_kernels_ms")
            n = t[1].get("pallas_kernels_n")
            per = (t[1]["pallas_ms"] - kern) / n if kern is not None and n else None
            line = (
                f"ab {name:14s} pallas T=1 {t[1].get('pallas_ms', 0):.3f} ms, T=64 "
                f"{t[64].get('pallas_ms', 0):.3f} ms; one-hot T=1 {t[1].get('onehot_ms', 0):.3f} "
                f"ms, T=64 {t[64].get('onehot_ms', 0):.3f} ms; pallas kernels T=1 {kern} ms "
                f"({n} launches) -> {per * 1e3 if per is not None else float('nan'):.1f} us "
                "per launch beyond its kernel"
            )
            if total < best[1]:
                best, gap = (flags, total), per
        log(line)
        lines.append(f"{line}  [XLA_FLAGS={flags!r}]")
    return best[0], lines, gap


# ------------------------------------------------------------------------------------------------
# Main.


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", default="1,16,64,256,2048,8192")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--methods", default="pallas,onehot,gather,ragged,base")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--gather-max-tokens", type=int, default=256)
    p.add_argument("--tune", action="store_true", help="tune GPU block sizes first (CUPTI)")
    p.add_argument("--tune-tokens", default="16,64,256,2048")
    p.add_argument("--no-check", action="store_true")
    p.add_argument("--small", action="store_true", help="tiny dims, interpret mode (CPU smoke run)")
    p.add_argument("--budget-s", type=float, default=540.0, help="stop starting work after this")
    p.add_argument("--tune-budget-s", type=float, default=300.0, help="stop tuning after this")
    p.add_argument("--mgpu", action="store_true", help="compare with a Mosaic GPU grouped matmul")
    p.add_argument("--out", default="experiments/results/kernels.md")
    p.add_argument("--json", default=None, help="also write raw results here")
    p.add_argument("--check-tokens", default="1,37,300,2048")
    p.add_argument("--xla-flags", default=None, help="XLA_FLAGS for this run (before start-up)")
    p.add_argument(
        "--ab-flags",
        action="store_true",
        help="first time T=1,64 steps under each XLA flag set (subprocesses), keep the fastest",
    )
    p.add_argument("--launch-ms", type=float, default=None, help="cost of a launch when tuning")
    p.add_argument("--no-copy", action="store_true", help="skip measuring the copy ceiling")
    p.add_argument(
        "--split-decode",
        action="store_true",
        help="pallas: the split (shrink, then expand) launch form for T <= 64",
    )
    args = p.parse_args(argv)
    start = time.time()
    deadline = start + args.budget_s
    command = "PYTHONPATH=. python3 " + " ".join([sys.argv[0], *(argv or sys.argv[1:])])

    # XLA reads XLA_FLAGS when the backend starts: decide them before touching a device.
    ab_lines, launch_ms = [], args.launch_ms
    if args.ab_flags:
        flags, ab_lines, gap = ab_flag_sets(args.layers)
        os.environ["XLA_FLAGS"] = flags
        if launch_ms is None and gap is not None:
            launch_ms = gap
    elif args.xla_flags is not None:
        os.environ["XLA_FLAGS"] = args.xla_flags
    xla_flags = os.environ.get("XLA_FLAGS", "")
    log(f"XLA_FLAGS={xla_flags!r}")
    if launch_ms is None:
        launch_ms = 0.005

    shapes = SMALL if args.small else LLAMA_8B
    interpret = args.small or jax.default_backend() == "cpu"
    dev = jax.devices()[0]
    device = f"{dev.device_kind} ({dev.platform})"
    log(f"device {device}, jax {jax.__version__}, python {platform.python_version()}")
    tokens = [int(t) for t in args.tokens.split(",")]
    scenarios = args.scenarios.split(",")
    methods = args.methods.split(",")
    dtype = jnp.bfloat16

    key = jax.random.key(0)
    weights = make_weights(key, shapes, args.layers, dtype)
    jax.block_until_ready(weights)
    log(f"weights ready ({time.time() - start:.0f} s)")

    copy_bw = None
    if not interpret and not args.no_copy:
        big = jnp.ones((1 << 30,), jnp.bfloat16)  # 2 GiB
        cp = jax.jit(lambda a: a + 1)
        copy_bw = 2 * big.nbytes / wall_time(cp, (big,), 5, 10)
        del big
        log(f"copy ceiling measured: {copy_bw / 1e12:.2f} TB/s (read + write)")

    check_tokens = [int(t) for t in args.check_tokens.split(",")]
    check_lines = [] if args.no_check else check_kernels(shapes, weights, check_tokens, interpret)
    mgpu_lines = []
    if args.mgpu and not interpret:
        mgpu_lines = mgpu_compare(shapes, weights, (64, 2048))
    tuned = {}
    if args.tune and not interpret:
        tune_tokens = [int(t) for t in args.tune_tokens.split(",")]
        log(f"tuning with a launch costing {launch_ms * 1e3:.1f} us")
        tuned = tune(shapes, weights, tune_tokens, start + args.tune_budget_s, launch_ms)
        log("GPU_TUNED = {")
        for k, v in tuned.items():
            log(f"    {k}: {v!r},")
        log("}")
        tuned_blocks.GPU_TUNED.update(tuned)
    blocks_fn = gpu_blocks
    if args.split_decode:  # the two-launch form at decode sizes, to weigh its launches in a step

        def blocks_fn(num_tokens, d_in, outs):
            blocks = gpu_blocks(num_tokens, d_in, outs)
            if num_tokens > 64:
                return blocks
            units = d_in // blocks.block_k
            return dataclasses.replace(blocks, split_k=units // 2 if units > 4 else units)

    method_fns = {
        "pallas": make_pallas(blocks_fn, interpret),
        "onehot": onehot_parts,
        "gather": gather_parts,
        "ragged": ragged_parts,
        "base": base_proj,
    }
    extras_none = [{name: None for name in shapes} for _ in range(args.layers)]
    rows, compile_times = [], {}
    steps = {}
    for sc in scenarios:
        ranks = SCENARIOS[sc]
        rank_arr = jnp.array(ranks, jnp.int32)
        ws = [{n: _mask_ranks(g, rank_arr) for n, g in layer.items()} for layer in weights]
        extras = {"none": extras_none}
        if "ragged" in methods:
            extras["ragged"] = [
                {n: ragged_layout(g, shapes[n][1]) for n, g in layer.items()} for layer in ws
            ]
        if "base" in methods and sc == scenarios[0]:
            base_w = [
                {
                    n: jax.random.normal(
                        jax.random.fold_in(key, 1000 + li * 8 + gi), (d, sum(o)), dtype
                    )
                    * d**-0.5
                    for gi, (n, (d, o)) in enumerate(shapes.items())
                }
                for li in range(args.layers)
            ]
        for num_tokens in tokens:
            slot = routing(num_tokens, ranks)
            batch = make_lora_batch(slot, np.array(ranks, np.int32))
            per_layer_in = num_tokens * sum(d for d, _ in shapes.values()) * 2
            num_sets = int(min(args.layers, max(2, (4 << 30) // per_layer_in)))
            xs = make_inputs(
                jax.random.fold_in(key, num_tokens), shapes, num_tokens, num_sets, dtype
            )
            floor = floor_bytes(shapes, num_tokens, ranks, slot, args.layers)
            row = {"scenario": sc, "tokens": num_tokens, "floor_ms": floor / COPY_CEILING * 1e3}
            if copy_bw:
                row["floor_measured_ms"] = floor / copy_bw * 1e3
            # The one-hot step runs first and its deltas are kept as the reference; every other
            # method is compared as soon as it has run, then its outputs are dropped (at T=8192
            # one step's deltas are 22.5 GB). Past T=2048 only layer 0 is compared.
            ref = None
            keep = len(shapes) * (args.layers if num_tokens <= 2048 else 1)
            order = sorted(methods, key=lambda m: m != "onehot")
            for method in order:
                if method == "base" and sc != scenarios[0]:
                    continue  # independent of the adapters
                if method == "gather" and num_tokens > args.gather_max_tokens:
                    continue
                if time.time() > deadline:
                    log(f"out of time budget: skipping {sc} T={num_tokens} {method}")
                    continue
                if method == "base":
                    ex = base_w
                elif method == "ragged":
                    ex = extras["ragged"]
                else:
                    ex = extras_none
                ck = (method, num_tokens)
                if ck not in steps:
                    steps[ck] = make_step(method_fns[method], shapes, args.layers, num_sets)
                f = steps[ck]
                fargs = (xs, ws, ex, batch)
                try:
                    t0 = time.perf_counter()
                    out = jax.block_until_ready(f(*fargs))
                    if ck not in compile_times:
                        compile_times[ck] = time.perf_counter() - t0
                    if method == "onehot":
                        ref = [jnp.concatenate(parts, axis=-1) for parts in out[:keep]]
                    elif ref is not None and method in ("pallas", "ragged", "gather"):
                        got = [
                            o if method == "pallas" else jnp.concatenate(o, axis=-1) for o in out
                        ]
                        errs = [rel_err(a, b) for a, b in zip(got[:keep], ref, strict=True)]
                        row[f"{method}_err"] = max(errs)
                        del got
                    del out
                    inner = 10 if num_tokens <= 256 else (3 if num_tokens <= 2048 else 1)
                    reps = args.reps if not interpret else 1
                    secs = wall_time(f, fargs, reps, 1 if interpret else inner)
                    row[f"{method}_ms"] = secs * 1e3
                    msg = f"{sc:8s} T={num_tokens:5d} {method:7s} {secs * 1e3:9.3f} ms"
                    if method in ("pallas", "onehot") and not interpret:
                        kms, nk = kernel_time(f, fargs, iterations=3 if num_tokens <= 2048 else 1)
                        if kms is not None:
                            row[f"{method}_kernels_ms"] = kms
                            row[f"{method}_kernels_n"] = nk
                            msg += f"  (kernels {kms:.3f} ms, {nk} launches)"
                    log(msg + f"  [compile {compile_times[ck]:.1f} s]")
                except Exception as e:  # noqa: BLE001 - report and go on with the other methods
                    log(f"{sc} T={num_tokens} {method}: FAILED {type(e).__name__}: {str(e)[:500]}")
                    row[f"{method}_error"] = f"{type(e).__name__}"
                    if "RESOURCE_EXHAUSTED" in str(e):
                        log("out of device memory: skipping the other methods at this size")
                        break
                gc.collect()
            del ref
            del xs
            gc.collect()
            rows.append(row)
            log(json.dumps(row))
        del ws, extras
        if sc == scenarios[0]:
            base_w = None  # only the first scenario times the base projections
        gc.collect()

    table = render(rows, methods)
    log("\n" + table)
    meta = {
        "device": device,
        "jax": jax.__version__,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "copy_bw": copy_bw,
        "layers": args.layers,
        "compile_s": {f"{m} T={t}": round(s, 1) for (m, t), s in compile_times.items()},
        "tuned": {str(k): repr(v) for k, v in tuned.items()},
        "checks": check_lines,
        "mgpu": mgpu_lines,
        "xla_flags": xla_flags,
        "blocks": {
            f"T={t} {n}": repr(gpu_blocks(t, d, o)) for t in tokens for n, (d, o) in shapes.items()
        },
        "ab": ab_lines,
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=1)
    if args.out and not args.small:
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write(render_report(meta, table))
        log(f"wrote {args.out}")
    return 0


def render(rows, methods) -> str:
    """Markdown table: one row per (scenario, T); times in ms; speed-up over the best baseline."""
    baselines = [m for m in ("onehot", "gather", "ragged") if m in methods]
    head = ["adapters", "T", "floor"]
    head += [m for m in ("pallas", "onehot", "gather", "ragged", "base") if m in methods]
    head += ["pallas kernels", "speed-up vs best baseline", "pallas err"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["scenario"], str(r["tokens"]), f"{r['floor_ms']:.3f}"]
        for m in head[3 : 3 + len([h for h in head[3:] if h in methods])]:
            v = r.get(f"{m}_ms")
            cells.append(f"{v:.3f}" if v is not None else ("err" if f"{m}_error" in r else "-"))
        k = r.get("pallas_kernels_ms")
        cells.append(f"{k:.3f} ({r.get('pallas_kernels_n')})" if k is not None else "-")
        base = [r[f"{m}_ms"] for m in baselines if f"{m}_ms" in r]
        ours = r.get("pallas_ms")
        cells.append(f"{min(base) / ours:.2f}x" if base and ours else "-")
        e = r.get("pallas_err")
        cells.append(f"{e:.1e}" if e is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_report(meta, table) -> str:
    compile_lines = "\n".join(f"- {k}: {v} s" for k, v in meta["compile_s"].items())
    extra = "\n".join(f"    {c}" for c in [*meta.get("ab", []), *meta.get("mgpu", [])])
    blocks = "\n".join(f"- {k}: `{v}`" for k, v in meta.get("blocks", {}).items())
    checks = "\n".join(f"    {c}" for c in meta["checks"]) or "    (not run)"
    bw = f"{meta['copy_bw'] / 1e12:.2f} TB/s" if meta["copy_bw"] else "n/a"
    return f"""# LoRA kernels: one step's LoRA work, Llama-3.1-8B, {meta["layers"]} layers

- device: {meta["device"]}
- jax: {meta["jax"]}
- date: {meta["date"]}
- command: `{meta["command"]}`
- XLA_FLAGS: `{meta.get("xla_flags", "")}`
- measured copy ceiling: {bw} (the floor column uses 2.9 TB/s)

Times in ms per step (all 7 target modules of all layers, one jitted program, unrolled); 8 slots
of max rank 64. `pallas kernels`: summed kernel time (CUPTI) and launches per step.

{table}

## Correctness on the device (bf16, relative L2 error vs the float32 per-token oracle, output
## poisoned with NaN before each run)

{checks}

## Launch cost under XLA flag sets, and a Mosaic GPU data point

{extra or "    (not run)"}

## Block sizes used (jlora/kernels/tuned_blocks.py)

{blocks}

## Start-up compile time (first call of each step program)

{compile_lines}
"""


if __name__ == "__main__":
    raise SystemExit(main())
