"""Device slots: the LoRA buffers the forward reads (``max_loras_per_batch`` x ``max_lora_rank``),
and the host layout adapters are kept in to be loaded into them.

Per module group (qkv, o, gate_up, down) one :class:`~jlora.kernels.LoraGroup` stacked over the
layers and the slots (``a [L, S, M, R, d_in]``, :data:`models.llama.LoraSlots`): twelve buffers,
which every step and every slot write pass to a jitted call. (One group per layer made 384 buffers
for the 32 layers of an 8B model, and dispatching a call over them held the host 2-3 ms on an
H100: ``experiments/results/slot_load.md``.) How an adapter gets into a slot:

1. **Read** (once, when the host cache reads it): :meth:`SlotBuffers.host_adapter` lays the
   adapter out as a slot holds it, a :class:`SlotAdapter`: per group, arrays stacked over the
   layers at the adapter's own rank rounded up to a :func:`rank_bucket` (``a [L, M, r, in]``,
   ``b [L, O, r]``, ``scale [L, M]``), ``b`` in the per-shard column order under tensor
   parallelism. On a GPU the arrays sit in pinned host memory, so that a load is a DMA.
2. **Load** (:meth:`SlotBuffers.put`, then :meth:`SlotBuffers.send_queued`): ``put`` queues the
   load and returns; the twelve arrays are sent to the device, asynchronously, when the runner
   has dispatched its next step (or before it, if that step reads the slot): on a GPU a transfer
   in flight holds up the dispatch of a step, so it starts where the host only waits for the
   device. Only the adapter's rank rows cross the bus; nothing is read back.
3. **Write** (:meth:`SlotBuffers.layers_for`, called by the step that reads the buffers): one
   jitted update of the twelve buffers, donated, writes rows ``[:r]`` of the slot in every layer
   and zeroes rows ``[r:R]`` on the device, so that a smaller rank after a larger one leaves no
   stale rows.
   The write is issued when a step uses the slot (that step waits for the transfer), or earlier
   once the transfer has landed: a step that does not use the slot does not wait for the bus.
   (Writing at ``put`` would order every later step after the transfer: the steps read the
   written buffers.) With several processes the writes must be issued in the same order
   everywhere, so instead of polling the transfer a pending write is issued at the next step.

Ranks are bucketed (:func:`rank_buckets`: powers of two from 8 up to ``max_rank``) so that the
write compiles once per bucket; :meth:`SlotBuffers.warmup` compiles them all.

Under tensor parallelism (a ``mesh``) the buffers are split as the base projections they add to
(:data:`GROUP_SHARDING`, see :mod:`jlora.tensor_parallel`): the column-parallel groups' ``b`` on
its output dim, laid out per shard like the fused base weights; the row-parallel groups' ``a`` on
its input dim. A :class:`SlotAdapter`'s arrays are split the same way (each device receives only
its shard).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from jlora.adapters.peft import LoraAdapter
from jlora.kernels.types import MODULE_GROUPS, LoraGroup
from jlora.tensor_parallel import put_host, sharded_zeros
from models.config import ModelConfig
from models.llama import TP_AXIS, LoraSlots, fused_column_order
from models.weights import DTYPES

_COLUMN = LoraGroup(a=P(), b=P(None, TP_AXIS, None), scale=P())  # B split on the output dim
_ROW = LoraGroup(a=P(None, None, None, TP_AXIS), b=P(), scale=P())  # A split on the input dim
# How each group's arrays [S or L, ...] (a SlotAdapter's, one layer's buffers) are split over the
# tensor-parallel axis. The leading dim is never split; the stacked buffers [L, S, ...] take these
# specs behind one more unsplit dim (lora_specs).
GROUP_SHARDING: dict[str, LoraGroup] = {
    "qkv": _COLUMN,
    "o": _ROW,
    "gate_up": _COLUMN,
    "down": _ROW,
}

SMALLEST_RANK_BUCKET = 8

SlotGroups = dict[str, LoraGroup]
"""Per module group, an adapter's arrays stacked over layers: ``a [L, M, r, d_in]``,
``b [L, O, r]``, ``scale [L, M]`` float32 (numpy, or jax arrays in pinned host memory)."""


def lora_specs() -> LoraSlots:
    """The PartitionSpecs of a :class:`SlotBuffers`' ``layers`` (a pytree of the same structure):
    :data:`GROUP_SHARDING` behind the unsplit layer dim."""
    return {
        g: jax.tree.map(lambda spec: P(None, *spec), specs) for g, specs in GROUP_SHARDING.items()
    }


def group_out_sizes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Output sizes of the modules of each group, in group order."""
    shapes = cfg.module_shapes()
    return {g: tuple(shapes[m][1] for m in ms) for g, ms in MODULE_GROUPS.items()}


