"""The simulator's runner: no model, no device; each step moves a virtual clock by what the cost
model says the real step would take, and returns deterministic tokens.

A slot load moves the clock by its host part only (``CostModel.load_time``); the slot is usable
``CostModel.load_device_time`` later, and a step that uses it starts no earlier (the wait is
charged as ``load_wait``). Steps that do not use it are not delayed.

With a cost model that calibrated overlap (``CostModel.decode_overlap``) it also implements
:class:`~jlora.runner.base.OverlapRunner`: a decode step launched while another is in flight ends
``CostModel.overlapped_decode_time`` after that one (the device never waits for the host unless the
host's share is the longer); the clock reaches a step's end when the engine asks for its tokens.
A step launched with none in flight costs a whole step, as without overlap.

It implements :class:`~jlora.runner.base.Runner`, so the engine, scheduler, drainer, adapter pool
and page accounting above it are the real ones. Sampled tokens are ``token_fn(rid, index)`` (by
default never an end-of-sequence id of the presets: requests run to ``max_new_tokens``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from jlora.adapters.peft import LoraAdapter
from jlora.adapters.pool import HostAdapter
from jlora.clock import FakeClock
from jlora.runner.base import DecodeSeq, PrefillSeq
from jlora.runner.buckets import ShapeBuckets
from jlora.runner.fake import scripted_token
from jlora.sim.cost_model import CostModel, StepLayout

KINDS = ("prefill", "decode", "load", "load_wait", "host_load")


sim_token = scripted_token
"""The token request ``rid`` samples at output index ``index`` in the simulator (the fake
runner's)."""


@dataclass
class SimLaunchedDecode:
    """A simulated decode step in flight: its tokens and when the device finishes it."""

    clock: FakeClock
    end: float
    token_list: list[int]

    def tokens(self) -> list[int]:
        if self.end > self.clock.now():
            self.clock.advance(self.end - self.clock.now())
        return self.token_list


@dataclass
class SimRunner:
    clock: FakeClock
    cost: CostModel
    buckets: ShapeBuckets
    page_size: int
    num_slots: int
    num_pages: int | None = None
    """Pages of the KV cache the modelled device holds (None: the engine sizes them)."""
    token_fn: Callable[[int, int], int] = sim_token
    waiting: Callable[[], int] = lambda: 0
    """How many requests wait (the scheduler's host work grows with them); given by
    :meth:`start` once the scheduler exists."""
    charging_host_loads: bool = False
    """Whether adapter reads cost time (from :meth:`start` on: those at registration do not)."""
    busy: dict[str, float] = field(default_factory=lambda: dict.fromkeys(KINDS, 0.0))
    """Virtual seconds spent per kind of work (``load``: the host part of slot loads; ``load_wait``:
    steps waiting for a slot's load to land; ``host_load``: adapters read again from disk)."""
    steps: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))

    @property
    def supports_overlap(self) -> bool:
        """Whether the cost model calibrated overlapped decode steps."""
        return self.cost.models_overlap

    def __post_init__(self) -> None:
        self.layout = StepLayout(self.buckets, self.page_size, [0] * self.num_slots)
        self.slot_ready = [0.0] * self.num_slots
        """When each slot's last load lands (virtual seconds)."""
        self._landing = 0.0  # when the last load in flight lands

    def _wait_for_slots(self, seqs) -> None:
        """Move the clock to when the loads of the slots the step's ``seqs`` use have landed."""
        if self._landing <= self.clock.now():  # (most steps: no load in flight)
            return
        ready = max([self.slot_ready[s.lora_slot] for s in seqs if s.lora_slot >= 0], default=0.0)
        wait = ready - self.clock.now()
        if wait > 0:
            self._spend("load_wait", wait)

    def prefill(self, seqs: list[PrefillSeq]) -> list[int | None]:
        if len(seqs) > self.buckets.prefill_rows:
            raise ValueError(
                f"{len(seqs)} sequences exceed prefill_rows={self.buckets.prefill_rows}"
            )
        if sum(1 for s in seqs if s.start > 0) > 1:
            raise ValueError("a prefill step may continue at most one chunked sequence")
        self._wait_for_slots(seqs)
        self._spend("prefill", self.cost.prefill_time(seqs, self.layout, self.waiting()))
        return [self.token_fn(s.rid, s.out_index) if s.sample else None for s in seqs]

    def decode(self, seqs: list[DecodeSeq]) -> list[int]:
        self._wait_for_slots(seqs)
        self._spend("decode", self.cost.decode_time(seqs, self.layout, self.waiting()))
        return [self.token_fn(s.rid, s.out_index) for s in seqs]

    def launch_decode(
        self, seqs: list[DecodeSeq], in_flight: SimLaunchedDecode | None
    ) -> SimLaunchedDecode:
        tokens = [self.token_fn(s.rid, s.out_index) for s in seqs]
        if in_flight is None:  # nothing to overlap with: a whole step, as decode() charges it
            self._wait_for_slots(seqs)  # moves the clock: charged as load_wait
            seconds = self.cost.decode_time(seqs, self.layout, self.waiting())
            end = self.clock.now() + seconds
        else:  # it starts when the step in flight ends and runs the overlapped period
            ready = max(
                [self.slot_ready[s.lora_slot] for s in seqs if s.lora_slot >= 0], default=0.0
            )
            start = max(in_flight.end, ready, self.clock.now())  # (the host may have idled)
            seconds = self.cost.overlapped_decode_time(seqs, self.layout, self.waiting())
            end = start + seconds
        self.busy["decode"] += seconds
        self.steps["decode"] += 1
        return SimLaunchedDecode(self.clock, end, tokens)

    def host_adapter(self, adapter: LoraAdapter) -> LoraAdapter:
        return adapter

    def load_lora(self, slot: int, adapter: HostAdapter | None) -> None:
        if not 0 <= slot < self.num_slots:
            raise ValueError(f"slot={slot} outside [0, {self.num_slots})")
        rank = 0 if adapter is None else adapter.rank
        self.layout.slot_rank[slot] = rank
        self._spend("load", self.cost.load_time(rank))
        self.slot_ready[slot] = self.clock.now() + self.cost.load_device_time(rank)
        self._landing = max(self._landing, self.slot_ready[slot])

    def take_failed_loads(self) -> dict[int, Exception]:
        return {}  # a simulated load never fails after it was asked for

    def start(self, waiting: Callable[[], int]) -> None:
        """The engine is built: read its queue length through ``waiting`` and charge adapter reads
        from now on (those of start-up happen before the clock starts)."""
        self.waiting = waiting
        self.charging_host_loads = True

    def charge_host_load(self, rank: int) -> None:
        """An adapter of ``rank`` was read from disk into the host cache (the adapter loader
        reports every read)."""
        if self.charging_host_loads:
            self._spend("host_load", self.cost.host_load_time(rank))

    def _spend(self, kind: str, seconds: float) -> None:
        self.clock.advance(seconds)
        self.busy[kind] += seconds
        self.steps[kind] += 1

    def score(self, seqs: list[tuple[np.ndarray, int]]) -> list[np.ndarray]:
        raise NotImplementedError("the simulator computes no logits (use the real engine to score)")

    def warmup(self) -> None:
        return None
