"""``make demo``: the built-in tiny model scores a batch that mixes adapters (and no adapter).

It shows the multi-LoRA forward end to end on the CPU: three random adapters of different ranks
share two device slots, every prompt gets its own adapter's logits, and scoring the prompts one at
a time gives the same numbers as the mixed batch.
"""

from __future__ import annotations

import time

import numpy as np

from jlora import Engine, EngineConfig


def main() -> None:
    config = EngineConfig(
        model="tiny",
        load_format="dummy",
        dtype="float32",
        lora_paths={"a0": "dummy:8", "a1": "dummy:16", "a2": "dummy:4"},
        max_loras_per_batch=2,
        max_lora_rank=16,
    )
    start = time.perf_counter()
    engine = Engine(config)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, config.model_config().vocab_size, n).tolist() for n in (12, 5, 9, 7)]
    names = ["a0", None, "a1", "a2"]
    mixed = engine.score(prompts, lora_name=names)
    print(f"tiny model, adapters {dict(config.lora_paths)}, {config.max_loras_per_batch} slots")
    print(
        f"{'prompt':>6} {'adapter':>7} {'tokens':>6} {'next token':>10} {'max |mixed - alone|':>20}"
    )
    for i, (prompt, name, logits) in enumerate(zip(prompts, names, mixed, strict=True)):
        alone = engine.score([prompt], lora_name=name)[0]
        diff = float(np.abs(logits - alone).max())
        print(
            f"{i:>6} {name or '-':>7} {len(prompt):>6} {int(logits[-1].argmax()):>10} {diff:>20.2e}"
        )
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
