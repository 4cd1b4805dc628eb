"""The seed's setting (SGLang's LoRADrainer benchmark, PR #17913) as jlora runs it on the GPU: one
definition for the experiments that reproduce it (``experiments/seed_repro.py``) or replay it in
the simulator (``experiments/sim_slot_loads.py``)."""

from __future__ import annotations

from jlora.config import EngineConfig

SEED_RANKS = (8, 16, 16, 32, 64, 8)
"""Ranks of the seed's six dummy adapters ``adapter0..adapter5``."""


def seed_engine_config(model: str = "llama-3.1-8b", **overrides) -> EngineConfig:
    """Llama-3.1-8B (or ``model``) with dummy weights, bfloat16, six dummy adapters on three slots;
    context 1024 and 128 sequences: 17 GB of KV cache beside the 16 GB of weights on one H100 (with
    ``attention_backend="xla"``, which gathers every sequence's pages, use 64 and 65536).
    ``overrides``: other EngineConfig fields."""
    fields = dict(
        model=model,
        load_format="dummy",
        dtype="bfloat16",
        lora_paths={f"adapter{i}": f"dummy:{r}" for i, r in enumerate(SEED_RANKS)},
        max_loaded_loras=6,
        max_loras_per_batch=3,
        max_lora_rank=64,
        context_length=1024,
        max_running_requests=128,
        max_total_tokens=131072,
        max_prefill_tokens=2048,
        decode_batch_buckets=(16, 64, 128),
        prefill_token_buckets=(512, 2048),
        kv_len_buckets=(1024,),
    )
    fields.update(overrides)
    return EngineConfig(**fields)
