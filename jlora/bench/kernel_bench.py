"""What the LoRA kernel experiments share (``experiments/bench_kernels.py``,
``tune_kernel_blocks.py``, ``bench_kernels_mgpu.py``, ``bench_xla_flags.py``): the group shapes and
adapter mixes, random slot buffers and inputs, the token routing, the bytes floor, the timers
(pipelined wall time, CUPTI kernel time), the error measure, and the options and results file
every one of them has.

The unit is a group call of :func:`jlora.kernels.lora_gpu.lora_group_gpu` (``qkv``, ``o``,
``gate_up``, ``down`` of Llama-3.1-8B; ``SMALL`` for a CPU smoke run in interpret mode), on 8 slots
of max rank 64 whose ranks a scenario masks.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jlora.bench.results_file import RunHeader, median_seconds, write_results_file
from jlora.kernels.types import LoraGroup

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
def mask_ranks(group: LoraGroup, ranks: jax.Array) -> LoraGroup:
    """``group`` with each slot's A and B zeroed past its rank in ``ranks``."""
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
    """``num_sets`` sets of random inputs of every group (rotated over the layers of a step)."""
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
    """The bytes a fused step must move: each used adapter's A and B at its own rank, each group's
    input once and its output once (bf16)."""
    used = sorted(set(int(s) for s in token_slot if s >= 0))
    rank_sum = sum(ranks[s] for s in used)
    per_layer = 0
    for d_in, outs in shapes.values():
        per_layer += rank_sum * (len(outs) * d_in + sum(outs)) * 2  # A and B at own rank, bf16
        per_layer += num_tokens * (d_in + sum(outs)) * 2  # input once, output once
    return per_layer * layers


# ------------------------------------------------------------------------------------------------
# Timing and errors.


def wall_time(f, args, reps: int, inner: int) -> float:
    """Median seconds per call over ``reps`` runs of ``inner`` pipelined calls (after one untimed
    run)."""

    def pipelined():
        for _ in range(inner):
            out = f(*args)
        jax.block_until_ready(out)

    return median_seconds(pipelined, repeats=reps, warmup=1) / inner


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
    """Relative L2 error of ``got`` against ``want`` (inf where ``got`` is not finite)."""
    got = np.asarray(jnp.asarray(got, jnp.float32))
    want = np.asarray(jnp.asarray(want, jnp.float32))
    if not np.isfinite(got).all():
        return float("inf")
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


# ------------------------------------------------------------------------------------------------
# Options and the results file.


def parser(description: str, out: str) -> argparse.ArgumentParser:
    """The options every kernel experiment has; ``out``: its results file."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--small", action="store_true", help="tiny dims, interpret mode (CPU smoke run)")
    p.add_argument(
        "--out",
        default=None,
        help=f"the results file (default {out}; with --small none unless given; '' for none)",
    )
    p.add_argument("--log", default=None, help="the Log entry's verdict (default: the claim)")
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.set_defaults(default_out=out)
    return p


def group_weights(args, layers: int = 1):
    """(shapes, slot buffers of ``layers`` layers, interpret) for ``args`` (``--small``)."""
    shapes = SMALL if args.small else LLAMA_8B
    interpret = args.small or jax.default_backend() == "cpu"
    weights = make_weights(jax.random.key(0), shapes, layers, jnp.bfloat16)
    jax.block_until_ready(weights)
    return shapes, weights, interpret


def write_results(
    args,
    header: RunHeader,
    title: str,
    claims: list[str],
    verdict: str,
    body: str,
    raw: dict | None = None,
) -> Path | None:
    """Write the run's results file (``--out``): ``## Current`` with the header and ``claims``, a
    Log entry for ``verdict`` (or ``--log``) with ``body`` under it; ``raw`` to ``--json``."""
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": header.as_dict(), **(raw or {})}, indent=1))
    out = args.out if args.out is not None else (None if args.small else args.default_out)
    if not out:
        return None
    raw_line = f"`{args.json}`" if args.json else "the Log entries (`--json FILE` keeps them)"
    lines = [f"# {title}", "", "## Current", "", *header.lines(), *claims]
    lines += [f"- raw data: {raw_line}", ""]
    write_results_file(Path(out), "\n".join(lines) + "\n", args.log or verdict, body=body)
    log(f"wrote {out}")
    return Path(out)
