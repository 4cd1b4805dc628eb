"""Shape buckets: the one place that decides which step shapes exist. All are compiled at start-up;
a step is padded up to the smallest bucket that holds it, so a run never compiles again."""

from __future__ import annotations

import bisect
from dataclasses import dataclass


def geometric(lo: int, hi: int, factor: int) -> tuple[int, ...]:
    """lo, lo*factor, lo*factor^2, ... below hi, and hi itself as the last bucket.

    Few buckets keep start-up compilation short (each is a whole-model compile); a coarse factor
    costs padding, which a memory-bound decode step hardly notices.
    """
    out, n = [], lo
    while n < hi:
        out.append(n)
        n *= factor
    out.append(hi)
    return tuple(out)


@dataclass(frozen=True)
class ShapeBuckets:
    prefill_tokens: tuple[int, ...]
    """Token counts of a prefill step, ascending; the last is the prefill token budget."""
    decode_batch: tuple[int, ...]
    """Sequence counts of a decode step, ascending; the last is max_running_requests."""
    kv_pages: tuple[int, ...]
    """Page-table widths of a decode step, ascending; the last holds a full context."""
    prefix_pages: int
    """Pages of the one sequence a prefill step may continue (a full context)."""
    prefill_rows: int
    """Most sequences one prefill step samples a token for."""

    def __post_init__(self) -> None:
        for name in ("prefill_tokens", "decode_batch", "kv_pages"):
            values = getattr(self, name)
            if not values or list(values) != sorted(set(values)) or values[0] < 1:
                raise ValueError(f"{name}={values!r} must be distinct positive sizes, ascending")

    @staticmethod
    def _fit(buckets: tuple[int, ...], n: int, what: str) -> int:
        i = bisect.bisect_left(buckets, n)
        if i == len(buckets):
            raise ValueError(f"{what}={n} exceeds the largest bucket {buckets[-1]}")
        return buckets[i]

    def prefill_bucket(self, num_tokens: int) -> int:
        return self._fit(self.prefill_tokens, num_tokens, "prefill tokens")

    def decode_bucket(self, batch: int, pages: int) -> tuple[int, int]:
        return (
            self._fit(self.decode_batch, batch, "decode batch"),
            self._fit(self.kv_pages, pages, "kv pages"),
        )

    def all_shapes(self) -> list[tuple]:
        """Every step shape: ("prefill", T) and ("decode", B, P)."""
        shapes: list[tuple] = [("prefill", t) for t in self.prefill_tokens]
        shapes += [("decode", b, p) for b in self.decode_batch for p in self.kv_pages]
        return shapes
