"""The LoRA kernels' two launch forms at decode sizes, inside the engine's step.

``table``: the tuned table as it is. ``fused``: every T <= ``--max-bucket`` (64) entry in one
launch per module group. ``split``: every such entry in the split form (a shrink launch split over
d_in, then an expand launch; ``split_k`` 4 for d_in 4096, 7 for 14336). ``split_mlp``: only the
MLP groups (gate/up, down), whose long shrinks gain the most from the split. Each variant builds
its own engine (Llama-3.1-8B preset, dummy weights, 3 rank-16 adapters, ``lora_backend="pallas"``,
overlap scheduling) and times the median ``Engine.step`` of decode batches with every request on
an adapter, then with none, and of prefill steps of ``--prefill-tokens`` tokens (one request on an
adapter), which use the same table entries. A ``+lite`` suffix (``table+lite``) also gives those
entries a short shrink step and two pipeline stages (``block_k`` 256, ``num_stages`` 2: ~32 KB of
shared memory instead of ~200 KB), so that under ``--graph-scheduling concurrent`` a LoRA kernel's
programs can share an SM with the base projection's matmul running beside it.

    PYTHONPATH=. python experiments/bench_split_decode.py fused split   # on the H100"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import time

import jax

from jlora.bench.decode_timing import median_decode_step_ms
from jlora.config import GRAPH_SCHEDULING, EngineConfig
from jlora.engine import Engine
from jlora.kernels import tuned_blocks
from jlora.sampling_params import SamplingParams

ADAPTERS = ("a0", "a1", "a2")


def split_table(
    table: dict, mlp_only: bool = False, max_bucket: int = 64, split: bool = True
) -> dict:
    """The table with its T <= ``max_bucket`` entries (of the MLP groups only, with ``mlp_only``)
    in the split form, or (``split=False``) in one launch."""
    out = dict(table)
    widest = max(o for _, _, o in table)  # gate|up has the widest output
    longest = max(d for _, d, _ in table)  # down has the longest input
    for (bucket, d_in, total_out), blocks in table.items():
        mlp = total_out == widest or d_in == longest
        if bucket <= max_bucket and (mlp or not mlp_only):
            units = d_in // blocks.block_k
            split_k = (units // 2 if units > 4 else units) if split else 0
            out[(bucket, d_in, total_out)] = dataclasses.replace(blocks, split_k=split_k)
    return out


def lite_table(table: dict, max_bucket: int = 64) -> dict:
    """The table with its T <= ``max_bucket`` entries on little shared memory (see the module
    docstring); the split counts stay as they are."""
    return {
        key: dataclasses.replace(blocks, block_k=256, num_stages=2)
        if key[0] <= max_bucket
        else blocks
        for key, blocks in table.items()
    }


def variant_table(variant: str, table: dict, max_bucket: int) -> dict:
    """The block table of a named variant (``table``, ``fused``, ``split``, ``split_mlp``, each
    optionally ``+lite``)."""
    form, _, lite = variant.partition("+")
    if form != "table":
        table = split_table(table, form == "split_mlp", max_bucket, form != "fused")
    return lite_table(table, max_bucket) if lite else table


def median_prefill_step_ms(engine: Engine, num_tokens: int, name: str, reps: int) -> float:
    """Median wall time (ms) of a prefill step of one ``num_tokens``-token request."""
    times = []
    for i in range(reps + 1):
        rid = engine.add_request([3 + i] * num_tokens, SamplingParams(max_new_tokens=1), name)
        t = time.perf_counter()
        engine.step()
        if i:  # the first one loads the adapter into its slot
            times.append(time.perf_counter() - t)
        assert engine.last_plan.kind == "prefill"
        while engine.has_unfinished():
            engine.step()
        assert engine.requests[rid].output
    return 1e3 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    forms = ("table", "fused", "split", "split_mlp")
    p.add_argument(
        "variants", nargs="+", choices=[f + lite for f in forms for lite in ("", "+lite")]
    )
    p.add_argument("--graph-scheduling", default="concurrent", choices=GRAPH_SCHEDULING)
    p.add_argument("--rounds", type=int, default=1, help="rounds of every cell (median shown)")
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--batches", default="1,16,64,128")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--max-bucket", type=int, default=64, help="largest token bucket switched")
    p.add_argument("--prefill-tokens", default="64,256", help="prefill step sizes to time")
    args = p.parse_args()
    batches = tuple(int(b) for b in args.batches.split(","))
    prefill_sizes = tuple(int(t) for t in args.prefill_tokens.split(","))
    original = dict(tuned_blocks.GPU_TUNED)
    for variant in args.variants:
        tuned_blocks.GPU_TUNED.clear()
        tuned_blocks.GPU_TUNED.update(variant_table(variant, original, args.max_bucket))
        jax.clear_caches()  # the blocks are read when a step is traced: trace again
        t0 = time.perf_counter()
        engine = Engine(
            EngineConfig(
                model=args.model,
                load_format="dummy",
                lora_paths={n: "dummy:16" for n in ADAPTERS},
                max_loras_per_batch=3,
                max_lora_rank=16,
                lora_backend="pallas",
                context_length=1024,
                max_running_requests=max(batches),
                max_prefill_tokens=2048,
                decode_batch_buckets=batches,
                prefill_token_buckets=(*prefill_sizes, 2048),
                kv_len_buckets=(1024,),
                max_total_tokens=max(batches) * 1024,
                overlap_schedule=True,
                graph_scheduling=args.graph_scheduling,
            )
        )
        print(f"[{variant}] start-up {time.perf_counter() - t0:.1f} s", flush=True)
        for b in batches:
            cells = {"3 adapters": [ADAPTERS[i % 3] for i in range(b)], "base requests": [None] * b}
            got = {k: [] for k in cells}
            for round_ in range(args.rounds):
                for k, names in cells.items():
                    got[k].append(median_decode_step_ms(engine, names, args.steps, seed=round_))
            print(
                f"[{variant}] B={b:4d}: "
                + ", ".join(
                    f"{k} {statistics.median(v):.2f} ms ({' '.join(f'{x:.2f}' for x in v)})"
                    for k, v in got.items()
                ),
                flush=True,
            )
        for t in prefill_sizes:
            ms = median_prefill_step_ms(engine, t, ADAPTERS[0], reps=10)
            print(f"[{variant}] prefill of {t} tokens on an adapter: {ms:.2f} ms")
        del engine
        gc.collect()
    tuned_blocks.GPU_TUNED.clear()
    tuned_blocks.GPU_TUNED.update(original)


if __name__ == "__main__":
    main()
