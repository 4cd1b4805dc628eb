"""``make demo``: the seed's starvation experiment, scaled down to the tiny model on a CPU.

Six adapters of mixed ranks compete for three device slots under Poisson arrivals, as in the seed
(SGLang's LoRADrainer pull request). The same workload runs with the drainer off, with SGLang's
drainer, and with our ``fair`` policy; the side-by-side table shows the cold adapters' tail TTFT,
and TensorBoard runs and PNG plots are written under ``runs/demo``.
"""

from __future__ import annotations

import argparse
import time

from jlora.bench.cli import run_bench
from jlora.bench.config import BenchConfig
from jlora.config import EngineConfig

SETTINGS = (
    "off",
    "sglang:lora_drain_wait_threshold={threshold},lora_drain_policy=sglang",
    "fair:lora_drain_wait_threshold={threshold},lora_drain_policy=fair",
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo", help="TensorBoard runs and plots go here")
    parser.add_argument("--num-prompts", type=int, default=200)
    parser.add_argument("--request-rate", type=float, default=20.0)
    parser.add_argument("--threshold", type=float, default=1.0, help="drain wait threshold, s")
    args = parser.parse_args(argv)
    engine = EngineConfig(
        model="tiny",
        load_format="dummy",
        dtype="float32",
        lora_paths={f"adapter{i}": f"dummy:{r}" for i, r in enumerate((8, 16, 16, 32, 64, 8))},
        max_loaded_loras=6,
        max_loras_per_batch=3,
        max_lora_rank=64,
        context_length=512,
        max_running_requests=32,
        max_prefill_tokens=512,
        decode_batch_buckets=(8, 32),
        prefill_token_buckets=(128, 512),
        kv_len_buckets=(128, 512),
    )
    bench = BenchConfig(
        num_prompts=args.num_prompts,
        request_rate=args.request_rate,
        random_input_len=128,
        random_output_len=256,
        compare=tuple(s.format(threshold=args.threshold) for s in SETTINGS),
        tensorboard_dir=f"{args.out}/tensorboard",
        plot_dir=f"{args.out}/plots",
        output_file=f"{args.out}/results.jsonl",
    )
    print(
        "jlora demo: the seed's LoRA starvation, scaled to the tiny model on this CPU\n"
        f"  6 adapters (ranks 8-64), 3 slots, {bench.num_prompts} requests at "
        f"{bench.request_rate:g}/s, inputs in [1, 128], outputs in [1, 256]; drain threshold "
        f"{args.threshold:g} s\n"
    )
    start = time.perf_counter()
    run_bench(engine, bench)
    print(f"\nplots: {bench.plot_dir}/*.png   ({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
