"""Where each adapter lives: registered (a path), in the host cache, and in a device slot.

Two tiers, as in SGLang:

* **Host cache**: up to ``max_loaded_loras`` adapters in host memory. Past that the least recently
  used (``lru``) or the oldest loaded (``fifo``) unpinned adapter not in a device slot is dropped,
  and read again from disk when a request needs it.
* **Device slots**: ``max_loras_per_batch`` slots the forward reads. An adapter with running
  requests keeps its slot; to give a slot to another adapter, a slot whose adapter has no running
  request is taken (``lru``: least recently used; ``fifo``: loaded longest ago), an empty one first.
  A pinned adapter keeps its slot for good. A drainer may hold a slot for the adapter it was freed
  for (``reserved``): no other adapter is given it.

This object is host bookkeeping only: the scheduler asks it which slot an adapter would get, and
the engine asks the runner to copy the weights into that slot. What it caches is what the loader
returns: for the real runner a :class:`~jlora.adapters.slots.SlotAdapter` (the adapter laid out as
a slot holds it, built once when read), for the simulator a stub with a rank and no weights;
:meth:`AdapterPool.host_bytes` reports what each takes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Protocol

EVICTION_POLICIES = ("lru", "fifo")


class HostAdapter(Protocol):
    """An adapter as the host cache keeps it (a ``LoraAdapter``, a ``SlotAdapter``, a stub)."""

    name: str

    @property
    def rank(self) -> int:
        """Its largest rank (what a device slot must hold)."""
        ...

    def nbytes(self) -> int:
        """Host bytes it takes."""
        ...


# name, path -> the adapter (a real loader reads the PEFT files; a simulator's returns rank only).
AdapterLoader = Callable[[str, str], HostAdapter]


class AdapterPool:
    def __init__(
        self,
        loader: AdapterLoader,
        num_slots: int,
        max_loaded: int | None,
        eviction_policy: str = "lru",
    ):
        if eviction_policy not in EVICTION_POLICIES:
            choices = ", ".join(EVICTION_POLICIES)
            raise ValueError(f"lora_eviction_policy={eviction_policy!r} is not one of {choices}")
        self.loader, self.num_slots, self.max_loaded = loader, num_slots, max_loaded
        self.eviction_policy = eviction_policy
        self.paths: dict[str, str] = {}
        self.pinned: set[str] = set()
        self.host: OrderedDict[str, HostAdapter] = OrderedDict()
        self.occupant: list[str | None] = [None] * num_slots
        self.slot_index: dict[str, int] = {}
        """Adapter name -> its device slot (``occupant``'s inverse; read it, change neither)."""
        self._slot_used = [0] * num_slots  # tick of last use (lru)
        self._slot_loaded = [0] * num_slots  # tick of load (fifo)
        self._tick = 0
        self.host_loads = 0  # reads from disk, first loads included
        self.slot_loads = 0  # copies into device slots

    # ------------------------------------------------------------------ registry and host cache
    def register(self, name: str, path: str, pinned: bool = False) -> HostAdapter:
        """Add an adapter by name; it is read (and validated) now."""
        if name in self.paths:
            raise ValueError(f"adapter {name!r} is already loaded (from {self.paths[name]!r})")
        if pinned and len(self.pinned) + 1 >= self.num_slots:
            raise ValueError(
                f"cannot pin adapter {name!r}: {len(self.pinned)} pinned adapters already hold "
                f"{len(self.pinned)} of {self.num_slots} slots and one slot must stay unpinned"
            )
        adapter = self.loader(name, path)
        self.paths[name] = path
        self.host[name] = adapter
        self.host_loads += 1
        if pinned:
            self.pinned.add(name)
        self._trim_host()
        return adapter

    def unregister(self, name: str) -> int | None:
        """Forget an adapter; returns the slot it held (now empty), if any."""
        if name not in self.paths:
            raise ValueError(f"unknown adapter name {name!r}")
        del self.paths[name]
        self.host.pop(name, None)
        self.pinned.discard(name)
        slot = self.slot_index.pop(name, None)
        if slot is not None:
            self.occupant[slot] = None
        return slot

    def known(self, name: str) -> bool:
        return name in self.paths

    def get(self, name: str) -> HostAdapter:
        """The adapter's weights, read from disk again if the host cache dropped them."""
        if name in self.host:
            if self.eviction_policy == "lru":
                self.host.move_to_end(name)
            return self.host[name]
        adapter = self.loader(name, self.paths[name])
        self.host_loads += 1
        self.host[name] = adapter
        self._trim_host()
        return adapter

    def host_bytes(self) -> dict[str, int]:
        """Host memory of the cache: bytes per adapter it holds now."""
        return {name: adapter.nbytes() for name, adapter in self.host.items()}

    def _trim_host(self) -> None:
        if self.max_loaded is None:
            return
        in_slots = {n for n in self.occupant if n is not None}
        for name in list(self.host):
            if len(self.host) <= self.max_loaded:
                break
            if name not in self.pinned and name not in in_slots:
                del self.host[name]

    # ------------------------------------------------------------------ device slots
    def slot_of(self, name: str) -> int | None:
        return self.slot_index.get(name)

    def free_slot_for(
        self, name: str, busy: Iterable[str], reserved: Iterable[int] = ()
    ) -> int | None:
        """The slot ``name`` would take, without taking it: its own, an empty one, or one whose
        adapter is not in ``busy`` (adapters with running or just-admitted requests). Slots in
        ``reserved`` are held for another adapter (a drainer's reservation) and are not given."""
        own = self.slot_of(name)
        reserved = set(reserved)
        if own is not None:
            return own if own not in reserved else None
        busy = set(busy) | self.pinned
        candidates = [
            s for s in range(self.num_slots) if self.occupant[s] not in busy and s not in reserved
        ]
        if not candidates:
            return None
        order = self._slot_used if self.eviction_policy == "lru" else self._slot_loaded
        return min(candidates, key=lambda s: (self.occupant[s] is not None, order[s], s))

    def take_slot(
        self, name: str, busy: Iterable[str], reserved: Iterable[int] = ()
    ) -> tuple[int, bool] | None:
        """Give ``name`` a slot; returns (slot, whether its weights must be copied in)."""
        slot = self.free_slot_for(name, busy, reserved)
        if slot is None:
            return None
        self._tick += 1
        self._slot_used[slot] = self._tick
        if self.occupant[slot] == name:
            return slot, False
        if self.occupant[slot] is not None:
            del self.slot_index[self.occupant[slot]]
        self.occupant[slot] = name
        self.slot_index[name] = slot
        self._slot_loaded[slot] = self._tick
        self.slot_loads += 1
        return slot, True

    def vacate(self, slot: int) -> None:
        """Mark ``slot`` empty (its adapter could not be copied in); the adapter stays known."""
        name = self.occupant[slot]
        if name is not None:
            del self.slot_index[name]
            self.occupant[slot] = None

    def touch(self, names: Iterable[str]) -> None:
        """Mark the slots of ``names`` as used now (lru)."""
        self._tick += 1
        for name in names:
            slot = self.slot_index.get(name)
            if slot is not None:
                self._slot_used[slot] = self._tick
