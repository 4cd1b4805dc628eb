"""Write a model as a Hugging Face directory: ``config.json`` and ``model.safetensors``.

The inverse of :mod:`models.weights`: the same declarative table, walked the other way (slice each
HF tensor out of its fused field, transpose the linear weights back to torch's ``[out, in]``), so
a directory written here loads through :func:`models.weights.load_hf_weights` and transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from models.config import ModelConfig
from models.llama import LlamaParams
from models.weights import DTYPES, LAYER_TABLE, TOP_TABLE, WeightRow

_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}


def hf_config_dict(cfg: ModelConfig, dtype: str = "float32") -> dict:
    """``config.json`` of ``cfg`` in the transformers 5.x layout (``rope_parameters``, ``dtype``).

    :meth:`ModelConfig.from_hf_dict` reads it back to an equal config.
    """
    rope = {"rope_type": cfg.rope.rope_type, "rope_theta": cfg.rope.theta}
    if cfg.rope.rope_type in ("linear", "llama3"):
        rope["factor"] = cfg.rope.factor
    if cfg.rope.rope_type == "llama3":
        rope.update(
            low_freq_factor=cfg.rope.low_freq_factor,
            high_freq_factor=cfg.rope.high_freq_factor,
            original_max_position_embeddings=cfg.rope.original_max_position,
        )
    eos = list(cfg.eos_token_ids)
    out = {
        "architectures": [_ARCHITECTURES[cfg.model_type]],
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_parameters": rope,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "dtype": dtype,
    }
    if cfg.model_type == "llama":
        if cfg.qkv_bias != cfg.o_bias:
            raise ValueError("a llama config.json cannot express q/k/v bias without o bias")
        out["attention_bias"] = cfg.qkv_bias
        out["mlp_bias"] = False
    elif cfg.model_type == "qwen2":
        out["use_sliding_window"] = False
        out["sliding_window"] = None
    elif cfg.model_type == "mistral":
        out["sliding_window"] = None
    return out


def hf_tensors(params: LlamaParams, cfg: ModelConfig, dtype: str = "float32") -> dict:
    """Every checkpoint tensor of ``params`` by HF name, as numpy arrays of ``dtype``."""
    np_dtype = DTYPES[dtype]
    tensors: dict[str, np.ndarray] = {}

    def put(name: str, row: WeightRow, field: np.ndarray) -> None:
        size = row.hf_shape(cfg)[0] if row.transpose else row.hf_shape(cfg)[-1]
        off = row.offset(cfg)
        value = field[..., off : off + size]
        value = value.T if row.transpose else value
        if value.shape != row.hf_shape(cfg):
            raise ValueError(f"{name}: shape {value.shape} != {row.hf_shape(cfg)}")
        tensors[name] = np.ascontiguousarray(value.astype(np_dtype))

    for row in TOP_TABLE:
        if row.present(cfg):
            put(row.hf_name, row, np.asarray(getattr(params, row.field), np.float32))
    for i, layer in enumerate(params.layers):
        for row in LAYER_TABLE:
            if row.present(cfg):
                put(row.hf_name.format(i=i), row, np.asarray(getattr(layer, row.field), np.float32))
    return tensors


def save_hf_weights(
    params: LlamaParams, cfg: ModelConfig, out_dir: str | Path, dtype: str = "float32"
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (single file) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config_dict(cfg, dtype), indent=2) + "\n")
    save_file(hf_tensors(params, cfg, dtype), str(out / "model.safetensors"), {"format": "pt"})
    return out
