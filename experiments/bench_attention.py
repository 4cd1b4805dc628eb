"""Decode attention over the paged KV cache, one layer of Llama-3.1-8B (32 query heads, 8 KV heads,
head_dim 128, bf16): the Pallas kernel (reads each sequence's pages in place) against the XLA
reference (gathers the pages of a bucketed page table, as the engine runs it).

    PYTHONPATH=. python experiments/bench_attention.py --out experiments/results/attention.md

The floor is the K/V bytes the step must read (each sequence's own tokens) over the 2.9 TB/s copy
ceiling. The kernel gets the engine's widest table (the full context); the reference gets the
smallest kv-length bucket that holds the sequences (the engine's default buckets 256, 1024, 4096).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from jlora.bench.results_file import median_seconds, run_header, write_results_file
from jlora.kernels.paged_attention import (
    paged_decode_attention_gpu,
    paged_decode_attention_ref,
)

COPY_CEILING = 2.9e12  # bytes/s, measured read + write on the H100


def _median_ms(fn, reps: int) -> float:
    return 1e3 * median_seconds(lambda: fn().block_until_ready(), repeats=reps, warmup=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 128])
    p.add_argument("--lengths", type=int, nargs="+", default=[129, 1024, 4000])
    p.add_argument("--context", type=int, default=4096, help="the kernel's page-table width")
    p.add_argument("--layers", type=int, default=8, help="layers of the cache (it is passed whole)")
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--interpret", action="store_true", help="CPU: run the kernel interpreted")
    p.add_argument(
        "--out",
        default=None,
        help="results file to write: its Current rewritten, a Log entry added on top of its Log",
    )
    p.add_argument("--log", default=None, help="the Log entry's verdict (default: the claim)")
    args = p.parse_args()

    hq, hkv, d, ps = 32, 8, 128, args.page_size
    dtype = jnp.bfloat16
    table_pages = args.context // ps
    most_tokens = max(args.batches) * args.context
    num_pages = most_tokens // ps + 1
    rng = np.random.default_rng(0)
    key = jax.random.key(0)
    shape = (args.layers, num_pages, ps, hkv, d)
    k_cache = jax.random.normal(key, shape, dtype)
    v_cache = jax.random.normal(jax.random.fold_in(key, 1), shape, dtype)
    layer = args.layers // 2
    ref = jax.jit(paged_decode_attention_ref)
    rows = []
    for b in args.batches:
        q = jax.random.normal(jax.random.fold_in(key, 2), (b, hq, d), dtype)
        k_new = jax.random.normal(jax.random.fold_in(key, 3), (b, hkv, d), dtype)
        v_new = jax.random.normal(jax.random.fold_in(key, 4), (b, hkv, d), dtype)
        for n in args.lengths:
            if n > args.context:
                continue
            pages = rng.permutation(np.arange(1, num_pages))[: b * table_pages]
            table = pages.reshape(b, table_pages).astype(np.int32)
            lens = jnp.full((b,), n, jnp.int32)
            bucket = next(t for t in (256, 1024, 4096, args.context) if t >= n) // ps
            ref_table = jnp.asarray(table[:, :bucket])
            table = jnp.asarray(table)

            kernel_args = (q, k_new, v_new, k_cache, v_cache, layer, table, lens)
            ref_args = (q, k_new, v_new, k_cache, v_cache, layer, ref_table, lens)

            def run_kernel(a=kernel_args):
                return paged_decode_attention_gpu(*a, interpret=args.interpret)

            def run_ref(a=ref_args):
                return ref(*a)

            err = float(
                jnp.abs(run_kernel().astype(jnp.float32) - run_ref().astype(jnp.float32)).max()
            )
            kernel_ms = _median_ms(run_kernel, args.reps)
            ref_ms = _median_ms(run_ref, args.reps)
            floor_ms = 1e3 * (b * (n - 1) * 2 * hkv * d * 2) / COPY_CEILING
            row = (b, n, floor_ms, kernel_ms, ref_ms, ref_ms / kernel_ms, err)
            rows.append(row)
            print(
                f"B={b:4d} len={n:5d}: floor {floor_ms:.4f} ms, pallas {kernel_ms:.4f} ms, "
                f"xla {ref_ms:.4f} ms, speed-up {ref_ms / kernel_ms:.2f}x, max err {err:.2e}",
                flush=True,
            )
    if args.out:
        write_attention_results(args.out, rows, args, ps, num_pages)


def write_attention_results(out, rows, args, ps: int, num_pages: int) -> None:
    """Write ``out``: ``## Current`` with this run's header and claim, and a Log entry (``--log``,
    default the claim) with the table of ``rows`` on top of the file's Log, which is kept."""
    header = run_header()
    speedups = [row[5] for row in rows]
    claim = (
        f"the Pallas paged decode-attention kernel is {min(speedups):.2f}x-{max(speedups):.2f}x "
        f"the XLA gather reference per layer over {len(rows)} sizes"
        if rows
        else "no size was measured"
    )
    met = bool(rows) and min(speedups) > 1
    setup = [
        f"- 32 query heads, 8 KV heads, head_dim 128, bf16, page size {ps}; the cache holds "
        f"{args.layers} layers of {num_pages} pages and is passed whole; the kernel's page "
        f"table is {args.context} tokens wide, the reference's the smallest of 256 / 1024 / "
        "4096 that holds the sequences; times are medians of single calls (ms), including "
        "the merge of splits and the step's own token",
        "- floor: the K/V bytes of each sequence's cached tokens over the 2.9 TB/s copy ceiling",
    ]
    table = [
        "| batch | length | floor | pallas | xla (gather) | speed-up | max abs err |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for b, n, floor_ms, kernel_ms, ref_ms, speedup, err in rows:
        table.append(
            f"| {b} | {n} | {floor_ms:.4f} | {kernel_ms:.4f} | {ref_ms:.4f} | "
            f"{speedup:.2f}x | {err:.1e} |"
        )
    current = [
        "# Decode attention over the paged KV cache, one layer of Llama-3.1-8B",
        "",
        "## Current",
        "",
        *header.lines(),
        f"- claim: {claim}",
        f"- target: faster than the reference at every size ({'met' if met else 'not met'})",
        "- raw data: the table of the Log entry below (this script keeps no raw file)",
        "",
    ]
    body = "\n".join([*setup, "", *table]) + "\n"
    write_results_file(out, "\n".join(current) + "\n", args.log or claim, body=body)


if __name__ == "__main__":
    main()
