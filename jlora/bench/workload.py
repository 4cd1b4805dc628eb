"""Benchmark workloads, drawn as SGLang's ``bench_serving`` draws them.

``random`` dataset: token ids uniform over the vocabulary; input and output lengths uniform in
``[max(1, int(len * range_ratio)), len]``; arrivals a Poisson process at ``request_rate`` (``inf``:
all at time 0); each request's adapter ``uniform`` at random, ``distinct`` round-robin, or
``skewed`` by a Zipf law (weight of the k-th adapter ``1 / k**alpha``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DISTRIBUTIONS = ("uniform", "distinct", "skewed")


@dataclass(frozen=True)
class WorkloadRequest:
    index: int
    arrival: float  # seconds after the start
    prompt: list[int]
    output_len: int
    lora_name: str | None


def _lengths(rng: np.random.Generator, n: int, length: int, ratio: float, what: str) -> np.ndarray:
    if length < 1:
        raise ValueError(f"{what}={length} must be at least 1")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"random_range_ratio={ratio} must be in [0, 1]")
    return rng.integers(max(1, int(length * ratio)), length + 1, size=n)


def lora_weights(names: list[str | None], distribution: str, alpha: float) -> np.ndarray:
    if distribution == "skewed":
        if alpha <= 0:
            raise ValueError(f"lora_zipf_alpha={alpha} must be positive")
        w = 1.0 / np.arange(1, len(names) + 1) ** alpha
        return w / w.sum()
    return np.full(len(names), 1.0 / len(names))


def make_random_workload(
    *,
    num_prompts: int,
    request_rate: float,
    input_len: int,
    output_len: int,
    range_ratio: float,
    vocab_size: int,
    lora_names: list[str | None],
    distribution: str = "uniform",
    zipf_alpha: float = 1.5,
    seed: int = 1,
) -> list[WorkloadRequest]:
    if num_prompts < 1:
        raise ValueError(f"num_prompts={num_prompts} must be at least 1")
    if not request_rate > 0:
        raise ValueError(f"request_rate={request_rate} must be positive (or inf)")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"lora_request_distribution={distribution!r} is not one of {', '.join(DISTRIBUTIONS)}"
        )
    names = lora_names or [None]
    rng = np.random.default_rng(seed)
    in_lens = _lengths(rng, num_prompts, input_len, range_ratio, "random_input_len")
    out_lens = _lengths(rng, num_prompts, output_len, range_ratio, "random_output_len")
    if math.isinf(request_rate):
        arrivals = np.zeros(num_prompts)
    else:
        arrivals = np.cumsum(rng.exponential(1.0 / request_rate, size=num_prompts))
        arrivals -= arrivals[0]  # the first request arrives at the start
    if distribution == "distinct":
        picks = np.arange(num_prompts) % len(names)
    else:
        picks = rng.choice(
            len(names), size=num_prompts, p=lora_weights(names, distribution, zipf_alpha)
        )
    return [
        WorkloadRequest(
            index=i,
            arrival=float(arrivals[i]),
            prompt=rng.integers(0, vocab_size, int(in_lens[i])).tolist(),
            output_len=int(out_lens[i]),
            lora_name=names[picks[i]],
        )
        for i in range(num_prompts)
    ]
