"""PEFT LoRA adapters from a directory: ``adapter_config.json`` + ``adapter_model.safetensors``.

What is supported: ``r``, ``lora_alpha``, ``use_rslora`` (scale ``alpha / sqrt(r)`` instead of
``alpha / r``), ``target_modules`` as a list or a single regex string over q/k/v/o/gate/up/down,
``rank_pattern`` / ``alpha_pattern`` (per-module overrides, matched as PEFT matches them), and
``layers_to_transform``. The tensors in the file are the truth about which (layer, module) pairs an
adapter targets; the config must agree with them.

Everything else is refused at load time with an :class:`AdapterError` (a ``ValueError``) naming the
adapter, the field and the value: DoRA, ``modules_to_save``, LoRA biases, embedding or lm_head
targets, a rank above ``max_lora_rank``, a shape that does not fit the base model, a missing
directory or file, a malformed config value, a weights file that cannot be read (truncated,
empty), a config that is not UTF-8, an invalid regex, a NaN or Inf weight.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from jlora.kernels.types import TARGET_MODULES
from models.config import ModelConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

_TENSOR_NAME = re.compile(
    r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_(A|B)\.weight$"
)
_PARENT = {
    m: ("self_attn" if m in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp")
    for m in TARGET_MODULES
}


class AdapterError(ValueError):
    """An adapter we cannot serve. The message names the adapter, the field and the value."""

    def __init__(self, adapter: str, field: str, value: Any, why: str):
        self.adapter, self.field, self.value = adapter, field, value
        super().__init__(f"adapter {adapter!r}: {field}={value!r} {why}")


@dataclass(frozen=True)
class LoraModule:
    """The LoRA weights of one (layer, module), host-side float32."""

    a: np.ndarray  # [r, in]
    b: np.ndarray  # [out, r]
    scale: float  # lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA

    @property
    def rank(self) -> int:
        return self.a.shape[0]


@dataclass(frozen=True)
class LoraAdapter:
    """A loaded adapter: its weights per (layer index, PEFT module name)."""

    name: str
    path: str | None
    modules: dict[tuple[int, str], LoraModule]

    @property
    def rank(self) -> int:
        """The largest rank over its modules (what a device slot must hold)."""
        return max((m.rank for m in self.modules.values()), default=0)

    @property
    def target_modules(self) -> tuple[str, ...]:
        found = {name for _, name in self.modules}
        return tuple(m for m in TARGET_MODULES if m in found)

    def nbytes(self) -> int:
        return sum(m.a.nbytes + m.b.nbytes for m in self.modules.values())


def _pattern_value(patterns: dict[str, Any], module_path: str, default: Any) -> Any:
    # PEFT matches each pattern key as a regex on the module's dotted path, anchored at a dot
    # boundary on the left and at the end on the right; the first matching key wins.
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module_path):
            return value
    return default


def read_peft_config(name: str, path: Path) -> dict[str, Any]:
    """The ``adapter_config.json`` of adapter directory ``path``, which must also hold the
    weights file; :class:`AdapterError` naming what is missing or unreadable."""
    if not path.is_dir():
        if str(path).startswith("dummy:"):  # a random adapter's spec that did not parse
            raise AdapterError(name, "path", str(path), "is not dummy:RANK with a whole RANK >= 1")
        why = " (nothing is there)" if not path.exists() else ""
        raise AdapterError(name, "path", str(path), f"is not a directory{why}")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        if (path / "config.json").is_file():  # a model directory, not an adapter
            raise AdapterError(
                name,
                "path",
                str(path),
                f"has no {CONFIG_FILE} but a config.json: a full model, not a LoRA adapter "
                "(serve a model with --model / EngineConfig(model=...))",
            )
        raise AdapterError(name, "path", str(path), f"has no {CONFIG_FILE}")
    if not (path / WEIGHTS_FILE).is_file():
        raise AdapterError(name, "path", str(path), f"has no {WEIGHTS_FILE}")
    try:
        cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise AdapterError(name, CONFIG_FILE, str(config_path), f"is not UTF-8 text: {e}") from e
    except json.JSONDecodeError as e:
        raise AdapterError(name, CONFIG_FILE, str(config_path), f"is not valid JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise AdapterError(name, CONFIG_FILE, type(cfg).__name__, "must hold a JSON object")
    return cfg


def check_peft_config(name: str, cfg: dict[str, Any]) -> None:
    """Refuse, by name, a PEFT config this engine does not serve as written."""
    peft_type = cfg.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise AdapterError(name, "peft_type", peft_type, "is not supported (only LORA)")
    r = cfg.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise AdapterError(name, "r", r, "must be a positive integer")
    alpha = cfg.get("lora_alpha", r)
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or alpha <= 0:
        raise AdapterError(name, "lora_alpha", alpha, "must be a positive number")
    if not isinstance(cfg.get("use_rslora", False), bool):
        raise AdapterError(name, "use_rslora", cfg.get("use_rslora"), "must be true or false")
    refused = {
        "use_dora": (lambda v: bool(v), "is not supported (DoRA)"),
        "modules_to_save": (lambda v: bool(v), "is not supported (full modules saved)"),
        "lora_bias": (lambda v: bool(v), "is not supported (LoRA bias)"),
        "bias": (lambda v: v not in (None, "none"), "is not supported (only 'none')"),
        "fan_in_fan_out": (lambda v: bool(v), "is not supported (Conv1D layout)"),
    }
    for field, (is_bad, why) in refused.items():
        if field in cfg and is_bad(cfg[field]):
            raise AdapterError(name, field, cfg[field], why)
    targets = cfg.get("target_modules")
    if isinstance(targets, str):
        try:
            re.compile(targets)
        except re.error as e:
            raise AdapterError(name, "target_modules", targets, f"is not a valid regex: {e}") from e
    elif isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets):
        for t in targets:
            leaf = t.rsplit(".", 1)[-1]
            if leaf not in TARGET_MODULES:
                raise AdapterError(
                    name,
                    "target_modules",
                    t,
                    f"is not supported (supported: {', '.join(TARGET_MODULES)})",
                )
    else:
        raise AdapterError(
            name, "target_modules", targets, "must be a non-empty list of names or a regex string"
        )
    for field in ("rank_pattern", "alpha_pattern"):
        value = cfg.get(field) or {}
        if not isinstance(value, dict):
            raise AdapterError(name, field, value, "must be a dict")
        for key, v in value.items():
            try:
                re.compile(rf"(.*\.)?({key})$")
            except re.error as e:
                raise AdapterError(name, f"{field} key", key, f"is not a valid regex: {e}") from e
            if not isinstance(v, int | float) or isinstance(v, bool) or v <= 0:
                raise AdapterError(name, f"{field}[{key!r}]", v, "must be a positive number")
    layers = cfg.get("layers_to_transform")
    if layers is not None and not (
        isinstance(layers, int)
        or (isinstance(layers, list) and all(isinstance(x, int) for x in layers))
    ):
        raise AdapterError(name, "layers_to_transform", layers, "must be an int or a list of ints")


def load_peft_adapter(
    name: str, path: str | Path, model: ModelConfig, max_lora_rank: int
) -> LoraAdapter:
    """Read and validate a PEFT LoRA adapter directory against the base model's shapes."""
    path = Path(path)
    cfg = read_peft_config(name, path)
    check_peft_config(name, cfg)
    layers_cfg = cfg.get("layers_to_transform")
    allowed_layers = (
        None
        if layers_cfg is None
        else {layers_cfg}
        if isinstance(layers_cfg, int)
        else set(layers_cfg)
    )
    try:
        pairs = _read_tensors(name, path, model, allowed_layers, layers_cfg)
    except AdapterError:
        raise
    except Exception as e:  # safetensors' own errors: truncated, empty or not safetensors
        raise AdapterError(
            name, WEIGHTS_FILE, str(path / WEIGHTS_FILE), f"cannot be read: {type(e).__name__}: {e}"
        ) from e
    return _build_adapter(name, path, model, max_lora_rank, cfg, pairs)


