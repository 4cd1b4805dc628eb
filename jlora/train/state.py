"""The train state: what a training step updates and a checkpoint holds (its own module, below
both :mod:`jlora.train.loop` and :mod:`jlora.train.checkpoint`, which each use it)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import optax

from jlora.train.lora_params import LoraParams
from models.llama import LlamaParams


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class TrainState:
    """Everything a step updates; what a checkpoint holds (with the run's metadata)."""

    step: jax.Array  # [] int32, steps done
    params: LoraParams | LlamaParams  # the trainable weights
    opt_state: optax.OptState
