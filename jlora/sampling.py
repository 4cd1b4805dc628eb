"""Sampling parameters of a generation request (SGLang's and vLLM's names)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How one request generates. Invalid values raise ``ValueError`` naming them."""

    max_new_tokens: int = 16
    """Most tokens to generate (at least 1)."""
    temperature: float = 0.0
    """0 is greedy; above 0 samples from softmax(logits / temperature)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    top_k: int = -1
    """Keep the k most likely tokens (-1: all)."""
    seed: int | None = None
    """Seed of this request's sampling (None: derived from the request id)."""
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that end generation, in addition to the model's EOS."""
    ignore_eos: bool = False
    """Generate exactly max_new_tokens, whatever the tokens (benchmarks)."""

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens!r} must be at least 1")
        if not self.temperature >= 0:
            raise ValueError(f"temperature={self.temperature!r} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p!r} must be in (0, 1]")
        if not isinstance(self.top_k, int) or self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"top_k={self.top_k!r} must be -1 (all) or positive")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
