"""The engine: a base model, its adapters, and the device slots the forward reads.

``Engine.score`` runs prompts of mixed adapters through the jitted forward and returns next-token
logits at every position. Prompts are packed into flat steps of at most ``max_score_tokens`` tokens
and at most ``max_loras_per_batch`` distinct adapters, ordered by slot (the kernels' layout), padded
to a power-of-two token bucket so that a handful of shapes are ever compiled.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jlora.adapters.dummy import parse_dummy_spec, random_adapter
from jlora.adapters.peft import LoraAdapter, load_peft_adapter
from jlora.adapters.slots import SlotBuffers
from jlora.config import EngineConfig
from jlora.kernels.types import NO_SLOT, LoraBatch, make_lora_batch
from models.config import ModelConfig
from models.llama import LlamaParams, LoraLayers, SegmentAttention, forward, logits
from models.weights import init_dummy_weights, load_hf_weights

MIN_TOKEN_BUCKET = 16


def token_bucket(n: int) -> int:
    """Smallest power of two >= n (and >= MIN_TOKEN_BUCKET): the padded step length."""
    return max(MIN_TOKEN_BUCKET, 1 << (n - 1).bit_length())


@functools.partial(jax.jit, static_argnames=("cfg", "lora_backend"))
def _score_step(
    params: LlamaParams,
    lora: LoraLayers,
    tokens: jax.Array,  # [T] int32
    positions: jax.Array,  # [T] int32
    seq_ids: jax.Array,  # [T] int32, -1 for padding
    lora_batch: LoraBatch,
    cfg: ModelConfig,
    lora_backend: str,
) -> jax.Array:  # [T, V] float32
    attention = SegmentAttention(seq_ids=seq_ids, positions=positions)
    hidden, _ = forward(
        params, cfg, tokens, positions, attention, None, lora, lora_batch, lora_backend
    )
    return logits(params, hidden)


class Engine:
    """A base model with multi-LoRA serving. See :class:`~jlora.config.EngineConfig`."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.model_config: ModelConfig = config.model_config()
        if config.uses_files:
            self.params = load_hf_weights(config.model, self.model_config, config.dtype)
        else:
            self.params = init_dummy_weights(self.model_config, config.dtype, config.seed)
        self.adapters: dict[str, LoraAdapter] = {}
        for i, (name, path) in enumerate(config.lora_paths.items()):
            self.adapters[name] = self._load_adapter(name, path, seed=config.seed + 1 + i)
        self.slots = SlotBuffers(
            self.model_config, config.max_loras_per_batch, config.max_lora_rank, config.dtype
        )
        self._slot_clock = np.zeros(config.max_loras_per_batch, np.int64)
        self._tick = 0

    def _load_adapter(self, name: str, path: str, seed: int) -> LoraAdapter:
        rank = parse_dummy_spec(path)
        if rank is None:
            return load_peft_adapter(name, path, self.model_config, self.config.max_lora_rank)
        if rank > self.config.max_lora_rank:
            raise ValueError(
                f"adapter {name!r}: rank={rank} is above max_lora_rank={self.config.max_lora_rank}"
            )
        return random_adapter(name, self.model_config, rank, seed=seed)

    # ------------------------------------------------------------------ validation
    def _check_prompts(self, prompts: Sequence[Sequence[int]]) -> list[np.ndarray]:
        if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence) or not prompts:
            raise ValueError("prompts must be a non-empty list of token-id lists")
        vocab, ctx = self.model_config.vocab_size, self.model_config.max_position_embeddings
        out = []
        for i, prompt in enumerate(prompts):
            ids = np.asarray(prompt)
            if ids.ndim != 1 or ids.size == 0:
                raise ValueError(f"prompt {i} is empty or not a flat list of token ids")
            if not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(f"prompt {i} holds non-integer values (dtype {ids.dtype})")
            bad = ids[(ids < 0) | (ids >= vocab)]
            if bad.size:
                raise ValueError(
                    f"prompt {i} has token id {int(bad[0])} outside the vocabulary [0, {vocab})"
                )
            if ids.size > ctx:
                raise ValueError(f"prompt {i} has {ids.size} tokens, longer than the context {ctx}")
            out.append(ids.astype(np.int32))
        return out

    def _check_lora_names(self, lora_name, n: int) -> list[str | None]:
        names = [lora_name] * n if lora_name is None or isinstance(lora_name, str) else lora_name
        names = list(names)
        if len(names) != n:
            raise ValueError(f"lora_name has {len(names)} entries for {n} prompts")
        for name in names:
            if name is not None and name not in self.adapters:
                known = ", ".join(sorted(self.adapters)) or "none loaded"
                raise ValueError(f"unknown adapter name {name!r} (known: {known})")
        return names

    # ------------------------------------------------------------------ slots
    def _ensure_in_slots(self, names: set[str]) -> dict[str, int]:
        """Put ``names`` into device slots, evicting the least recently used others."""
        if len(names) > self.slots.num_slots:
            raise ValueError(f"{len(names)} adapters exceed {self.slots.num_slots} slots")
        self._tick += 1
        placed = {}
        for name in sorted(names, key=lambda n: self.slots.slot_of(n) is None):
            slot = self.slots.slot_of(name)
            if slot is None:
                busy = set(placed.values())
                free = [s for s in range(self.slots.num_slots) if s not in busy]
                slot = min(
                    free, key=lambda s: (self.slots.occupant[s] is not None, self._slot_clock[s])
                )
                self.slots.put(slot, self.adapters[name])
            placed[name] = slot
            self._slot_clock[slot] = self._tick
        return placed

    # ------------------------------------------------------------------ scoring
    def score(
        self,
        prompts: Sequence[Sequence[int]],
        lora_name: str | None | Sequence[str | None] = None,
    ) -> list[np.ndarray]:
        """Next-token logits (float32 ``[len(prompt), vocab]``) at every position of each prompt."""
        ids = self._check_prompts(prompts)
        names = self._check_lora_names(lora_name, len(ids))
        results: list[np.ndarray | None] = [None] * len(ids)
        for batch in self._pack(ids, names):
            self._run_score_batch(batch, ids, names, results)
        return results  # type: ignore[return-value]

    def _pack(self, ids: list[np.ndarray], names: list[str | None]) -> list[list[int]]:
        """Split prompts, in order, into steps within the token and slot budgets."""
        batches, current, tokens, adapters = [], [], 0, set()
        limit, slots = max(self.config.max_score_tokens, max(len(x) for x in ids)), self.slots
        for i, (x, name) in enumerate(zip(ids, names, strict=True)):
            grows = name is not None and name not in adapters
            if current and (
                tokens + len(x) > limit or (grows and len(adapters) == slots.num_slots)
            ):
                batches.append(current)
                current, tokens, adapters = [], 0, set()
            current.append(i)
            tokens += len(x)
            if name is not None:
                adapters.add(name)
        batches.append(current)
        return batches

    def _run_score_batch(self, batch, ids, names, results) -> None:
        placed = self._ensure_in_slots({names[i] for i in batch if names[i] is not None})
        # Group sequences by slot (the kernels' contract); no-adapter sequences go last.
        order = sorted(batch, key=lambda i: (names[i] is None, placed.get(names[i], 0)))
        total = sum(len(ids[i]) for i in order)
        t = token_bucket(total)
        tokens = np.zeros(t, np.int32)
        positions = np.zeros(t, np.int32)
        seq_ids = np.full(t, -1, np.int32)
        token_slot = np.full(t, NO_SLOT, np.int32)
        spans, off = {}, 0
        for seq, i in enumerate(order):
            n = len(ids[i])
            tokens[off : off + n] = ids[i]
            positions[off : off + n] = np.arange(n)
            seq_ids[off : off + n] = seq
            token_slot[off : off + n] = placed[names[i]] if names[i] is not None else NO_SLOT
            spans[i] = (off, off + n)
            off += n
        lora_batch = make_lora_batch(token_slot, self.slots.slot_rank)
        out = _score_step(
            self.params,
            self.slots.layers,
            jnp.asarray(tokens),
            jnp.asarray(positions),
            jnp.asarray(seq_ids),
            lora_batch,
            cfg=self.model_config,
            lora_backend=self.config.lora_backend,
        )
        out = np.asarray(out)
        for i, (start, end) in spans.items():
            results[i] = out[start:end]
