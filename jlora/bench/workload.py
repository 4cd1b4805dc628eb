"""Benchmark workloads, drawn as SGLang's ``bench_serving`` draws them, with the bursty and skewed
traffic of real users on top.

``random`` dataset: token ids uniform over the vocabulary; input and output lengths uniform in
``[max(1, int(len * range_ratio)), len]``.

``trace`` dataset: a CSV replayed row by row (:func:`read_trace`): arrival time, input and output
length, optionally the adapter; prompt token ids drawn at random.

``sharegpt`` dataset: real prompts and completion lengths from a ShareGPT JSON file, tokenized with
the model's tokenizer, as SGLang reads them (:mod:`jlora.bench.sharegpt`).

Arrivals (``random``): gaps drawn from a gamma law of shape ``burstiness`` and mean ``1 /
request_rate`` (SGLang's ``--burstiness``: 1.0 is a Poisson process, below 1 burstier, the gaps'
coefficient of variation being ``1 / sqrt(burstiness)``); ``inf``: all at time 0.

Adapters, for each request whose adapter is not given:

* ``uniform`` at random, ``distinct`` round-robin, ``skewed`` by a Zipf law (weight of the k-th
  adapter ``1 / k**alpha``), or ``power``: S-LoRA's power law, the adapter index
  ``floor(n * X)`` with ``X ~ np.random.power(alpha)`` (density ``alpha * x**(alpha - 1)`` on
  [0, 1]: below 1 the first adapters are the hot ones, 1 is uniform);
* on/off bursts: each adapter alternates on and off periods (exponential, of means ``on_mean_s``
  and ``off_mean_s``, starting on with probability ``on / (on + off)``), and a request goes only
  to the adapters on at its arrival, by their weights (if none is on, to the one that turns on
  first);
* a popularity shift: from the request at fraction ``shift_at`` of the run (in arrival order) the
  weights are reversed, the hottest adapter becoming the coldest.

Every draw comes from ``seed``: the same arguments give the same workload. The draws of the
original options (Poisson, no bursts, no shift) are those of before these options existed.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from jlora.bench.sharegpt import read_sharegpt

if TYPE_CHECKING:
    from jlora.text import Tokenizer

DATASETS = ("random", "trace", "sharegpt")
DISTRIBUTIONS = ("uniform", "distinct", "skewed", "power")

# Trace columns: the accepted header names of each (the Azure LLM inference trace's first).
TRACE_COLUMNS = {
    "arrival": ("TIMESTAMP", "arrival_s"),
    "input_len": ("ContextTokens", "input_len"),
    "output_len": ("GeneratedTokens", "output_len"),
    "adapter": ("adapter", "lora_name"),
}


@dataclass(frozen=True)
class WorkloadRequest:
    index: int
    arrival: float  # seconds after the start
    prompt: list[int]
    output_len: int
    lora_name: str | None


@dataclass(frozen=True, kw_only=True)
class AdapterMix:
    """How requests pick their adapters (see the module docstring). Invalid values raise
    ``ValueError`` naming the :class:`~jlora.bench.config.BenchConfig` field."""

    distribution: str = "uniform"
    zipf_alpha: float = 1.5
    power_alpha: float = 0.5
    on_mean_s: float = 0.0  # 0: every adapter always on
    off_mean_s: float = 0.0
    shift_at: float | None = None  # None: no shift

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"lora_request_distribution={self.distribution!r} is not one of "
                f"{', '.join(DISTRIBUTIONS)}"
            )
        if not self.zipf_alpha > 0:
            raise ValueError(f"lora_zipf_alpha={self.zipf_alpha} must be positive")
        if not self.power_alpha > 0:
            raise ValueError(f"lora_power_alpha={self.power_alpha} must be positive")
        if not (self.on_mean_s >= 0 and math.isfinite(self.on_mean_s)):
            raise ValueError(f"lora_on_mean_s={self.on_mean_s} must be a finite number >= 0")
        if self.on_mean_s > 0 and not (self.off_mean_s > 0 and math.isfinite(self.off_mean_s)):
            raise ValueError(
                f"lora_off_mean_s={self.off_mean_s} must be positive and finite when "
                f"lora_on_mean_s={self.on_mean_s} turns on/off bursts on"
            )
        if self.shift_at is not None and not 0.0 <= self.shift_at <= 1.0:
            raise ValueError(f"lora_shift_at={self.shift_at} must be in [0, 1]")
        if self.distribution == "distinct" and (self.on_mean_s > 0 or self.shift_at is not None):
            raise ValueError(
                "lora_request_distribution='distinct' is round-robin: it takes no on/off bursts "
                "(lora_on_mean_s) and no popularity shift (lora_shift_at)"
            )

    @property
    def bursts(self) -> bool:
        return self.on_mean_s > 0


def _lengths(rng: np.random.Generator, n: int, length: int, ratio: float, what: str) -> np.ndarray:
    if length < 1:
        raise ValueError(f"{what}={length} must be at least 1")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"random_range_ratio={ratio} must be in [0, 1]")
    return rng.integers(max(1, int(length * ratio)), length + 1, size=n)


def lora_weights(
    num_adapters: int, distribution: str, zipf_alpha: float = 1.5, power_alpha: float = 0.5
) -> np.ndarray:
    """The probability of each adapter, hottest first (``distinct`` counts as ``uniform``)."""
    k = np.arange(num_adapters + 1, dtype=np.float64)
    if distribution == "skewed":
        if not zipf_alpha > 0:
            raise ValueError(f"lora_zipf_alpha={zipf_alpha} must be positive")
        w = 1.0 / k[1:] ** zipf_alpha
    elif distribution == "power":
        if not power_alpha > 0:
            raise ValueError(f"lora_power_alpha={power_alpha} must be positive")
        # P(floor(n X) = k) for X ~ power(alpha): the CDF x**alpha between k/n and (k+1)/n.
        w = np.diff((k / num_adapters) ** power_alpha)
    else:
        w = np.ones(num_adapters)
    return w / w.sum()


def arrival_times(
    rng: np.random.Generator, n: int, request_rate: float, burstiness: float = 1.0
) -> np.ndarray:
    """``n`` arrival times from 0: gaps gamma of shape ``burstiness`` and mean ``1 / rate``."""
    if not request_rate > 0:
        raise ValueError(f"request_rate={request_rate} must be positive (or inf)")
    if not (burstiness > 0 and math.isfinite(burstiness)):
        raise ValueError(f"burstiness={burstiness} must be a positive finite number")
    if math.isinf(request_rate):
        return np.zeros(n)
    if burstiness == 1.0:  # the exponential draw itself, so Poisson workloads stay as they were
        gaps = rng.exponential(1.0 / request_rate, size=n)
    else:
        gaps = rng.gamma(burstiness, 1.0 / (request_rate * burstiness), size=n)
    arrivals = np.cumsum(gaps)
    return arrivals - arrivals[0]  # the first request arrives at the start


def on_periods(
    rng: np.random.Generator, num_adapters: int, horizon: float, on_mean: float, off_mean: float
) -> list[np.ndarray]:
    """Per adapter, its on periods up to ``horizon`` as rows ``[start, end)``."""
    out = []
    for _ in range(num_adapters):
        on = rng.random() < on_mean / (on_mean + off_mean)
        t, periods = 0.0, []
        while t <= horizon:
            d = rng.exponential(on_mean if on else off_mean)
            if on:
                periods.append((t, t + d))
            t += d
            on = not on
        out.append(np.asarray(periods, np.float64).reshape(-1, 2))
    return out


def pick_adapters(
    rng: np.random.Generator, arrivals: np.ndarray, num_adapters: int, mix: AdapterMix, seed: int
) -> np.ndarray:
    """The adapter index of each request (arrivals in order)."""
    n = len(arrivals)
    if mix.distribution == "distinct":
        return np.arange(n) % num_adapters
    base = lora_weights(num_adapters, mix.distribution, mix.zipf_alpha, mix.power_alpha)
    if not mix.bursts and mix.shift_at is None:
        return rng.choice(num_adapters, size=n, p=base)
    weights = np.tile(base, (n, 1))
    if mix.shift_at is not None:
        weights[int(math.ceil(mix.shift_at * n)) :] = base[::-1]
    if mix.bursts:
        # A generator of its own, so the bursts do not move the other draws.
        periods = on_periods(
            np.random.default_rng([seed, 1]),
            num_adapters,
            float(arrivals[-1]) if n else 0.0,
            mix.on_mean_s,
            mix.off_mean_s,
        )
        for i, t in enumerate(arrivals):
            on = np.array([bool(((p[:, 0] <= t) & (t < p[:, 1])).any()) for p in periods])
            if not on.any():  # nobody on: the adapter whose next on period begins first
                starts = [p[p[:, 0] > t, 0].min(initial=np.inf) for p in periods]
                on[int(np.argmin(starts))] = True
            weights[i] = np.where(on, weights[i], 0.0)
    cdf = np.cumsum(weights, axis=1)
    cdf /= cdf[:, -1:]
    u = rng.random(n)  # as Generator.choice draws: one uniform per request, then the CDF
    return np.array([np.searchsorted(c, x, side="right") for c, x in zip(cdf, u, strict=True)])


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
    burstiness: float = 1.0,
    mix: AdapterMix | None = None,
) -> list[WorkloadRequest]:
    """SGLang's ``random`` dataset. ``mix`` (if given) replaces ``distribution`` and
    ``zipf_alpha``."""
    if num_prompts < 1:
        raise ValueError(f"num_prompts={num_prompts} must be at least 1")
    mix = mix or AdapterMix(distribution=distribution, zipf_alpha=zipf_alpha)
    names = lora_names or [None]
    rng = np.random.default_rng(seed)
    in_lens = _lengths(rng, num_prompts, input_len, range_ratio, "random_input_len")
    out_lens = _lengths(rng, num_prompts, output_len, range_ratio, "random_output_len")
    arrivals = arrival_times(rng, num_prompts, request_rate, burstiness)
    picks = pick_adapters(rng, arrivals, len(names), mix, seed)
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


@dataclass(frozen=True)
class TraceRow:
    arrival: float  # seconds after the trace's first arrival
    input_len: int
    output_len: int
    adapter: str | None  # None: drawn


def _column(header: list[str], what: str, path: Path, required: bool = True) -> str | None:
    for name in TRACE_COLUMNS[what]:
        if name in header:
            return name
    if required:
        raise ValueError(
            f"dataset_path={str(path)!r} has no {what} column (one of "
            f"{', '.join(TRACE_COLUMNS[what])}; header: {', '.join(header)})"
        )
    return None


def _arrival_seconds(texts: list[str], path: Path) -> np.ndarray:
    """Seconds as numbers, or ISO date-times as seconds after the earliest (computed in integer
    nanoseconds: a float of seconds since the epoch would lose the sub-microsecond digits)."""
    try:
        return np.array([float(t) for t in texts], np.float64)
    except ValueError:
        pass
    try:
        stamps = np.array([np.datetime64(t.strip(), "ns") for t in texts])
    except ValueError as e:
        raise ValueError(
            f"dataset_path={str(path)!r}: the arrival column holds neither seconds nor ISO "
            f"date-times ({e})"
        ) from None
    return (stamps - stamps.min()).astype(np.int64) / 1e9


def read_trace(path: str | Path) -> list[TraceRow]:
    """The rows of a trace CSV with a header, by arrival (ties in file order), arrivals relative
    to the first. Columns: arrival (``TIMESTAMP``: ISO date-time or seconds, or ``arrival_s``),
    input length (``ContextTokens`` or ``input_len``), output length (``GeneratedTokens`` or
    ``output_len``) and, optionally, the adapter (``adapter`` or ``lora_name``; an empty cell is
    drawn like a missing column). Other columns are ignored."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"dataset_path={str(path)!r} is not a file")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = header
        cols = {w: _column(header, w, path, required=w != "adapter") for w in TRACE_COLUMNS}
        rows, stamps = [], []
        for line, rec in enumerate(reader, start=2):
            try:
                ins, outs = int(rec[cols["input_len"]]), int(rec[cols["output_len"]])
            except (ValueError, TypeError) as e:
                raise ValueError(f"dataset_path={str(path)!r} line {line}: {e}") from None
            if ins < 0 or outs < 0:
                raise ValueError(
                    f"dataset_path={str(path)!r} line {line}: lengths must be >= 0 (got {ins}, "
                    f"{outs})"
                )
            adapter = (rec.get(cols["adapter"]) or "").strip() if cols["adapter"] else ""
            stamps.append(rec[cols["arrival"]] or "")
            rows.append(TraceRow(0.0, ins, outs, adapter or None))
    if not rows:
        raise ValueError(f"dataset_path={str(path)!r} has no rows")
    arrivals = _arrival_seconds(stamps, path)
    if not np.isfinite(arrivals).all():
        raise ValueError(f"dataset_path={str(path)!r}: an arrival is not finite")
    arrivals -= arrivals.min()
    order = np.argsort(arrivals, kind="stable")  # ties keep the file's order
    return [
        TraceRow(float(arrivals[i]), rows[i].input_len, rows[i].output_len, rows[i].adapter)
        for i in order
    ]


