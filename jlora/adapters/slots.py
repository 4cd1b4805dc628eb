"""Device slots: the LoRA buffers the forward reads (``max_loras_per_batch`` x ``max_lora_rank``).

Per layer and module group (qkv, o, gate_up, down) one :class:`~jlora.kernels.LoraGroup` stacked
over the slots. Putting an adapter into a slot is a jitted update of only that slot, with the
buffers donated, so it costs the adapter's bytes, not the pool's, and happens between steps.

Under tensor parallelism (a ``mesh``) the buffers are split as the base projections they add to
(:data:`GROUP_SHARDING`, see :mod:`jlora.tensor_parallel`): the column-parallel groups' ``b`` on
its output dim, laid out per shard like the fused base weights; the row-parallel groups' ``a`` on
its input dim.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jlora.adapters.peft import LoraAdapter
from jlora.kernels.types import MODULE_GROUPS, LoraGroup
from jlora.tensor_parallel import put_host, sharded_zeros
from models.config import ModelConfig
from models.llama import TP_AXIS, LoraLayers, fused_column_order
from models.weights import DTYPES

_COLUMN = LoraGroup(a=P(), b=P(None, TP_AXIS, None), scale=P())  # B split on the output dim
_ROW = LoraGroup(a=P(None, None, None, TP_AXIS), b=P(), scale=P())  # A split on the input dim
# How each group's buffers [S, ...] are split over the tensor-parallel axis.
GROUP_SHARDING: dict[str, LoraGroup] = {
    "qkv": _COLUMN,
    "o": _ROW,
    "gate_up": _COLUMN,
    "down": _ROW,
}


def lora_specs(num_layers: int) -> LoraLayers:
    """The PartitionSpecs of a :class:`SlotBuffers`' ``layers`` (a pytree of the same structure)."""
    return tuple(dict(GROUP_SHARDING) for _ in range(num_layers))


def group_out_sizes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Output sizes of the modules of each group, in group order."""
    shapes = cfg.module_shapes()
    return {g: tuple(shapes[m][1] for m in ms) for g, ms in MODULE_GROUPS.items()}


def _group_in_size(cfg: ModelConfig, group: str) -> int:
    return cfg.module_shapes()[MODULE_GROUPS[group][0]][0]


def adapter_to_groups(
    adapter: LoraAdapter | None, cfg: ModelConfig, max_rank: int, dtype: str, tp: int = 1
) -> list[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """One slot's worth of host arrays: per layer, per group ``(a [M,R,in], b [O,R], scale [M])``.

    ``None`` gives zeros (an empty slot); modules the adapter does not target stay zero, scale 0.
    With ``tp`` shards the column-parallel groups' ``b`` rows are laid out per shard
    (:func:`models.llama.fused_column_order`), as the base weights they add to.
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
            if tp > 1 and GROUP_SHARDING[group] is _COLUMN:
                b = b[fused_column_order(out_sizes[group], tp)]
            groups[group] = (a, b, scale)
        layers.append(groups)
    return layers


@functools.partial(jax.jit, donate_argnums=(0,))
def _write_slot(buffers: LoraLayers, slot: jax.Array, values: LoraLayers) -> LoraLayers:
    # `slot` is traced, so one compilation serves every slot index.
    return jax.tree.map(lambda buf, val: buf.at[slot].set(val.astype(buf.dtype)), buffers, values)


class SlotBuffers:
    """The device LoRA buffers and which adapter each slot holds (host-side bookkeeping).

    With a ``mesh`` the buffers are split over its tensor-parallel axis (:data:`GROUP_SHARDING`).
    """

    def __init__(
        self, cfg: ModelConfig, num_slots: int, max_rank: int, dtype: str, mesh: Mesh | None = None
    ):
        self.cfg, self.num_slots, self.max_rank, self.dtype = cfg, num_slots, max_rank, dtype
        self.mesh = mesh
        self.tp = 1 if mesh is None else mesh.shape[TP_AXIS]
        jdtype = jnp.dtype(DTYPES[dtype])
        out_sizes = group_out_sizes(cfg)

        def zeros(shape, dtype, spec):
            if mesh is None:
                return jnp.zeros(shape, dtype)
            return sharded_zeros(shape, dtype, NamedSharding(mesh, spec))

        def empty_group(group: str) -> LoraGroup:
            m, spec = len(MODULE_GROUPS[group]), GROUP_SHARDING[group]
            return LoraGroup(
                a=zeros((num_slots, m, max_rank, _group_in_size(cfg, group)), jdtype, spec.a),
                b=zeros((num_slots, sum(out_sizes[group]), max_rank), jdtype, spec.b),
                scale=zeros((num_slots, m), jnp.float32, spec.scale),
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
        host = adapter_to_groups(adapter, self.cfg, self.max_rank, self.dtype, self.tp)
        values = tuple(
            {g: LoraGroup(a=a, b=b, scale=s) for g, (a, b, s) in layer.items()} for layer in host
        )
        if self.mesh is not None:  # each device receives only its shard of the slot
            mesh = self.mesh
            values = jax.tree.map(
                lambda v, spec: put_host(v, NamedSharding(mesh, P(*spec[1:]))),
                values,
                lora_specs(self.cfg.num_layers),
            )
        self.layers = _write_slot(self.layers, jnp.int32(slot), values)
        self.slot_rank[slot] = 0 if adapter is None else adapter.rank
        self.occupant[slot] = None if adapter is None else adapter.name

    def slot_of(self, name: str) -> int | None:
        try:
            return self.occupant.index(name)
        except ValueError:
            return None
