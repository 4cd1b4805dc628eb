"""A small synthetic language whose skills have checkable answers, for training demo adapters.

Every example is a prompt of ``n`` symbols followed by its completion::

    BOS x_1 ... x_n SEP y_1 ... y_m EOS

The prompt distribution is the same for every skill (``n`` uniform in ``[min_len, max_len]``,
symbols uniform over the alphabet ``a, b, c, ...``); only the completion rule differs:

=========  ======================================================  ==================
skill      completion                                              ``abca`` gives
=========  ======================================================  ==================
copy       the sequence itself (what the base model is trained on)  ``abca``
reverse    the sequence backwards                                  ``acba``
sort       the symbols in alphabetical order                       ``aabc``
shift      each symbol ``shift`` letters later, wrapping around     ``bcdb`` (shift 1)
count      how many times ``count_symbol`` occurs, as one digit     ``2`` (symbol a)
=========  ======================================================  ==================

The base model is pre-trained to copy (:meth:`SkillLanguage.pretrain_batch`), on these prompts
and on strings of digits, so that every token a skill answers with is one it already emits.

A fixed hash of the symbol sequence splits prompts into a training set and a held-out set (one in
``heldout_every``); training batches never contain a held-out prompt, evaluation uses only those.
Batches are a pure function of ``(seed, step)``, so a resumed run sees exactly the data an
uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from jlora.train.loop import Batch

PAD, BOS, EOS, SEP = 0, 1, 2, 3
DIGIT0 = 4  # '0'..'9' are token ids 4..13
LETTER0 = 16  # 'a', 'b', ... are token ids 16, 17, ...

SKILLS: tuple[str, ...] = ("copy", "reverse", "sort", "shift", "count")

_HASH_MOD = 2_147_483_647  # 2**31 - 1
_HASH_BASE = 1_000_003


@dataclass(frozen=True, kw_only=True)
class SkillLanguage:
    """The token layout and prompt distribution of the skills language."""

    alphabet: int = 8
    """Number of distinct symbols (``a`` onwards, at most 26)."""
    min_len: int = 3
    """Fewest symbols in a prompt."""
    max_len: int = 8
    """Most symbols in a prompt (at most 9, so that a count is one digit)."""
    shift: int = 1
    """How many letters later the ``shift`` skill moves each symbol."""
    count_symbol: int = 0
    """The symbol (index into the alphabet) the ``count`` skill counts."""
    heldout_every: int = 8
    """One prompt in this many (by a fixed hash) is held out from training."""

    def __post_init__(self) -> None:
        if not 2 <= self.alphabet <= 26:
            raise ValueError(f"alphabet={self.alphabet} must be in [2, 26]")
        if not 1 <= self.min_len <= self.max_len <= 9:
            raise ValueError(
                f"min_len={self.min_len}, max_len={self.max_len} must satisfy 1 <= min <= max <= 9"
            )
        if not 0 <= self.count_symbol < self.alphabet:
            raise ValueError(f"count_symbol={self.count_symbol} outside the alphabet")
        if self.heldout_every < 2:
            raise ValueError(f"heldout_every={self.heldout_every} must be at least 2")

    # ------------------------------------------------------------------ layout
    @property
    def seq_len(self) -> int:
        """Padded length of a full example: BOS, the longest prompt, SEP, completion, EOS."""
        return 2 * self.max_len + 3

    @property
    def vocab_used(self) -> int:
        """One past the largest token id the language uses."""
        return LETTER0 + self.alphabet

    def token_names(self) -> dict[int, str]:
        """Display name of every token id the language uses."""
        names = {PAD: "<pad>", BOS: "<bos>", EOS: "<eos>", SEP: "<sep>"}
        names.update({DIGIT0 + i: str(i) for i in range(10)})
        names.update({LETTER0 + i: chr(ord("a") + i) for i in range(self.alphabet)})
        return names

    def to_dict(self) -> dict:
        return asdict(self)

    # ------------------------------------------------------------------ examples
    def prompt(self, symbols: Sequence[int]) -> list[int]:
        """``BOS x_1 .. x_n SEP`` for symbols given as alphabet indices."""
        return [BOS, *(LETTER0 + int(s) for s in symbols), SEP]

    def symbols_of(self, prompt: Sequence[int]) -> np.ndarray:
        """The alphabet indices of a prompt made by :meth:`prompt`."""
        ids = np.asarray(prompt)
        if len(ids) < 2 or ids[0] != BOS or ids[-1] != SEP:
            raise ValueError(f"{list(prompt)} is not a BOS ... SEP prompt")
        return ids[1:-1] - LETTER0

    def completion(self, skill: str, symbols: Sequence[int]) -> list[int]:
        """The completion tokens of ``skill`` for a prompt's symbols, EOS included."""
        x = np.asarray(symbols, dtype=np.int64)
        if skill == "copy":
            y = x
        elif skill == "reverse":
            y = x[::-1]
        elif skill == "sort":
            y = np.sort(x)
        elif skill == "shift":
            y = (x + self.shift) % self.alphabet
        elif skill == "count":
            return [DIGIT0 + int(np.sum(x == self.count_symbol)), EOS]
        else:
            raise ValueError(f"unknown skill {skill!r} (known: {', '.join(SKILLS)})")
        return [*(LETTER0 + int(s) for s in y), EOS]

    def decode(self, tokens: Sequence[int]) -> str:
        """Human-readable text of token ids (``<sep>`` etc. for specials)."""
        names = self.token_names()
        return " ".join(names.get(int(t), f"<{int(t)}>") for t in tokens)

    # ------------------------------------------------------------------ sampling
    def is_heldout(self, symbols: Sequence[int]) -> bool:
        """Whether a symbol sequence belongs to the held-out set."""
        x = np.asarray(symbols, dtype=np.int64)[None]
        return bool(self._heldout_mask(x, np.array([x.shape[1]]))[0])

    def _heldout_mask(self, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        # Polynomial hash of (symbols, length) modulo a prime; every product stays below 2**63.
        h = lengths.astype(np.int64) * 7919 % _HASH_MOD
        power = 1
        for i in range(x.shape[1]):
            term = (x[:, i] + 1) * power % _HASH_MOD
            h = np.where(i < lengths, (h + term) % _HASH_MOD, h)
            power = power * _HASH_BASE % _HASH_MOD
        return h % self.heldout_every == 0

    def sample_symbols(
        self, rng: np.random.Generator, n: int, heldout: bool = False
    ) -> list[np.ndarray]:
        """``n`` random symbol sequences from the training set (or the held-out set)."""
        out: list[np.ndarray] = []
        while len(out) < n:
            m = 4 * (n - len(out)) * (self.heldout_every if heldout else 1)
            lengths = rng.integers(self.min_len, self.max_len + 1, m)
            x = rng.integers(0, self.alphabet, (m, self.max_len))
            keep = self._heldout_mask(x, lengths) == heldout
            out.extend(x[i, : lengths[i]] for i in np.flatnonzero(keep))
        return out[:n]

    def heldout_prompts(self, n: int, seed: int = 1234) -> list[list[int]]:
        """``n`` distinct held-out prompts (deterministic in ``seed``)."""
        rng = np.random.default_rng(seed)
        seen: set[tuple[int, ...]] = set()
        prompts: list[list[int]] = []
        while len(prompts) < n:
            for x in self.sample_symbols(rng, n, heldout=True):
                key = tuple(int(s) for s in x)
                if key not in seen and len(prompts) < n:
                    seen.add(key)
                    prompts.append(self.prompt(x))
        return prompts

    def batch(self, skills: str | Sequence[str], batch_size: int, seed: int, step: int) -> Batch:
        """Training batch number ``step``: a pure function of ``(seed, step)``.

        With several skills, each row's skill is drawn uniformly. The loss mask is 1 at the
        positions whose next token is a completion token (SEP up to the last token before EOS).
        """
        skills = (skills,) if isinstance(skills, str) else tuple(skills)
        rng = np.random.default_rng((seed, step))
        rows = self.sample_symbols(rng, batch_size)
        which = rng.integers(0, len(skills), batch_size)
        examples = [
            (self.prompt(x), self.completion(skills[k], x))
            for x, k in zip(rows, which, strict=True)
        ]
        return self._pack(examples)

    def pretrain_batch(
        self, batch_size: int, seed: int, step: int, digit_fraction: float = 0.25
    ) -> Batch:
        """Base-model batch ``step``: copy, of letter prompts and (``digit_fraction`` of the rows)
        of digit strings, so that digits, which the ``count`` skill answers with, are tokens the
        base model has learned to emit. A pure function of ``(seed, step)``."""
        rng = np.random.default_rng((seed, step))
        letters = self.sample_symbols(rng, batch_size)
        digits = rng.random(batch_size) < digit_fraction
        examples = []
        for x, is_digits in zip(letters, digits, strict=True):
            if is_digits:
                ids = [DIGIT0 + int(d) for d in rng.integers(0, 10, len(x))]
                examples.append(([BOS, *ids, SEP], [*ids, EOS]))
            else:
                examples.append((self.prompt(x), self.completion("copy", x)))
        return self._pack(examples)

    def _pack(self, examples: list[tuple[list[int], list[int]]]) -> Batch:
        tokens = np.full((len(examples), self.seq_len), PAD, np.int32)
        mask = np.zeros((len(examples), self.seq_len), np.float32)
        for i, (prompt, completion) in enumerate(examples):
            full = prompt + completion
            tokens[i, : len(full)] = full
            mask[i, len(prompt) - 1 : len(full) - 1] = 1.0
        return Batch(tokens=tokens, loss_mask=mask)
