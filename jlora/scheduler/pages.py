"""The host side of the paged KV cache: which pages are free, and how many a request needs.

The scheduler asks the :class:`PagePool` before admitting or growing a request, and frees a
request's pages when it ends or is preempted; the device side (the pages themselves) is
:mod:`jlora.runner.kv_cache`. Page :data:`TRASH_PAGE` is never handed out: padding tokens write
there, so every step writes a fixed-size batch with no branch.
"""

from __future__ import annotations

import math

TRASH_PAGE = 0  # written by padding tokens, never allocated


class OutOfPages(Exception):
    """Raised inside the scheduler when a request cannot grow; it preempts and retries."""


class PagePool:
    """Free list of KV pages (host state only)."""

    def __init__(self, num_pages: int, page_size: int):
        if num_pages < 2:
            raise ValueError(f"num_pages={num_pages} must be at least 2 (page 0 is reserved)")
        self.num_pages, self.page_size = num_pages, page_size
        # LIFO free list: recently freed pages are reused first (warm in cache).
        self._free = list(range(num_pages - 1, TRASH_PAGE, -1))

    @property
    def capacity(self) -> int:
        """Pages a request may ever use (all but the trash page)."""
        return self.num_pages - 1

    @property
    def num_free(self) -> int:
        return len(self._free)

    def pages_for(self, num_tokens: int) -> int:
        return math.ceil(num_tokens / self.page_size)

    def alloc(self, n: int) -> list[int]:
        if n > len(self._free):
            raise OutOfPages(f"{n} pages asked, {len(self._free)} free")
        if n <= 0:
            return []
        taken = self._free[-n:]
        del self._free[-n:]  # in place: O(n), not a copy of the whole free list
        return taken[::-1]

    def free(self, pages: list[int]) -> None:
        self._free.extend(reversed(pages))