def _group_in_size(cfg: ModelConfig, group: str) -> int:
    return cfg.module_shapes()[MODULE_GROUPS[group][0]][0]


def slot_buffer_shapes(cfg: ModelConfig, num_slots: int, max_rank: int) -> dict[str, LoraGroup]:
    """Per module group, the shapes of one layer's slot buffers (:class:`SlotBuffers`):
    ``a [S, M, R, d_in]``, ``b [S, O, R]`` in the slots' dtype, ``scale [S, M]`` float32."""
    out_sizes = group_out_sizes(cfg)
    return {
        g: LoraGroup(
            a=(num_slots, len(ms), max_rank, _group_in_size(cfg, g)),
            b=(num_slots, sum(out_sizes[g]), max_rank),
            scale=(num_slots, len(ms)),
        )
        for g, ms in MODULE_GROUPS.items()
    }


def slot_buffer_bytes(cfg: ModelConfig, num_slots: int, max_rank: int, dtype: str) -> int:
    """Device bytes of the slot buffers of every layer (over all devices, before any split)."""
    item = np.dtype(DTYPES[dtype]).itemsize
    per_layer = sum(
        math.prod(g.a) * item + math.prod(g.b) * item + math.prod(g.scale) * 4
        for g in slot_buffer_shapes(cfg, num_slots, max_rank).values()
    )
    return cfg.num_layers * per_layer


def rank_buckets(max_rank: int) -> tuple[int, ...]:
    """The ranks a slot write is compiled for: powers of two from 8 below ``max_rank``, and
    ``max_rank`` itself."""
    out, r = [], SMALLEST_RANK_BUCKET
    while r < max_rank:
        out.append(r)
        r *= 2
    return (*out, max_rank)


def rank_bucket(rank: int, max_rank: int) -> int:
    """The rank an adapter of ``rank`` is laid out at: the smallest bucket that holds it."""
    if not 0 <= rank <= max_rank:
        raise ValueError(f"rank={rank} outside [0, max_lora_rank={max_rank}]")
    return next(b for b in rank_buckets(max_rank) if b >= rank)


@dataclass(frozen=True)
class SlotAdapter:
    """An adapter in host memory, laid out as a device slot holds it (see the module docstring).

    What the host cache keeps for the real runner: built once when the adapter is read."""

    name: str
    path: str | None
    rank: int
    """The adapter's own (largest) rank, what the step's routing reads; the arrays hold
    :func:`rank_bucket` rows, the ones past ``rank`` zero."""
    groups: SlotGroups

    def nbytes(self) -> int:
        """Host bytes of the layout."""
        return sum(x.nbytes for g in self.groups.values() for x in (g.a, g.b, g.scale))


