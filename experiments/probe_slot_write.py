"""Where a slot write's time goes (issue #17): ``SlotBuffers._write`` alone, by slot count and rank
bucket, with the values already on the device: the host's dispatch of the jitted write, and the
dispatch plus the device's work (timed around ``jax.block_until_ready``); then the counts of
in-place updates, fusions and copies in the write's optimized HLO. Prints a table; ``--json``
keeps the figures (``experiments/results/slot_load/``)."""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

from jlora.adapters import slots as S
from jlora.bench.results_file import run_header
from models.presets import get_preset


def probe(
    model: str, slot_counts: list[int], ranks: list[int], max_rank: int, dtype: str, reps: int
):
    cfg = get_preset(model)
    rows, hlo = [], {}
    for num_slots in slot_counts:
        buffers = S.SlotBuffers(cfg, num_slots, max_rank, dtype)
        for rank in ranks:
            layout = S.slot_layout(
                None, cfg, max_rank, dtype, 1, rows=S.rank_bucket(rank, max_rank)
            )
            values = buffers._to_device(buffers._place_host(layout))
            jax.block_until_ready(values)
            buffers._write(1, values)  # compiles
            jax.block_until_ready(buffers._layers)
            dispatch, total = [], []
            for _ in range(reps):
                t0 = time.perf_counter()
                buffers._write(1, values)
                t1 = time.perf_counter()
                jax.block_until_ready(buffers._layers)
                dispatch.append(t1 - t0)
                total.append(time.perf_counter() - t0)
            rows.append(
                {
                    "slots": num_slots,
                    "rank": rank,
                    "dispatch_ms": 1e3 * statistics.median(dispatch),
                    "total_ms": 1e3 * statistics.median(total),
                    "buffers": len(jax.tree.leaves(buffers._layers)),
                }
            )
            print(rows[-1], flush=True)
        if not hlo:
            text = S._write_slot.lower(buffers._layers, jnp.int32(1), values).compile().as_text()
            hlo = {k: text.count(k) for k in ("dynamic-update-slice", " fusion(", " copy(")}
            print("optimized HLO:", hlo, flush=True)
    return rows, hlo


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="llama-3.1-8b", help="preset whose slot layout is written")
    p.add_argument("--slots", default="2,8", help="slot counts (comma-separated)")
    p.add_argument("--ranks", default="8,16,64", help="adapter ranks (comma-separated)")
    p.add_argument("--max-rank", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--json", default=None, help="write the figures and the run's header here")
    args = p.parse_args(argv)
    rows, hlo = probe(
        args.model,
        [int(x) for x in args.slots.split(",")],
        [int(x) for x in args.ranks.split(",")],
        args.max_rank,
        args.dtype,
        args.reps,
    )
    if args.json:
        header = run_header()
        with open(args.json, "w") as f:
            json.dump({"header": header.__dict__, "rows": rows, "hlo": hlo}, f, indent=1)


if __name__ == "__main__":
    main()