def make_trace_workload(
    path: str | Path,
    *,
    num_prompts: int,
    time_scale: float,
    vocab_size: int,
    lora_names: list[str | None],
    context_length: int,
    mix: AdapterMix | None = None,
    seed: int = 1,
) -> list[WorkloadRequest]:
    """The first ``num_prompts`` rows of the trace (by arrival), arrivals multiplied by
    ``time_scale``; the input length clipped to ``[1, context - 1]``, then the output to ``[1,
    context - input]``. A row naming an adapter uses it (it must be one of ``lora_names``); the
    others draw theirs by ``mix``."""
    if num_prompts < 1:
        raise ValueError(f"num_prompts={num_prompts} must be at least 1")
    if not (time_scale > 0 and math.isfinite(time_scale)):
        raise ValueError(f"trace_time_scale={time_scale} must be a positive finite number")
    if context_length < 2:
        raise ValueError(f"context_length={context_length} leaves no room for a request")
    rows = read_trace(path)[:num_prompts]
    names = lora_names or [None]
    for r in rows:
        if r.adapter is not None and r.adapter not in names:
            raise ValueError(
                f"dataset_path={str(path)!r}: adapter {r.adapter!r} is not among the "
                f"adapters served ({', '.join(map(str, names))})"
            )
    rng = np.random.default_rng(seed)
    arrivals = np.array([r.arrival * time_scale for r in rows])
    picks = pick_adapters(rng, arrivals, len(names), mix or AdapterMix(), seed)
    out = []
    for i, r in enumerate(rows):
        ins = min(max(r.input_len, 1), context_length - 1)
        outs = min(max(r.output_len, 1), context_length - ins)
        out.append(
            WorkloadRequest(
                index=i,
                arrival=float(arrivals[i]),
                prompt=rng.integers(0, vocab_size, ins).tolist(),
                output_len=outs,
                lora_name=r.adapter if r.adapter is not None else names[picks[i]],
            )
        )
    return out


