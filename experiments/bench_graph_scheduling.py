"""Device time of the LoRA kernels beside the base matmuls, under each CUDA-graph scheduling mode.

A Llama-3.1-8B-shaped chain of 32 layers of the four projection groups (q|k|v, o, gate|up, down,
with their RMSNorms, activation and residual adds; attention left out), dummy weights in bfloat16,
jitted as one step, with and without the Pallas LoRA delta of three rank-16 adapters on every
group. The step is dispatched many times in a row on the same inputs and timed as a whole, so the
figure is the device's time (the host runs ahead). Each LoRA delta reads only its projection's
input, so under ``concurrent`` scheduling (``EngineConfig.graph_scheduling``) XLA lets the kernel
run beside the base matmul in the step's CUDA graph; under ``serialize`` it runs after it.

    PYTHONPATH=. python experiments/bench_graph_scheduling.py   # on the GPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jlora.config import GRAPH_SCHEDULING
from jlora.kernels import LoraGroup, lora_group_delta, make_lora_batch
from jlora.runner.model_runner import graph_compiler_options
from models.llama import rms_norm
from models.presets import get_preset

NUM_SLOTS, RANK = 3, 16


def _normal(key, shape, scale):
    return (scale * jax.random.normal(key, shape, jnp.float32)).astype(jnp.bfloat16)


def build(cfg, num_layers: int):
    """Per layer, the four groups' weights ``[in, out]`` and LoRA slot buffers."""
    sizes = {
        "qkv": (cfg.q_size, cfg.kv_size, cfg.kv_size),
        "o": (cfg.hidden_size,),
        "gate_up": (cfg.intermediate_size,) * 2,
        "down": (cfg.hidden_size,),
    }
    d_in = {
        "qkv": cfg.hidden_size,
        "o": cfg.q_size,
        "gate_up": cfg.hidden_size,
        "down": cfg.intermediate_size,
    }
    layers = []
    for i in range(num_layers):
        keys = iter(jax.random.split(jax.random.key(i), 12))
        layer = {}
        for group, out in sizes.items():
            w = _normal(next(keys), (d_in[group], sum(out)), 0.02)
            lora = LoraGroup(
                a=_normal(next(keys), (NUM_SLOTS, len(out), RANK, d_in[group]), 0.05),
                b=_normal(next(keys), (NUM_SLOTS, sum(out), RANK), 0.05),
                scale=jnp.full((NUM_SLOTS, len(out)), 2.0, jnp.float32),
            )
            layer[group] = (w, lora)
        layers.append(layer)
    return layers, sizes


def chain(h, layers, batch, cfg, sizes, with_lora: bool):
    """The projection chain of every layer; ``h`` [T, d]."""

    def project(x, group, layer):
        w, lora = layer[group]
        y = jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype)
        if with_lora:
            y = y + lora_group_delta(x, lora, batch, sizes[group], backend="pallas")
        return y

    eps, q, kv, inter = cfg.rms_norm_eps, cfg.q_size, cfg.kv_size, cfg.intermediate_size
    ones = jnp.ones((cfg.hidden_size,), h.dtype)
    for layer in layers:
        qkv = project(rms_norm(h, ones, eps), "qkv", layer)
        # stands in for attention: mixes q with v, so that o depends on both
        attn = qkv[:, :q] * jnp.tile(qkv[:, q + kv :], (1, q // kv))
        h = h + project(attn, "o", layer)
        gate_up = project(rms_norm(h, ones, eps), "gate_up", layer)
        act = jax.nn.silu(gate_up[:, :inter].astype(jnp.float32)) * gate_up[:, inter:]
        h = h + project(act.astype(h.dtype), "down", layer)
    return h


def device_ms(fn, args, calls: int, rounds: int = 3) -> float:
    """Median over rounds of the mean time of ``calls`` back-to-back dispatches."""
    fn(*args).block_until_ready()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            out = fn(*args)
        out.block_until_ready()
        times.append(1e3 * (time.perf_counter() - t) / calls)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--layers", type=int, default=None, help="default: the model's")
    p.add_argument("--tokens", default="16,64")
    p.add_argument("--calls", type=int, default=50)
    args = p.parse_args()
    cfg = get_preset(args.model)
    layers, sizes = build(cfg, args.layers or cfg.num_layers)
    print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}, {len(layers)} layers")
    rows = []
    for t in (int(x) for x in args.tokens.split(",")):
        h = _normal(jax.random.key(99), (t, cfg.hidden_size), 1.0)
        slots = np.sort(np.arange(t) % NUM_SLOTS)  # three adapters, tokens grouped by slot
        batch = make_lora_batch(slots, np.full(NUM_SLOTS, RANK))
        for mode in GRAPH_SCHEDULING:
            options = graph_compiler_options(mode) or None
            got = {}
            for with_lora in (False, True):
                fn = jax.jit(
                    lambda h, layers, batch, w=with_lora: chain(h, layers, batch, cfg, sizes, w),
                    compiler_options=options,
                )
                got[with_lora] = device_ms(fn, (h, layers, batch), args.calls)
            rows.append((t, mode, got[False], got[True]))
            print(
                f"T={t:4d} {mode:10s}: base {got[False]:.3f} ms, with LoRA {got[True]:.3f} ms "
                f"(+{got[True] - got[False]:.3f} ms, +{100 * (got[True] / got[False] - 1):.0f}%)",
                flush=True,
            )
    print("\n| tokens | graph | projections (ms) | with 3 adapters (ms) | LoRA adds |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for t, mode, base, lora in rows:
        print(
            f"| {t} | {mode} | {base:.2f} | {lora:.2f} | "
            f"+{lora - base:.2f} ms (+{100 * (lora / base - 1):.0f}%) |"
        )


if __name__ == "__main__":
    main()