def _read_tensors(
    name: str, path: Path, model: ModelConfig, allowed_layers, layers_cfg
) -> dict[tuple[int, str], dict[str, np.ndarray]]:
    """The A/B tensors of the weights file by (layer, module), float32, each checked finite."""
    pairs: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    with safe_open(path / WEIGHTS_FILE, framework="numpy") as fh:
        for tensor_name in fh.keys():  # noqa: SIM118 - safe_open handles are not iterable
            if "lora_embedding" in tensor_name or "embed_tokens" in tensor_name:
                raise AdapterError(name, "tensor", tensor_name, "targets the embedding")
            if "lm_head" in tensor_name:
                raise AdapterError(name, "tensor", tensor_name, "targets lm_head")
            if "lora_magnitude_vector" in tensor_name:
                raise AdapterError(name, "tensor", tensor_name, "is a DoRA magnitude")
            match = _TENSOR_NAME.match(tensor_name)
            if match is None:
                raise AdapterError(name, "tensor", tensor_name, "is not a LoRA A/B weight we know")
            layer, parent, module, which = (
                int(match[1]),
                match[2],
                match[3],
                match[4],
            )
            if module not in TARGET_MODULES or _PARENT[module] != parent:
                raise AdapterError(name, "tensor", tensor_name, "targets an unsupported module")
            if layer >= model.num_layers:
                raise AdapterError(
                    name, "tensor", tensor_name, f"is past the model's {model.num_layers} layers"
                )
            if allowed_layers is not None and layer not in allowed_layers:
                raise AdapterError(
                    name,
                    "layers_to_transform",
                    layers_cfg,
                    f"excludes layer {layer} of the weights",
                )
            tensor = fh.get_tensor(tensor_name).astype(np.float32)
            if not np.isfinite(tensor).all():
                bad = int(np.size(tensor) - np.isfinite(tensor).sum())
                raise AdapterError(
                    name, "tensor", tensor_name, f"holds {bad} non-finite values (NaN or Inf)"
                )
            pairs.setdefault((layer, module), {})[which] = tensor
    return pairs


