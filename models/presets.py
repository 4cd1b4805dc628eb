"""Architectures by name, for benchmarks and demos that need no download.

A preset gives the exact shapes of a published model; with ``load_format="dummy"`` the engine fills
them with random weights (as SGLang and vLLM call it), which is what GPU benchmarks measure.
"""

from __future__ import annotations

import dataclasses

from models.config import ModelConfig, RopeConfig

_LLAMA31_ROPE = RopeConfig(
    theta=500000.0,
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position=8192,
)
_LLAMA3_EOS = (128001, 128008, 128009)

PRESETS: dict[str, ModelConfig] = {
    # meta-llama/Llama-3.1-8B(-Instruct)
    "llama-3.1-8b": ModelConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        rms_norm_eps=1e-5,
        rope=_LLAMA31_ROPE,
        max_position_embeddings=131072,
        bos_token_id=128000,
        eos_token_ids=_LLAMA3_EOS,
    ),
    # meta-llama/Llama-3.2-1B(-Instruct): tied embeddings, llama3 scaling with factor 32.
    "llama-3.2-1b": ModelConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        head_dim=64,
        rms_norm_eps=1e-5,
        rope=RopeConfig(
            theta=500000.0,
            rope_type="llama3",
            factor=32.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position=8192,
        ),
        max_position_embeddings=131072,
        tie_word_embeddings=True,
        bos_token_id=128000,
        eos_token_ids=_LLAMA3_EOS,
    ),
    # A Llama 3 shaped model small enough for CPU demos and tests (GQA, llama3 RoPE, untied head).
    "tiny": ModelConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        rms_norm_eps=1e-5,
        rope=RopeConfig(
            theta=10000.0,
            rope_type="llama3",
            factor=4.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position=256,
        ),
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_ids=(2,),
    ),
}


# meta-llama/Llama-3.1-70B(-Instruct): the 8B's vocabulary, RoPE and head width, scaled up.
PRESETS["llama-3.1-70b"] = dataclasses.replace(
    PRESETS["llama-3.1-8b"],
    hidden_size=8192,
    intermediate_size=28672,
    num_layers=80,
    num_heads=64,
)


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r} (known: {', '.join(PRESETS)})") from None
