"""Write random LoRA adapters in real PEFT format for a preset or a Hugging Face model directory.

    python -m jlora.tools.make_adapters --model llama-3.1-8b --ranks 8,16,64 --out DIR

writes one adapter directory per rank under DIR (``r8``, ``r16``, ``r64``; a repeated rank gets a
suffix, ``r16_2``), each targeting all seven modules of every layer with non-zero B, loadable by
the engine (``--lora-paths NAME=DIR/r8``) and by HF PEFT.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ml_dtypes
import numpy as np

from jlora.adapters.dummy import random_adapter, save_peft_adapter
from models.config import ModelConfig
from models.presets import PRESETS, get_preset

_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def parse_ranks(text: str) -> list[int]:
    try:
        ranks = [int(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise ValueError(f"--ranks={text!r} must be a comma-separated list of integers") from None
    bad = [r for r in ranks if r < 1]
    if not ranks or bad:
        raise ValueError(f"--ranks={text!r} must list positive integers")
    return ranks


def make_adapters(
    model: str, ranks: list[int], out: str | Path, seed: int = 0, dtype: str = "float32"
) -> list[Path]:
    """Write one random PEFT adapter per rank under ``out``; returns their directories."""
    cfg = ModelConfig.from_hf_dir(model) if Path(model).is_dir() else get_preset(model)
    written, seen = [], {}
    for i, rank in enumerate(ranks):
        seen[rank] = seen.get(rank, 0) + 1
        name = f"r{rank}" if seen[rank] == 1 else f"r{rank}_{seen[rank]}"
        adapter = random_adapter(name, cfg, rank, seed=seed + i)
        written.append(
            save_peft_adapter(adapter, Path(out) / name, base_model=model, dtype=_DTYPES[dtype])
        )
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", required=True, help=f"HF model dir or preset ({', '.join(PRESETS)})"
    )
    parser.add_argument("--ranks", required=True, help="comma-separated ranks, e.g. 8,16,64")
    parser.add_argument("--out", required=True, help="directory to write the adapters under")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
    args = parser.parse_args(argv)
    for path in make_adapters(args.model, parse_ranks(args.ranks), args.out, args.seed, args.dtype):
        print(path)


if __name__ == "__main__":
    main()