def _build_adapter(
    name: str, path: Path, model: ModelConfig, max_lora_rank: int, cfg: dict[str, Any], pairs
) -> LoraAdapter:
    r, alpha = cfg["r"], cfg.get("lora_alpha", cfg["r"])
    rslora = cfg.get("use_rslora", False)
    rank_pattern = cfg.get("rank_pattern") or {}
    alpha_pattern = cfg.get("alpha_pattern") or {}
    shapes = model.module_shapes()
    if not pairs:
        raise AdapterError(name, WEIGHTS_FILE, str(path / WEIGHTS_FILE), "holds no LoRA weights")
    modules: dict[tuple[int, str], LoraModule] = {}
    for (layer, module), ab in sorted(pairs.items()):
        where = f"layer {layer} {module}"
        if set(ab) != {"A", "B"}:
            raise AdapterError(name, "tensor", where, "has lora_A without lora_B or the reverse")
        a, b = ab["A"], ab["B"]
        d_in, d_out = shapes[module]
        if (
            a.ndim != 2
            or b.ndim != 2
            or a.shape[1] != d_in
            or b.shape[0] != d_out
            or (a.shape[0] != b.shape[1])
        ):
            raise AdapterError(
                name,
                f"{where} shape",
                (tuple(a.shape), tuple(b.shape)),
                f"does not fit the base model (A must be (r, {d_in}), B ({d_out}, r))",
            )
        module_path = f"model.layers.{layer}.{_PARENT[module]}.{module}"
        rank = int(_pattern_value(rank_pattern, module_path, r))
        mod_alpha = float(_pattern_value(alpha_pattern, module_path, alpha))
        if a.shape[0] != rank:
            raise AdapterError(
                name, f"{where} rank", a.shape[0], f"differs from the config's r={rank}"
            )
        if rank > max_lora_rank:
            raise AdapterError(name, "r", rank, f"is above max_lora_rank={max_lora_rank}")
        scale = mod_alpha / (math.sqrt(rank) if rslora else rank)
        modules[(layer, module)] = LoraModule(a=a, b=b, scale=scale)
    return LoraAdapter(name=name, path=str(path), modules=modules)