def slot_layout(
    adapter: LoraAdapter | None,
    cfg: ModelConfig,
    max_rank: int,
    dtype: str,
    tp: int = 1,
    rows: int | None = None,
) -> SlotGroups:
    """``adapter``'s host arrays as a slot holds them, stacked over layers at ``rows`` rank rows
    (default: its :func:`rank_bucket`; None: zeros). Modules the adapter does not target stay
    zero, scale 0.
    With ``tp`` shards the column-parallel groups' ``b`` rows are laid out per shard
    (:func:`models.llama.fused_column_order`), as the base weights they add to."""
    np_dtype = DTYPES[dtype]
    r = rank_bucket(0 if adapter is None else adapter.rank, max_rank) if rows is None else rows
    out_sizes = group_out_sizes(cfg)
    out: SlotGroups = {}
    for group, modules in MODULE_GROUPS.items():
        sizes, n = out_sizes[group], cfg.num_layers
        a = np.zeros((n, len(modules), r, _group_in_size(cfg, group)), np_dtype)
        b = np.zeros((n, sum(sizes), r), np_dtype)
        scale = np.zeros((n, len(modules)), np.float32)
        for layer in range(n if adapter is not None else 0):
            off = 0
            for m, (module, size) in enumerate(zip(modules, sizes, strict=True)):
                lm = adapter.modules.get((layer, module))
                if lm is not None:
                    a[layer, m, : lm.rank] = lm.a
                    b[layer, off : off + size, : lm.rank] = lm.b
                    scale[layer, m] = lm.scale
                off += size
        if tp > 1 and GROUP_SHARDING[group] is _COLUMN:
            b = b[:, fused_column_order(sizes, tp)]
        out[group] = LoraGroup(a=a, b=b, scale=scale)
    return out


