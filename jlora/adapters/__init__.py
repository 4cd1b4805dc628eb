"""Adapters: PEFT loading, random adapters, and the device slots the forward reads."""

from jlora.adapters.dummy import random_adapter, save_peft_adapter
from jlora.adapters.peft import AdapterError, LoraAdapter, LoraModule, load_peft_adapter
from jlora.adapters.slots import SlotBuffers

__all__ = [
    "AdapterError",
    "LoraAdapter",
    "LoraModule",
    "SlotBuffers",
    "load_peft_adapter",
    "random_adapter",
    "save_peft_adapter",
]