def make_sharegpt_workload(
    path: str | Path,
    *,
    tokenizer: Tokenizer,
    num_prompts: int,
    request_rate: float,
    burstiness: float,
    context_length: int,
    lora_names: list[str | None],
    mix: AdapterMix | None = None,
    output_len: int | None = None,
    seed: int = 1,
) -> list[WorkloadRequest]:
    """ShareGPT conversations as SGLang reads them (:mod:`jlora.bench.sharegpt`); fewer usable
    conversations than ``num_prompts`` raises ``ValueError`` saying how many there are."""
    if num_prompts < 1:
        raise ValueError(f"num_prompts={num_prompts} must be at least 1")
    if output_len is not None and output_len < 4:
        raise ValueError(f"sharegpt_output_len={output_len} is too small (SGLang's floor is 4)")
    pairs = read_sharegpt(path)
    random.Random(seed).shuffle(pairs)
    rows: list[tuple[list[int], int]] = []
    for prompt, completion in pairs:
        if len(rows) == num_prompts:
            break
        ids = tokenizer.encode(prompt)
        out = len(tokenizer.encode(completion)) if output_len is None else output_len
        if len(ids) < 2 or out < 2 or len(ids) + out > context_length:
            continue
        rows.append((ids, out))
    if len(rows) < num_prompts:
        raise ValueError(
            f"dataset_path={str(path)!r} has {len(rows)} usable conversations (two turns, "
            f"prompt and output of 2+ tokens, within the context of {context_length}); "
            f"num_prompts={num_prompts} asks for more"
        )
    rng = np.random.default_rng(seed)
    arrivals = arrival_times(rng, num_prompts, request_rate, burstiness)
    names = lora_names or [None]
    picks = pick_adapters(rng, arrivals, len(names), mix or AdapterMix(), seed)
    return [
        WorkloadRequest(
            index=i,
            arrival=float(arrivals[i]),
            prompt=ids,
            output_len=out,
            lora_name=names[picks[i]],
        )
        for i, (ids, out) in enumerate(rows)
    ]