def adapter_to_groups(
    adapter: LoraAdapter | None, cfg: ModelConfig, max_rank: int, dtype: str, tp: int = 1
) -> list[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """The reference of what one slot holds: per layer, per group ``(a [M,R,in], b [O,R],
    scale [M])``, padded to ``max_rank``, built module by module (the loads before
    :class:`SlotAdapter` built this on every load; the tests check the slots against it).

    ``None`` gives zeros (an empty slot); modules the adapter does not target stay zero, scale 0.
    With ``tp`` shards the column-parallel groups' ``b`` rows are laid out per shard.
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


def _padded(x: jax.Array, axis: int, size: int, dtype) -> jax.Array:
    """``x`` zero-padded to ``size`` along ``axis`` (the rank rows past the adapter's bucket)."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x.astype(dtype), pad)


@functools.partial(jax.jit, donate_argnums=(0,))
def _write_slot(
    buffers: LoraSlots,  # per group: a [L, S, M, R, in], b [L, S, O, R], scale [L, S, M]
    slot: jax.Array,  # [] int32; traced, so one compilation serves every slot index
    values: SlotGroups | None,  # a [L, M, r, in], b [L, O, r], scale [L, M]; None: clear
) -> LoraSlots:
    """Slot ``slot`` of every layer set to ``values``, rows ``r..R`` zeroed (compiled per rank
    bucket ``r``): one in-place update per buffer."""

    def write(buf: jax.Array, value: jax.Array | None, rank_axis: int | None) -> jax.Array:
        shape = (buf.shape[0], *buf.shape[2:])  # one slot of every layer
        if value is None:
            value = jnp.zeros(shape, buf.dtype)
        elif rank_axis is not None:
            value = _padded(value, rank_axis, shape[rank_axis], buf.dtype)
        value = value.astype(buf.dtype)[:, None]  # [L, 1, ...]
        start = (0, slot) + (0,) * (buf.ndim - 2)
        return jax.lax.dynamic_update_slice(buf, value, start)

    out = {}
    for g, buf in buffers.items():
        v = None if values is None else values[g]
        out[g] = LoraGroup(
            a=write(buf.a, None if v is None else v.a, 2),  # a [L, M, r, in]: rank axis 2
            b=write(buf.b, None if v is None else v.b, 2),  # b [L, O, r]
            scale=write(buf.scale, None if v is None else v.scale, None),
        )
    return out


def pinned_host_supported(device: jax.Device) -> bool:
    """Whether host arrays can sit in pinned memory for ``device`` (a GPU): a load from there is
    a DMA. On a CPU host memory is the device's own: plain numpy arrays."""
    if device.platform == "cpu":
        return False
    try:
        return "pinned_host" in {m.kind for m in device.addressable_memories()}
    except Exception:  # a backend without memory kinds
        return False


def group_bytes(group: LoraGroup) -> int:
    """Bytes of one module group's arrays (what its transfer moves)."""
    return sum(x.nbytes for x in (group.a, group.b, group.scale))


class SlotLoadError(RuntimeError):
    """The transfer of a slot load could not be started (e.g. out of device memory): the slot was
    emptied again. Raised by the step that reads the slot; :meth:`SlotBuffers.take_failed` hands
    every such failure to the engine, which frees the slot in its pool."""

    def __init__(self, slot: int, name: str | None, cause: Exception):
        super().__init__(f"loading adapter {name!r} into slot {slot} failed: {cause}")
        self.slot, self.name, self.cause = slot, name, cause


class SlotBuffers:
    """The device LoRA buffers and which adapter each slot holds (host-side bookkeeping).

    With a ``mesh`` the buffers are split over its tensor-parallel axis (:data:`GROUP_SHARDING`).
    ``occupant`` and ``slot_rank`` say what a slot holds from its :meth:`put` on; the buffers
    hold it once the write has been issued (:meth:`layers_for`; reading :attr:`layers` issues
    every pending write).
    """

    def __init__(
        self, cfg: ModelConfig, num_slots: int, max_rank: int, dtype: str, mesh: Mesh | None = None
    ):
        self.cfg, self.num_slots, self.max_rank, self.dtype = cfg, num_slots, max_rank, dtype
        self.mesh = mesh
        self.tp = 1 if mesh is None else mesh.shape[TP_AXIS]
        jdtype = jnp.dtype(DTYPES[dtype])

        device = jax.local_devices()[0] if mesh is None else mesh.devices.flat[0]

        def zeros(shape, dtype, spec):
            if mesh is None:  # committed, as the loads will leave them (see ModelRunner)
                return jnp.zeros(shape, dtype, device=device)
            return sharded_zeros(shape, dtype, NamedSharding(mesh, spec))

        shapes, specs = slot_buffer_shapes(cfg, num_slots, max_rank), lora_specs()

        def empty_group(group: str) -> LoraGroup:
            shape, spec, layers = shapes[group], specs[group], (cfg.num_layers,)
            return LoraGroup(
                a=zeros(layers + shape.a, jdtype, spec.a),
                b=zeros(layers + shape.b, jdtype, spec.b),
                scale=zeros(layers + shape.scale, jnp.float32, spec.scale),
            )

        self._layers: LoraSlots = {g: empty_group(g) for g in MODULE_GROUPS}
        self.slot_rank = np.zeros((num_slots,), np.int32)
        self.occupant: list[str | None] = [None] * num_slots
        # slot -> the host layout of its load, groups not yet sent (send_queued)
        self._queued: dict[int, SlotGroups] = {}
        # slot -> the device arrays of the groups of its load already sent (send_bytes_per_step)
        self._partial: dict[int, SlotGroups] = {}
        # slot -> its load sent to the device but not yet written into the buffers (None: clear)
        self._pending: dict[int, SlotGroups | None] = {}
        # slot -> why its transfer could not be started (the slot is empty again); taken by the
        # engine (take_failed)
        self._failed: dict[int, SlotLoadError] = {}
        self.send_after_dispatch = True
        """Whether a load's transfer waits for :meth:`send_queued` (the runner calls it right
        after dispatching a step), rather than starting in :meth:`put`: on a GPU a transfer in
        flight holds up the dispatch of the next step
        (``experiments/results/slot_load.md``), so it is started where the host then only waits
        for the device."""
        self.send_bytes_per_step: int | None = None
        """At most this many bytes of queued loads start their transfer at each
        :meth:`send_queued` (whole module groups, at least one a call), so that a large load
        spreads over several steps; None: every queued load at once. A step that reads the slot
        sends the rest first."""
        # With several processes every one must issue the same writes in the same order: no
        # polling of the transfers, whose progress differs between processes.
        self._poll = jax.process_count() == 1
        self.pinned = pinned_host_supported(device)
        """Whether :class:`SlotAdapter` arrays sit in pinned host memory (a GPU)."""

        def shardings(memory_kind: str | None):
            if mesh is None:
                one = SingleDeviceSharding(device, memory_kind=memory_kind)
                return {g: LoraGroup(a=one, b=one, scale=one) for g in MODULE_GROUPS}
            return {
                g: jax.tree.map(lambda s: NamedSharding(mesh, s, memory_kind=memory_kind), spec)
                for g, spec in GROUP_SHARDING.items()
            }

        # The device side in the default memory kind, as the buffers: a sharding that names it
        # would be another cache key for the jitted steps, which would then compile again.
        self._device_shardings = shardings(None)
        self._host_shardings = shardings("pinned_host") if self.pinned else None

    # ------------------------------------------------------------------ host layout
    def host_adapter(self, adapter: LoraAdapter) -> SlotAdapter:
        """``adapter`` laid out for these slots (rank bucket, shard order), in pinned host memory
        where the platform has it: what the host cache keeps. Built once, when it is read."""
        if adapter.rank > self.max_rank:
            raise ValueError(
                f"adapter {adapter.name!r}: rank={adapter.rank} is above "
                f"max_lora_rank={self.max_rank}"
            )
        groups = slot_layout(adapter, self.cfg, self.max_rank, self.dtype, self.tp)
        return SlotAdapter(adapter.name, adapter.path, adapter.rank, self._place_host(groups))

    def _place_host(self, groups: SlotGroups) -> SlotGroups:
        if self._host_shardings is None:
            return groups
        try:
            return jax.tree.map(
                lambda v, s: jax.make_array_from_callback(v.shape, s, lambda index: v[index]),
                groups,
                self._host_shardings,
            )
        except Exception as e:  # the platform advertises pinned memory but refuses it
            warnings.warn(
                f"pinned host memory refused ({e}); adapters stay in pageable host memory",
                stacklevel=3,
            )
            self._host_shardings, self.pinned = None, False
            return groups

    def _to_device(self, groups: SlotGroups) -> SlotGroups:
        """Start the transfer of a layout's ``groups`` (all or some) to the device
        (asynchronous: nothing waits for it)."""
        shardings = {g: self._device_shardings[g] for g in groups}
        if self._host_shardings is not None or self.mesh is None:
            return jax.device_put(groups, shardings)
        # numpy under a mesh: each device receives only its shard (any number of processes)
        return jax.tree.map(put_host, groups, shardings)

    # ------------------------------------------------------------------ loads
    def put(self, slot: int, adapter: SlotAdapter | LoraAdapter | None) -> None:
        """Load ``adapter`` (None: clear) into device slot ``slot``: the transfer is dispatched
        and ``put`` returns; the step that first uses the slot waits for it. A
        :class:`LoraAdapter` is laid out first (:meth:`host_adapter`, the slow path: the engine's
        host cache keeps :class:`SlotAdapter`s)."""
        if not 0 <= slot < self.num_slots:
            raise ValueError(f"slot={slot} outside [0, {self.num_slots})")
        if isinstance(adapter, LoraAdapter):
            adapter = self.host_adapter(adapter)
        self._queued.pop(slot, None)
        self._partial.pop(slot, None)
        self._failed.pop(slot, None)
        self.slot_rank[slot] = 0 if adapter is None else adapter.rank
        self.occupant[slot] = None if adapter is None else adapter.name
        if adapter is None:
            self._pending[slot] = None
        elif self.send_after_dispatch:
            self._queued[slot] = dict(adapter.groups)  # emptied group by group as it is sent
            self._pending.pop(slot, None)  # an earlier load of the slot is never written
        else:
            self._send(slot, adapter.groups)

    def send_queued(self, slots: Iterable[int] | None = None, budget: bool = True) -> None:
        """Start the transfers of the queued loads (of ``slots``; None: all): the runner calls
        this right after it dispatches a step, so that they run while the host waits. With
        ``budget`` at most :attr:`send_bytes_per_step` bytes start (the rest at later calls)."""
        wanted = list(self._queued) if slots is None else [s for s in slots if s in self._queued]
        left = self.send_bytes_per_step if budget else None
        for slot in wanted:
            if left is not None and left <= 0:
                return
            queued = self._queued[slot]
            chunk: SlotGroups = {}
            for g, group in queued.items():  # whole groups, at least one
                if chunk and left is not None and left < group_bytes(group):
                    break
                chunk[g] = group
                left = None if left is None else left - group_bytes(group)
            for g in chunk:
                del queued[g]
            if not queued:
                del self._queued[slot]
            self._send(slot, chunk, done=not queued)

    def _send(self, slot: int, groups: SlotGroups, done: bool = True) -> None:
        """Start the transfer of ``groups`` of a slot's load (``done``: its last). It never
        raises: a refused transfer (e.g. out of device memory) empties the slot and is kept for
        :meth:`take_failed`, since here, right after a step's dispatch, nothing could tell the
        requests waiting for it."""
        try:
            sent = self._partial.pop(slot, {}) | self._to_device(groups)
        except Exception as e:  # noqa: BLE001 - reported through take_failed and the step
            self._failed[slot] = SlotLoadError(slot, self.occupant[slot], e)
            self._queued.pop(slot, None)
            self._pending[slot] = None  # the slot is cleared: nothing stale is ever read
            self.slot_rank[slot], self.occupant[slot] = 0, None
            return
        if done:
            self._pending[slot] = sent
        else:
            self._partial[slot] = sent

    def take_failed(self) -> dict[int, SlotLoadError]:
        """The loads whose transfer could not be started since the last call, by slot (each slot
        is empty again)."""
        out, self._failed = self._failed, {}
        return out

    def layers_for(self, used: Iterable[int]) -> LoraSlots:
        """The buffers for a step that reads the slots ``used``: their loads are sent (if still
        queued) and written first (the step then waits for those transfers), and so is any other
        pending load whose transfer has landed (single process) or any at all (several
        processes)."""
        if not (self._queued or self._pending or self._failed):  # most steps: nothing to do
            return self._layers
        used = set(used)
        if self._queued:
            self.send_queued(used if self._poll else None, budget=False)
        if self._pending:
            for slot in list(self._pending):
                values = self._pending[slot]
                if slot in used or values is None or not self._poll or self._landed(values):
                    self._write(slot, self._pending.pop(slot))
        for slot in used & self._failed.keys():  # before the dispatch: the step does not run
            raise self._failed[slot]
        return self._layers

    @staticmethod
    def _landed(values: SlotGroups) -> bool:
        """Whether a transfer has reached the device (asks, never waits)."""
        return all(x.is_ready() for x in jax.tree.leaves(values))

    @property
    def layers(self) -> LoraSlots:
        """The buffers with every load written."""
        return self.layers_for(range(self.num_slots))

    @property
    def pending(self) -> tuple[int, ...]:
        """Slots whose load has been asked for but not yet written into the buffers (queued or
        in transfer)."""
        return tuple(sorted({*self._pending, *self._queued}))

    def _write(self, slot: int, values: SlotGroups | None) -> None:
        self._layers = _write_slot(self._layers, jnp.int32(slot), values)

    def warmup(self) -> None:
        """Compile the write of every rank bucket and the clear, through an empty slot (the same
        path as a load: host layout, transfer, write). Does nothing if every slot is taken."""
        empty = [s for s, name in enumerate(self.occupant) if name is None]
        if not empty:
            return
        self.layers_for(())
        slot = empty[0]
        for r in rank_buckets(self.max_rank):
            zeros = slot_layout(None, self.cfg, self.max_rank, self.dtype, self.tp, rows=r)
            self._write(slot, self._to_device(self._place_host(zeros)))
        self._write(slot, None)
        jax.block_until_ready(self._layers)

    @staticmethod
    def compiled_count() -> int:
        """Compiled executables of the slot write (one per rank bucket, and the clear)."""
        return _write_slot._cache_size()

    def slot_of(self, name: str) -> int | None:
        try:
            return self.occupant.index(name)
        except ValueError:
            return None
