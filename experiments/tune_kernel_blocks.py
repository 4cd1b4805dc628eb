"""Tune the GPU block sizes of the Pallas LoRA kernels: CUPTI kernel time of each candidate tiling.

For each group of Llama-3.1-8B (``qkv``, ``o``, ``gate_up``, ``down``) and each of ``--tokens``,
every candidate tiling of :func:`tune_candidates` runs one group call of
:func:`jlora.kernels.lora_gpu.lora_group_gpu` (scenario ``3x16``: 3 adapters of rank 16, 8 slots of
max rank 64), timed by its kernels' own durations (CUPTI; pipelined wall time where CUPTI is
unavailable, an upper bound). The split form (``split_k`` > 0) is charged ``--launch-ms`` more for
its second launch (``bench_xla_flags.py`` measures that cost). The best tiling per (token bucket,
d_in, O) is printed as ``GPU_TUNED`` entries for ``jlora/kernels/tuned_blocks.py``; ``--json``
keeps them, and ``bench_kernels.py --blocks FILE`` times the step table with them.

    PYTHONPATH=. python experiments/tune_kernel_blocks.py --json tuned.json   # on the GPU
    PYTHONPATH=. python experiments/bench_kernels.py --blocks tuned.json
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from jlora.bench.kernel_bench import (
    SCENARIOS,
    group_weights,
    kernel_time,
    log,
    mask_ranks,
    parser,
    routing,
    wall_time,
    write_results,
)
from jlora.bench.results_file import run_header
from jlora.kernels.lora_gpu import lora_group_gpu
from jlora.kernels.tuned_blocks import GpuBlocks, token_bucket
from jlora.kernels.types import make_lora_batch


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


def tune(shapes, weights, tokens, deadline: float, launch_ms: float) -> tuple[dict, list[str]]:
    """CUPTI kernel time of each candidate tiling per (group, token count), scenario 3x16;
    the split form pays ``launch_ms`` more for its second launch. The best tiling per
    (token bucket, d_in, O), and a line on each."""
    ranks = SCENARIOS["3x16"]
    best, lines = {}, []
    for num_tokens in tokens:
        batch = make_lora_batch(routing(num_tokens, ranks), np.array(ranks, np.int32))
        for name, (d_in, outs) in shapes.items():
            group = mask_ranks(weights[0][name], jnp.array(ranks, jnp.int32))
            x = jax.random.normal(jax.random.key(num_tokens), (num_tokens, d_in), jnp.bfloat16)
            results = []
            for blocks in tune_candidates(num_tokens, d_in, outs):
                if time.time() > deadline:
                    log("  tune: out of time")
                    return best, lines
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
                lines.append(f"BEST T={num_tokens} {name}: {ms * 1e3:.1f} us {blocks}")
                log(lines[-1])
    return best, lines


def main(argv=None) -> int:
    p = parser(__doc__.split("\n\n")[0], "experiments/results/kernel_tuning.md")
    p.add_argument("--tokens", default="16,64,256,2048", help="token counts to tune")
    p.add_argument("--budget-s", type=float, default=300.0, help="stop tuning after this")
    p.add_argument(
        "--launch-ms", type=float, default=0.005, help="cost of the split form's second launch"
    )
    args = p.parse_args(argv)
    start = time.time()
    header = run_header(argv)
    shapes, weights, interpret = group_weights(args)
    if interpret:
        log("tuning needs a GPU (CUPTI kernel times): nothing to tune in interpret mode")
        return 0
    tokens = [int(t) for t in args.tokens.split(",")]
    log(f"tuning with a launch costing {args.launch_ms * 1e3:.1f} us")
    tuned, best_lines = tune(shapes, weights, tokens, start + args.budget_s, args.launch_ms)
    entries = [f"    {k}: {v!r}," for k, v in tuned.items()]
    log("\n".join(["GPU_TUNED = {", *entries, "}"]))
    claims = [
        f"- claim: the fastest of each group's candidate tilings at T = {args.tokens} "
        f"({len(tuned)} entries; a second launch charged {args.launch_ms * 1e3:.1f} us), "
        "for `GPU_TUNED` in `jlora/kernels/tuned_blocks.py`",
    ]
    best = [f"    {line}" for line in best_lines]
    body = "\n".join([*best, "", "```python", "GPU_TUNED = {", *entries, "}", "```"])
    raw = {
        "tuned": [{"key": list(k), "blocks": dataclasses.asdict(v)} for k, v in tuned.items()],
        "launch_ms": args.launch_ms,
    }
    verdict = f"best tilings of {len(tuned)} (token bucket, d_in, O) entries"
    title = "LoRA kernels: GPU block sizes tuned by kernel time"
    write_results(args, header, title, claims, verdict, body, raw)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
