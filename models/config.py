"""Model configuration: one frozen dataclass for the Llama family, read from a Hugging Face
``config.json`` in either layout transformers writes.

transformers 4.x writes ``rope_theta`` and ``rope_scaling`` at the top level and ``torch_dtype``;
transformers 5.x writes ``rope_parameters`` (a dict holding ``rope_theta`` and the scaling) and
``dtype``. Both are accepted; anything we do not implement is refused with a ``ValueError`` naming
the field and its value, never silently ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


class ModelConfigError(ValueError):
    """A config.json value we cannot serve (unknown architecture, unsupported RoPE, ...)."""


@dataclass(frozen=True, kw_only=True)
class RopeConfig:
    """Rotary position embedding parameters."""

    theta: float = 10000.0
    """Base of the rotary frequencies (``rope_theta``)."""
    rope_type: str = "default"
    """``default``, ``linear`` or ``llama3`` (the Llama 3.1 frequency-dependent scaling)."""
    factor: float = 1.0
    """Scaling factor for ``linear`` and ``llama3``."""
    low_freq_factor: float = 1.0
    """``llama3`` only: wavelengths above ``original_max_position / low_freq_factor`` are scaled."""
    high_freq_factor: float = 4.0
    """``llama3`` only: wavelengths below ``original_max_position / high_freq_factor`` are kept."""
    original_max_position: int = 8192
    """``llama3`` only: the context length the model was pre-trained with."""

    def inv_freq(self, head_dim: int) -> np.ndarray:
        """Rotary inverse frequencies ``[head_dim // 2]`` (float64), as transformers has them."""
        inv = 1.0 / (self.theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
        if self.rope_type == "default":
            return inv
        if self.rope_type == "linear":
            return inv / self.factor
        # llama3: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
        low_wavelen = self.original_max_position / self.low_freq_factor
        high_wavelen = self.original_max_position / self.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / self.factor, inv)
        smooth = (self.original_max_position / wavelen - self.low_freq_factor) / (
            self.high_freq_factor - self.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, smoothed, scaled)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Architecture of a Llama-family decoder (Llama 2/3/3.1/3.2, Mistral, Qwen2)."""

    model_type: str = "llama"
    """``llama``, ``mistral`` or ``qwen2``."""
    vocab_size: int
    """Number of token ids."""
    hidden_size: int
    """Width of the residual stream."""
    intermediate_size: int
    """Width of the SwiGLU MLP."""
    num_layers: int
    """Number of decoder layers."""
    num_heads: int
    """Query heads."""
    num_kv_heads: int
    """Key/value heads (grouped-query attention when fewer than ``num_heads``)."""
    head_dim: int
    """Width of one attention head."""
    rms_norm_eps: float = 1e-5
    """Epsilon of every RMSNorm."""
    rope: RopeConfig = field(default_factory=RopeConfig)
    """Rotary embedding parameters."""
    max_position_embeddings: int = 4096
    """Longest context the engine serves (capped at the sliding window, if the model has one)."""
    tie_word_embeddings: bool = False
    """The output head reuses the embedding matrix."""
    qkv_bias: bool = False
    """q/k/v projections have a bias (Qwen2; Llama with ``attention_bias``)."""
    o_bias: bool = False
    """The output projection has a bias (Llama with ``attention_bias``)."""
    torch_dtype: str = "bfloat16"
    """dtype the checkpoint was saved in (informational; the engine's ``dtype`` decides)."""
    bos_token_id: int | None = None
    """Beginning-of-sequence token id."""
    eos_token_ids: tuple[int, ...] = ()
    """Token ids that end generation."""

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each LoRA-targetable linear module, by its PEFT name."""
        d, inter = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (d, self.q_size),
            "k_proj": (d, self.kv_size),
            "v_proj": (d, self.kv_size),
            "o_proj": (self.q_size, d),
            "gate_proj": (d, inter),
            "up_proj": (d, inter),
            "down_proj": (inter, d),
        }

    def num_params(self) -> int:
        per_layer = sum(i * o for i, o in self.module_shapes().values()) + 2 * self.hidden_size
        head = 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size
        return self.num_layers * per_layer + self.vocab_size * self.hidden_size + head

    def __post_init__(self) -> None:
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelConfigError(
                f"model_type={self.model_type!r} is not supported (supported: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads"):
            _require_positive_int(name, getattr(self, name))
        _require_positive_int("num_kv_heads", self.num_kv_heads)
        _require_positive_int("head_dim", self.head_dim)
        if self.num_heads % self.num_kv_heads:
            raise ModelConfigError(
                f"num_attention_heads={self.num_heads} is not a multiple of "
                f"num_key_value_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ModelConfigError(f"head_dim={self.head_dim} must be even for rotary embeddings")

    # ------------------------------------------------------------------ Hugging Face config.json
    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any]) -> ModelConfig:
        """Read a ``config.json`` dict in the transformers 4.x or 5.x layout."""
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelConfigError(
                f"model_type={model_type!r} is not supported (supported: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        for key in ("hidden_act",):
            if cfg.get(key, "silu") != "silu":
                raise ModelConfigError(f"{key}={cfg[key]!r} is not supported (only 'silu')")
        if cfg.get("mlp_bias"):
            raise ModelConfigError("mlp_bias=True is not supported")
        hidden = _get_int(cfg, "hidden_size")
        heads = _get_int(cfg, "num_attention_heads")
        head_dim = cfg.get("head_dim") or hidden // heads
        max_pos = _get_int(cfg, "max_position_embeddings", 4096)
        # We implement full attention only. A sliding window longer than every sequence we admit
        # is the same as full attention, so serve contexts up to the window instead of refusing.
        window = cfg.get("sliding_window")
        uses_window = cfg.get("use_sliding_window", model_type == "mistral")
        if window is not None and uses_window:
            max_pos = min(max_pos, int(window))
        attention_bias = bool(cfg.get("attention_bias", False))
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        return cls(
            model_type=model_type,
            vocab_size=_get_int(cfg, "vocab_size"),
            hidden_size=hidden,
            intermediate_size=_get_int(cfg, "intermediate_size"),
            num_layers=_get_int(cfg, "num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope=_read_rope(cfg),
            max_position_embeddings=max_pos,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=model_type != "qwen2" and attention_bias,
            torch_dtype=str(cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16"),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> ModelConfig:
        config_path = Path(path) / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"no config.json in model directory {str(path)!r}")
        try:
            cfg = json.loads(config_path.read_text())
        except json.JSONDecodeError as e:
            raise ModelConfigError(f"{config_path} is not valid JSON: {e}") from e
        return cls.from_hf_dict(cfg)


def _require_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelConfigError(f"{name}={value!r} must be a positive integer")


def _get_int(cfg: dict[str, Any], key: str, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if value is None:
        raise ModelConfigError(f"config.json has no {key!r}")
    if not isinstance(value, int) or isinstance(value, bool):
        raise ModelConfigError(f"{key}={value!r} must be an integer")
    return value


def _read_rope(cfg: dict[str, Any]) -> RopeConfig:
    # 5.x: everything under rope_parameters; 4.x: rope_theta + rope_scaling (or None).
    params = cfg.get("rope_parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise ModelConfigError(f"rope_parameters={params!r} must be a dict")
        theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
        scaling = params
    else:
        theta = cfg.get("rope_theta", 10000.0)
        scaling = cfg.get("rope_scaling") or {}
        if not isinstance(scaling, dict):
            raise ModelConfigError(f"rope_scaling={scaling!r} must be a dict or null")
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    if rope_type == "default":
        return RopeConfig(theta=float(theta))
    if rope_type == "linear":
        return RopeConfig(theta=float(theta), rope_type="linear", factor=float(scaling["factor"]))
    if rope_type == "llama3":
        try:
            return RopeConfig(
                theta=float(theta),
                rope_type="llama3",
                factor=float(scaling["factor"]),
                low_freq_factor=float(scaling["low_freq_factor"]),
                high_freq_factor=float(scaling["high_freq_factor"]),
                original_max_position=int(scaling["original_max_position_embeddings"]),
            )
        except KeyError as e:
            raise ModelConfigError(f"llama3 rope scaling is missing {e.args[0]!r}") from e
    raise ModelConfigError(f"rope_type={rope_type!r} is not supported (default, linear, llama3)")
