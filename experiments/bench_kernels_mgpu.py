"""Compare our Pallas LoRA kernel with a Mosaic GPU grouped matmul, a data point for the choice of
lowering.

The ``o`` group of Llama-3.1-8B (scenario ``3x16``: 3 adapters of rank 16, 8 slots of max rank 64)
at each of ``--tokens``: shrink and expand as two Hopper wgmma/TMA ragged dots over the
slot-sorted tokens (jax's ``ragged_dot_mgpu``, at the padded rank) against our one Triton launch
(:func:`jlora.kernels.lora_gpu.lora_group_gpu`); CUPTI kernel times, first-call (compile) times
and the error against the one-hot reference. Needs a Hopper GPU; elsewhere it reports what failed.

    PYTHONPATH=. python experiments/bench_kernels_mgpu.py    # writes kernels_mgpu.md
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from jlora.bench.kernel_bench import (
    NUM_SLOTS,
    SCENARIOS,
    group_weights,
    kernel_time,
    log,
    mask_ranks,
    parser,
    rel_err,
    routing,
    write_results,
)
from jlora.bench.results_file import run_header
from jlora.kernels.lora_gpu import lora_group_gpu
from jlora.kernels.lora_xla import lora_group_ref
from jlora.kernels.types import make_lora_batch


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
    group = mask_ranks(weights[0]["o"], jnp.array(ranks, jnp.int32))
    for num_tokens in tokens:
        slot = routing(num_tokens, ranks)
        batch = make_lora_batch(slot, np.array(ranks, np.int32))
        sizes = jnp.asarray(np.bincount(slot, minlength=NUM_SLOTS), jnp.int32)
        x = jax.random.normal(jax.random.key(3), (num_tokens, d_in), jnp.bfloat16)
        scale_tok = group.scale[jnp.asarray(slot), 0]

        def ragged_dot(lhs, rhs, sizes, block_n: int, max_concurrent_steps: int):
            return ragged_dot_mgpu.ragged_dot(
                lhs, rhs, group_sizes=sizes, block_m=64, block_n=block_n, block_k=64,
                max_concurrent_steps=max_concurrent_steps, grid_block_n=1, transpose_rhs=True,
            )  # fmt: skip

        def mgpu(x, a, b, sizes, scale_tok):
            h = ragged_dot(x, a, sizes, block_n=64, max_concurrent_steps=4)
            h = (h.astype(jnp.float32) * scale_tok[:, None]).astype(b.dtype)
            return ragged_dot(h, b, sizes, block_n=128, max_concurrent_steps=1)

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


def main(argv=None) -> int:
    p = parser(__doc__.split("\n\n")[0], "experiments/results/kernels_mgpu.md")
    p.add_argument("--tokens", default="64,2048", help="token counts of the o group")
    args = p.parse_args(argv)
    header = run_header(argv)
    shapes, weights, interpret = group_weights(args)
    if interpret:
        log("the Mosaic GPU comparison needs a GPU: nothing to run in interpret mode")
        return 0
    lines = mgpu_compare(shapes, weights, [int(t) for t in args.tokens.split(",")])
    failed = [line for line in lines if "FAILED" in line or "unavailable" in line]
    claims = ["- claim: o_proj group, CUPTI kernel times (Mosaic GPU ragged_dot x2 against ours):"]
    claims += [f"  - {line}" for line in lines]
    verdict = f"{len(lines) - len(failed)} of {len(lines)} o_proj timings ran"
    title = "LoRA kernels: a Mosaic GPU grouped matmul against the Triton kernel"
    body = "\n".join(f"    {line}" for line in lines)
    write_results(args, header, title, claims, verdict, body, {"lines": lines})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
