"""Export trained weights: a LoRA to a PEFT adapter directory, a base model to an HF directory.

The adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``, tensors named
``base_model.model.model.layers.{i}.{self_attn|mlp}.{proj}.lora_{A|B}.weight``) is what
``peft.PeftModel.from_pretrained`` and :func:`jlora.adapters.load_peft_adapter` read.
"""

from __future__ import annotations

from pathlib import Path

from jlora.adapters.dummy import save_peft_adapter
from jlora.train.config import TrainConfig
from jlora.train.lora_params import LoraParams, lora_to_adapter
from models.config import ModelConfig
from models.llama import LlamaParams
from models.save import save_hf_weights


def export_peft_adapter(
    lora: LoraParams,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    name: str = "adapter",
    base_model: str | None = None,
) -> Path:
    """Write trained LoRA pairs as a PEFT adapter (``r = config.rank``, ``lora_alpha``)."""
    adapter = lora_to_adapter(lora, name, config.scale)
    return save_peft_adapter(adapter, out_dir, base_model=base_model)


def export_base_model(params: LlamaParams, cfg: ModelConfig, out_dir: str | Path) -> Path:
    """Write base weights as a Hugging Face model directory (``config.json`` + safetensors)."""
    return save_hf_weights(params, cfg, out_dir)
