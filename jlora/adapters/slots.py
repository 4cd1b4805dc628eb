"""Device slots: the LoRA buffers the forward reads (``max_loras_per_batch`` x ``max_lora_rank``).

Per layer and module group (qkv, o, gate_up, down) one :class:`~jlora.kernels.LoraGroup` stacked
over the slots. Putting an adapter into a slot is a jitted update of only that slot, with the
buffers donated, so it costs the adapter's bytes, not the pool's, and happens between steps.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jlora.adapters.peft import LoraAdapter
from jlora.kernels.types import MODULE_GROUPS, LoraGroup
from models.config import ModelConfig
from models.llama import LoraLayers
from models.weights import DTYPES


def group_out_sizes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Output sizes of the modules of each group, in group order."""
    shapes = cfg.module_shapes()
    return {g: tuple(shapes[m][1] for m in ms) for g, ms in MODULE_GROUPS.items()}


def _group_in_size(cfg: ModelConfig, group: str) -> int:
    return cfg.module_shapes()[MODULE_GROUPS[group][0]][0]


def adapter_to_groups(
    adapter: LoraAdapter | None, cfg: ModelConfig, max_rank: int, dtype: str
) -> list[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """One slot's worth of host arrays: per layer, per group ``(a [M,R,in], b [O,R], scale [M])``.

    ``None`` gives zeros (an empty slot); modules the adapter does not target stay zero, scale 0.
    """
    np_dtype = DTYPES[dtype]
    out_sizes = group_out_sizes(cfg)
    layers = []
    for layer in range(cfg.num_layers):
        groups = {}
        for group, modules in MODULE_GROUPS.items():
            d_in = _group_in_size(cfg, group)
            a = np.zeros((len(modules), max_rank, d_in), np_dtype)
            b = np.zeros((sum(out_sizes[group]), max_rank), np_dtype)
            scale = np.zeros((len(modules),), np.float32)
            off = 0
            for m, (module, size) in enumerate(zip(modules, out_sizes[group], strict=True)):
                lm = None if adapter is None else adapter.modules.get((layer, module))
                if lm is not None:
                    a[m, : lm.rank] = lm.a
                    b[off : off + size, : lm.rank] = lm.b
                    scale[m] = lm.scale
                off += size
            groups[group] = (a, b, scale)
        layers.append(groups)
    return layers


@functools.partial(jax.jit, donate_argnums=(0,))
def _write_slot(buffers: LoraLayers, slot: jax.Array, values: LoraLayers) -> LoraLayers:
    # `slot` is traced, so one compilation serves every slot index.
    return jax.tree.map(lambda buf, val: buf.at[slot].set(val.astype(buf.dtype)), buffers, values)


class SlotBuffers:
    """The device LoRA buffers and which adapter each slot holds (host-side bookkeeping)."""

    def __init__(self, cfg: ModelConfig, num_slots: int, max_rank: int, dtype: str):
        self.cfg, self.num_slots, self.max_rank, self.dtype = cfg, num_slots, max_rank, dtype
        jdtype = jnp.dtype(DTYPES[dtype])
        out_sizes = group_out_sizes(cfg)

        def empty_group(group: str) -> LoraGroup:
            m = len(MODULE_GROUPS[group])
            return LoraGroup(
                a=jnp.zeros((num_slots, m, max_rank, _group_in_size(cfg, group)), jdtype),
                b=jnp.zeros((num_slots, sum(out_sizes[group]), max_rank), jdtype),
                scale=jnp.zeros((num_slots, m), jnp.float32),
            )

        self.layers: LoraLayers = tuple(
            {g: empty_group(g) for g in MODULE_GROUPS} for _ in range(cfg.num_layers)
        )
        self.slot_rank = np.zeros((num_slots,), np.int32)
        self.occupant: list[str | None] = [None] * num_slots

    def put(self, slot: int, adapter: LoraAdapter | None) -> None:
        """Load ``adapter`` (or zeros for None) into device slot ``slot``."""
        if not 0 <= slot < self.num_slots:
            raise ValueError(f"slot={slot} outside [0, {self.num_slots})")
        host = adapter_to_groups(adapter, self.cfg, self.max_rank, self.dtype)
        values = tuple(
            {g: LoraGroup(a=a, b=b, scale=s) for g, (a, b, s) in layer.items()} for layer in host
        )
        self.layers = _write_slot(self.layers, jnp.int32(slot), values)
        self.slot_rank[slot] = 0 if adapter is None else adapter.rank
        self.occupant[slot] = None if adapter is None else adapter.name

    def slot_of(self, name: str) -> int | None:
        try:
            return self.occupant.index(name)
        except ValueError:
            return None
