"""A runner with no model: fixed, hand-computable step times on a fake clock, scripted tokens.

Tests drive the real engine, scheduler and adapter pool with it and can say to the microsecond
when each token appears. A prefill step takes ``prefill_base + prefill_per_token * tokens``, a
decode step ``decode_base + decode_per_seq * batch``, an adapter load ``load_time``. The token a
request samples at output index ``i`` is ``token_fn(rid, i)`` (default: a value that is never EOS).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from jlora.adapters.peft import LoraAdapter
from jlora.adapters.pool import HostAdapter
from jlora.clock import FakeClock
from jlora.runner.base import DecodeSeq, PrefillSeq


def scripted_token(rid: int, index: int) -> int:
    """The default token of request ``rid`` at output index ``index``: never an end-of-sequence
    id of the presets, so requests run to ``max_new_tokens``."""
    return 100 + (rid * 7 + index) % 100


@dataclass
class FakeRunner:
    supports_overlap = False  # it computes on the host: nothing to overlap
    num_pages = None  # no KV cache: the engine sizes the page pool
    clock: FakeClock
    prefill_base: float = 0.010
    prefill_per_token: float = 0.0001
    decode_base: float = 0.020
    decode_per_seq: float = 0.0
    load_time: float = 0.0
    token_fn: Callable[[int, int], int] = scripted_token
    log: list[tuple] = field(default_factory=list)
    """A line per call: ("prefill", [(rid, start, n)]), ("decode", [rid]), ("load", slot, name)."""
    times: list[tuple[float, float]] = field(default_factory=list)
    """(start, end) on the clock of each line of ``log``."""

    def prefill(self, seqs: list[PrefillSeq]) -> list[int | None]:
        tokens = sum(len(s.tokens) for s in seqs)
        self._advance(self.prefill_base + self.prefill_per_token * tokens)
        self.log.append(("prefill", [(s.rid, s.start, len(s.tokens)) for s in seqs]))
        return [self.token_fn(s.rid, s.out_index) if s.sample else None for s in seqs]

    def decode(self, seqs: list[DecodeSeq]) -> list[int]:
        self._advance(self.decode_base + self.decode_per_seq * len(seqs))
        self.log.append(("decode", [s.rid for s in seqs]))
        return [self.token_fn(s.rid, s.out_index) for s in seqs]

    def host_adapter(self, adapter: LoraAdapter) -> LoraAdapter:
        return adapter

    def load_lora(self, slot: int, adapter: HostAdapter | None) -> None:
        self._advance(self.load_time)
        self.log.append(("load", slot, None if adapter is None else adapter.name))

    def take_failed_loads(self) -> dict[int, Exception]:
        return {}  # loads are synchronous here: a failure raises from load_lora

    def _advance(self, seconds: float) -> None:
        start = self.clock.now()
        self.clock.advance(seconds)
        self.times.append((start, self.clock.now()))

    def score(self, seqs: list[tuple[np.ndarray, int]]) -> list[np.ndarray]:
        raise NotImplementedError("the fake runner computes no logits")

    def warmup(self) -> None:
        return None
