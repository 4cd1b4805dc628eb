"""Trainable LoRA weights, and the single-slot view through which the serving forward reads them.

The trainable pytree holds, per layer, the PEFT pair of each targeted module in PEFT's own layout
(``a [r, in]``, ``b [out, r]``), so the optimiser sees exactly the parameters PEFT would train and
export is a copy. :func:`lora_slot_layers` lays them out as one device slot (``S = 1``) in the
group layout of :mod:`jlora.kernels.types`; every token is routed to slot 0 and the forward is
``models.llama.forward`` itself, so gradients flow through the same ``lora_group_ref`` that serves.
Untargeted modules of a group get zero A/B and scale 0, as in a serving slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jlora.adapters.peft import LoraAdapter, LoraModule
from jlora.kernels.types import MODULE_GROUPS, LoraBatch, LoraGroup
from models.config import ModelConfig
from models.llama import LoraSlots


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class LoraPair:
    """The trainable A/B of one (layer, module), PEFT layout."""

    a: jax.Array  # [r, in]
    b: jax.Array  # [out, r]


# Per layer, the pairs of the targeted modules by PEFT name.
LoraParams = tuple[dict[str, LoraPair], ...]


def init_lora_params(
    cfg: ModelConfig,
    rank: int,
    target_modules: Sequence[str],
    key: jax.Array,
    dtype=jnp.float32,
) -> LoraParams:
    """PEFT's default init: A Kaiming-uniform (``a = sqrt(5)``, bound ``1/sqrt(in)``), B zeros.

    The adapter starts as a no-op, so step 0 reproduces the base model.
    """
    shapes = cfg.module_shapes()
    layers = []
    for layer in range(cfg.num_layers):
        pairs = {}
        for module in target_modules:
            d_in, d_out = shapes[module]
            bound = 1.0 / np.sqrt(d_in)
            k = jax.random.fold_in(jax.random.fold_in(key, layer), list(shapes).index(module))
            a = jax.random.uniform(k, (rank, d_in), jnp.float32, -bound, bound).astype(dtype)
            pairs[module] = LoraPair(a=a, b=jnp.zeros((d_out, rank), dtype))
        layers.append(pairs)
    return tuple(layers)


def lora_slot_layers(lora: LoraParams, cfg: ModelConfig, scale: float) -> LoraSlots:
    """The trainable pairs as one-slot group buffers (``S = 1``, stacked over the layers) for
    ``models.llama.forward``."""
    shapes = cfg.module_shapes()
    rank = lora_rank(lora)
    layers = []
    for pairs in lora:
        groups = {}
        for group, modules in MODULE_GROUPS.items():
            d_in = shapes[modules[0]][0]
            a_rows, b_rows, scales = [], [], []
            for module in modules:
                pair = pairs.get(module)
                d_out = shapes[module][1]
                if pair is None:
                    a_rows.append(jnp.zeros((rank, d_in), jnp.float32))
                    b_rows.append(jnp.zeros((d_out, rank), jnp.float32))
                    scales.append(0.0)
                else:
                    a_rows.append(pair.a.astype(jnp.float32))
                    b_rows.append(pair.b.astype(jnp.float32))
                    scales.append(scale)
            groups[group] = LoraGroup(
                a=jnp.stack(a_rows)[None],  # [1, M, R, in]
                b=jnp.concatenate(b_rows, axis=0)[None],  # [1, O, R]
                scale=jnp.asarray([scales], jnp.float32),  # [1, M]
            )
        layers.append(groups)
    return {
        g: jax.tree.map(lambda *per_layer: jnp.stack(per_layer), *(groups[g] for groups in layers))
        for g in MODULE_GROUPS
    }


def single_slot_batch(num_tokens: int, rank: int) -> LoraBatch:
    """Routing of ``num_tokens`` tokens all to slot 0 (static values: can be built under trace)."""
    return LoraBatch(
        token_slot=jnp.zeros((num_tokens,), jnp.int32),
        slot_rank=jnp.full((1,), rank, jnp.int32),
    )


def lora_to_adapter(lora: LoraParams, name: str, scale: float) -> LoraAdapter:
    """Host copy of trained pairs as a :class:`LoraAdapter` (what ``save_peft_adapter`` writes)."""
    modules = {}
    for layer, pairs in enumerate(lora):
        for module, pair in pairs.items():
            modules[(layer, module)] = LoraModule(
                a=np.asarray(pair.a, np.float32), b=np.asarray(pair.b, np.float32), scale=scale
            )
    return LoraAdapter(name=name, path=None, modules=modules)


def adapter_to_lora(adapter: LoraAdapter, cfg: ModelConfig) -> LoraParams:
    """The inverse of :func:`lora_to_adapter` (each module keeps its own rank)."""
    layers: list[dict[str, LoraPair]] = [{} for _ in range(cfg.num_layers)]
    for (layer, module), lm in sorted(adapter.modules.items()):
        layers[layer][module] = LoraPair(a=jnp.asarray(lm.a), b=jnp.asarray(lm.b))
    return tuple(layers)


def lora_rank(lora: LoraParams) -> int:
    """The rank shared by every pair (trainable pairs have one rank)."""
    ranks = {pair.a.shape[0] for pairs in lora for pair in pairs.values()}
    if len(ranks) != 1:
        raise ValueError(f"trainable LoRA pairs must share one rank, got {sorted(ranks)}")
    return ranks.pop()
