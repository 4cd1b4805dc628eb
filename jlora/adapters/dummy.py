"""Random adapters (``NAME=dummy:RANK``) and writing adapters in PEFT format.

A random adapter targets all seven modules of every layer at one rank, with ``A`` as PEFT's Kaiming
init and ``B`` non-zero (PEFT starts B at zero, which would make the adapter a no-op), scaled so the
adapter visibly changes the model's output without swamping it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from jlora.adapters.peft import CONFIG_FILE, WEIGHTS_FILE, LoraAdapter, LoraModule
from jlora.kernels.types import TARGET_MODULES
from models.config import ModelConfig

_DUMMY = re.compile(r"^dummy:(\d+)$")


def parse_dummy_spec(spec: str) -> int | None:
    """The rank of a ``dummy:RANK`` adapter path, or None for a real path."""
    match = _DUMMY.match(spec)
    return None if match is None else int(match[1])


def random_adapter(
    name: str, cfg: ModelConfig, rank: int, seed: int = 0, alpha: float | None = None
) -> LoraAdapter:
    """A random rank-``rank`` adapter on all seven modules (float32, host memory)."""
    if rank < 1:
        raise ValueError(f"adapter {name!r}: rank={rank} must be positive")
    rng = np.random.default_rng(seed)
    alpha = float(2 * rank if alpha is None else alpha)
    modules = {}
    for layer in range(cfg.num_layers):
        for module, (d_in, d_out) in cfg.module_shapes().items():
            bound = 1.0 / np.sqrt(d_in)
            a = rng.uniform(-bound, bound, (rank, d_in)).astype(np.float32)
            b = (rng.standard_normal((d_out, rank)) * (0.5 / np.sqrt(rank))).astype(np.float32)
            modules[(layer, module)] = LoraModule(a=a, b=b, scale=alpha / rank)
    return LoraAdapter(name=name, path=None, modules=modules)


def _module_path(layer: int, module: str) -> str:
    parent = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
    return f"model.layers.{layer}.{parent}.{module}"


def save_peft_adapter(
    adapter: LoraAdapter, out_dir: str | Path, base_model: str | None = None, dtype=np.float32
) -> Path:
    """Write ``adapter`` as a PEFT LoRA directory that PEFT and :func:`load_peft_adapter` read.

    The most common rank and scale become ``r`` / ``lora_alpha``; modules that differ are written
    to ``rank_pattern`` / ``alpha_pattern`` under their full module path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ranks = [m.rank for m in adapter.modules.values()]
    r = max(set(ranks), key=ranks.count)
    alphas = [m.scale * m.rank for m in adapter.modules.values()]
    alpha = max(set(alphas), key=alphas.count)
    rank_pattern, alpha_pattern, tensors = {}, {}, {}
    for (layer, module), lm in sorted(adapter.modules.items()):
        path = _module_path(layer, module)
        if lm.rank != r:
            rank_pattern[path] = lm.rank
        if lm.scale * lm.rank != alpha:
            alpha_pattern[path] = lm.scale * lm.rank
        tensors[f"base_model.model.{path}.lora_A.weight"] = np.ascontiguousarray(lm.a, dtype)
        tensors[f"base_model.model.{path}.lora_B.weight"] = np.ascontiguousarray(lm.b, dtype)
    layers = sorted({layer for layer, _ in adapter.modules})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "use_rslora": False,
        "use_dora": False,
        "bias": "none",
        "fan_in_fan_out": False,
        "target_modules": [m for m in TARGET_MODULES if m in adapter.target_modules],
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "layers_to_transform": None if len(layers) == _num_layers_hint(adapter) else layers,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(out / WEIGHTS_FILE))
    return out


def _num_layers_hint(adapter: LoraAdapter) -> int:
    # An adapter written by us covers layers 0..max; treat any gap as layers_to_transform.
    return max(layer for layer, _ in adapter.modules) + 1
