"""Token ids to text one token at a time, for streaming and stop strings.

A token is not always text by itself: a byte-level BPE token may hold half of a UTF-8 character
(decoded alone it gives U+FFFD), and a SentencePiece token's leading space shows only after the
token before it. So, as vLLM and TGI do, each new token is decoded in a small window of the tokens
before it (starting in the prompt's last tokens) and only the text the window adds is taken, once
it does not end in a broken character. The pieces join to the text of the whole output.

Stop strings end generation where they first appear; the text is cut before the stop string. While
streaming, the last ``max(len(stop)) - 1`` characters are held back, because they may be the start
of a stop string that the next token completes; they are released when the request finishes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jlora.text.tokenizer import Tokenizer

# Tokens of the prompt decoded with the first output token, so that its text is read in context.
PROMPT_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """The text of one request's output so far; :meth:`add` one token at a time."""

    __slots__ = (
        "_decode",
        "_ids",
        "_prefix_offset",
        "_read_offset",
        "_stops",
        "_holdback",
        "_emitted",
        "text",
        "stop_string",
    )

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int],
        stop: Sequence[str] = (),
        skip_special_tokens: bool = True,
    ):
        inner = tokenizer.tokenizer
        self._decode = lambda ids: inner.decode(ids, skip_special_tokens=skip_special_tokens)
        context = [int(t) for t in prompt_ids[-PROMPT_CONTEXT_TOKENS:]]
        self._ids: list[int] = context
        self._prefix_offset = 0
        self._read_offset = len(context)
        self._stops = tuple(stop)
        self._holdback = max((len(s) for s in self._stops), default=1) - 1
        self._emitted = 0
        self.text = ""
        """The output's text so far (with a stop string found: up to it, excluded)."""
        self.stop_string: str | None = None
        """The stop string that ended the request (None: none did)."""

    def add(self, token_id: int) -> str | None:
        """Take one output token; returns the stop string it completed (the text is then cut
        before it, and later tokens must not be added), else None."""
        ids = self._ids
        ids.append(token_id)
        prefix = self._decode(ids[self._prefix_offset : self._read_offset])
        full = self._decode(ids[self._prefix_offset :])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return None  # no text yet (a partial character, or a token with no text)
        start = len(self.text)
        self.text += full[len(prefix) :]
        self._prefix_offset, self._read_offset = self._read_offset, len(ids)
        if self._stops:
            return self._find_stop(start)
        return None

    def _find_stop(self, new_from: int) -> str | None:
        """The stop string that occurs first in the text, among those that end in the new text."""
        best: tuple[int, str] | None = None
        for stop in self._stops:
            at = self.text.find(stop, max(0, new_from - len(stop) + 1))
            if at >= 0 and (best is None or at < best[0]):
                best = (at, stop)
        if best is None:
            return None
        self.text = self.text[: best[0]]
        self.stop_string = best[1]
        return best[1]

    def take_piece(self, finished: bool) -> str:
        """The text not handed out yet: all of it once ``finished``, else all but the characters
        that may begin a stop string."""
        end = len(self.text) if finished else max(self._emitted, len(self.text) - self._holdback)
        piece = self.text[self._emitted : end]
        self._emitted = end
        return piece
