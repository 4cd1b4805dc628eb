"""The runner interface: what the scheduler asks of whoever runs the model.

The engine loop asks the scheduler for a plan, then asks the runner to carry it out: load adapters
into device slots, run one prefill or decode step, return the sampled tokens. A load is only
dispatched: the runner makes the first step that uses the slot wait for it, and no other. The real
runner (:class:`~jlora.runner.model_runner.ModelRunner`) runs jitted JAX steps; a fake runner in
tests returns scripted tokens and advances a fake clock by hand-computable step times; the
simulator's runner charges a calibrated cost model. The scheduler cannot tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from jlora.adapters.peft import LoraAdapter
from jlora.adapters.pool import HostAdapter
from jlora.sampling_params import SamplingParams


@dataclass(frozen=True)
class PrefillSeq:
    """One sequence's share of a prefill step: ``tokens`` at positions ``start..start+len``."""

    rid: int
    tokens: np.ndarray  # [n] int32
    start: int
    pages: tuple[int, ...]  # all pages of the request, covering start + n tokens
    lora_slot: int  # -1: no adapter
    sample: bool  # the last chunk of its prefill: sample the next token
    params: SamplingParams
    seed: int
    out_index: int  # index of the token it samples (for the per-request random stream)


FED_BACK = -1
"""``DecodeSeq.token`` of a sequence whose input token is the one it sampled in the step still in
flight (overlap scheduling): the runner takes it from that step's output on the device."""


@dataclass(slots=True)  # not frozen: the engine builds one per request per step (3x cheaper)
class DecodeSeq:
    rid: int
    token: int  # FED_BACK: the token the sequence samples in the step still in flight
    position: int
    pages: tuple[int, ...]  # covering position + 1 tokens
    lora_slot: int
    params: SamplingParams
    seed: int
    out_index: int


class LaunchedDecode(Protocol):
    """A decode step dispatched to the device and not yet waited for (overlap scheduling)."""

    def tokens(self) -> list[int]:
        """Wait for the step; the sampled token of every sequence, in the order launched."""
        ...


class Runner(Protocol):
    def prefill(self, seqs: list[PrefillSeq]) -> list[int | None]:
        """Run one prefill step; the sampled next token of each sequence with ``sample`` set."""
        ...

    def decode(self, seqs: list[DecodeSeq]) -> list[int]:
        """Run one decode step; the sampled next token of every sequence."""
        ...

    def launch_decode(
        self, seqs: list[DecodeSeq], in_flight: LaunchedDecode | None
    ) -> LaunchedDecode:
        """Only where ``supports_overlap``: dispatch one decode step without waiting for it.
        Sequences whose ``token`` is :data:`FED_BACK` read their input token from ``in_flight``'s
        output on the device."""
        ...

    supports_overlap: bool
    """Whether it has :meth:`launch_decode` (overlap scheduling); runners that compute on the host
    (the fake runner, the simulator) do not."""

    num_pages: int | None
    """Pages of the KV cache it holds (the page pool gets as many); None: it holds none, and the
    engine sizes the pool from the device's memory (:func:`~jlora.build.kv_capacity_pages`)."""

    def host_adapter(self, adapter: LoraAdapter) -> HostAdapter:
        """The form the host cache keeps ``adapter`` in for this runner's loads, built once when
        it is read (the real runner: laid out as a slot holds it; others: as read)."""
        ...

    def load_lora(self, slot: int, adapter: HostAdapter | None) -> None:
        """Put ``adapter`` (None: empty) into device slot ``slot``, between steps. Returns once
        the load is dispatched; a step that uses the slot runs after it has landed."""
        ...

    def take_failed_loads(self) -> dict[int, Exception]:
        """Loads that failed after :meth:`load_lora` returned (a transfer started later and
        refused), by slot, since the last call; each such slot is empty again. A step that reads
        one raises its error before it runs."""
        ...

    def score(self, seqs: list[tuple[np.ndarray, int]]) -> list[np.ndarray]:
        """All-position logits ``[n, vocab]`` of whole prompts ``(tokens, lora_slot)``."""
        ...

    def warmup(self) -> None:
        """Compile every step shape, so that serving never compiles."""
        ...
