"""Training: LoRA fine-tuning and base pre-training over the serving forward, with optax, orbax
checkpoints, TensorBoard scalars and PEFT export; the skills language and its evaluation."""

from jlora.train.config import TrainConfig
from jlora.train.export import export_base_model, export_peft_adapter
from jlora.train.loop import (
    Batch,
    FullObjective,
    LoraObjective,
    fit,
    make_optimizer,
    train_base,
    train_lora,
)
from jlora.train.lora_params import (
    LoraPair,
    LoraParams,
    adapter_to_lora,
    init_lora_params,
    lora_slot_layers,
    lora_to_adapter,
)
from jlora.train.state import TrainState

__all__ = [
    "Batch",
    "FullObjective",
    "LoraObjective",
    "LoraPair",
    "LoraParams",
    "TrainConfig",
    "TrainState",
    "adapter_to_lora",
    "export_base_model",
    "export_peft_adapter",
    "fit",
    "init_lora_params",
    "lora_slot_layers",
    "lora_to_adapter",
    "make_optimizer",
    "train_base",
    "train_lora",
]
