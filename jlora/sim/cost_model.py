"""How long a step of the real engine takes: a linear model over the step's shape, fitted per
(device, model) and stored as JSON.

The form
--------
The real runner pads every step to a shape bucket (:class:`~jlora.runner.buckets.ShapeBuckets`) and
runs one compiled program per bucket, so most of a step's time follows the *padded* shape; the host
work around it (building the inputs, the scheduler, the engine's bookkeeping) follows the *actual*
sequences. A step's time is ``sum(coef[f] * feature[f])`` plus, when the padded shape is one the
calibration measured, that shape's mean residual (the part of the bucket's time the linear form
misses, e.g. a cache effect at one size). The features (``T``: tokens padded to the prefill
bucket, ``C``: the prefix a prefill step attends to, a full context; ``B``: sequences padded to the
decode bucket, ``P``: tokens of the page-table width bucket):

================  =========================================  ==================================
feature           prefill                                    decode
================  =========================================  ==================================
``const``         1                                          1
``tokens``        ``T``                                      ``B`` (one token per row)
``attention``     ``T * (C + T)`` (dense masked attention)   ``B * P`` (KV gathered, padding too)
``kv_tokens``     0                                          context tokens of the actual rows
``seqs``          actual sequences (host work per sequence)  actual sequences
``adapters``      distinct adapters in the step              distinct adapters in the step
``adapter_rank``  sum of the ranks of those adapters         sum of the ranks of those adapters
``lora_tokens``   sum over tokens of their adapter's rank    sum over rows of their adapter's rank
``waiting``       requests waiting (the scheduler walks      requests waiting
                  them)
================  =========================================  ==================================

Putting an adapter into a device slot holds the host loop for ``load.const + load.rank * r``; the
slot is usable ``load_device.const + load_device.rank * r`` later (the transfer and the write, off
the host loop: a step that uses the slot starts no earlier, the others are not delayed). A cost
model from before loads were asynchronous has no ``load_device`` (0: its ``load`` is the whole,
blocking load). Under ``overlap_schedule`` a decode step launched while the step before it runs
(the engine's lookahead) takes ``max(decode_overlap, decode_host)`` over the same features: the
device's period of back-to-back launched steps, measured so, against the host's share of the step,
which then runs beside it; a cost model without ``decode_overlap`` does not model overlap.
Reading an adapter into host memory again after the host cache dropped it
(``max_loaded_loras``) costs ``host_load.const + host_load.rank * r``. The coefficients are fitted
by non-negative least squares on relative error (:func:`fit_nonneg`) from steps the real engine ran
(:mod:`jlora.sim.calibrate`, ``experiments/calibrate_costs.py``). Which features matter depends on
the LoRA backend: the ``xla`` reference reads every slot whatever the batch holds, so it gets no
adapter terms, and its slot cost sits in the other terms at the calibrated ``max_loras_per_batch``
and ``max_lora_rank`` (a simulation with other values reuses those step times, with a warning).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jlora.runner.base import DecodeSeq, PrefillSeq
from jlora.runner.buckets import ShapeBuckets

FORMAT = 1
FEATURES: tuple[str, ...] = (
    "const",
    "tokens",
    "attention",
    "kv_tokens",
    "seqs",
    "adapters",
    "adapter_rank",
    "lora_tokens",
    "waiting",
)
LOAD_FEATURES: tuple[str, ...] = ("const", "rank")

Shape = tuple[int, int]
"""A padded step shape in tokens: prefill ``(T, C)``, decode ``(B, P)``."""


@dataclass
class StepLayout:
    """What, besides the sequences, decides a step's shape: the engine's buckets and the rank of
    the adapter in each device slot (updated as adapters are loaded)."""

    buckets: ShapeBuckets
    page_size: int
    slot_rank: Sequence[int]

    @property
    def prefix_tokens(self) -> int:
        return self.buckets.prefix_pages * self.page_size


LORA_FEATURES = ("adapters", "adapter_rank", "lora_tokens")


def _adapter_terms(slots: Sequence[int], weights: Sequence[int] | None, rank: Sequence[int]):
    """(distinct adapters, sum of their ranks, sum of rank x weight) over sequences in ``slots``
    (``weights``: tokens per sequence, None for one each)."""
    distinct = {s for s in slots if s >= 0}
    adapter_rank = sum(rank[s] for s in distinct)
    if weights is None:
        lora_tokens = sum(rank[s] for s in slots if s >= 0)
    else:
        lora_tokens = sum(rank[s] * w for s, w in zip(slots, weights, strict=True) if s >= 0)
    return len(distinct), adapter_rank, lora_tokens


def prefill_features(
    seqs: Sequence[PrefillSeq], layout: StepLayout, waiting: int = 0, lora: bool = True
) -> tuple[Shape, tuple[float, ...]]:
    """The padded shape and the features (in :data:`FEATURES` order) of one prefill step
    (``lora=False``: the adapter features are left at 0, for a model that does not use them)."""
    lens = [len(s.tokens) for s in seqs]
    t = layout.buckets.prefill_bucket(sum(lens))
    c = layout.prefix_tokens
    terms = (
        _adapter_terms([s.lora_slot for s in seqs], lens, layout.slot_rank) if lora else (0, 0, 0)
    )
    return (t, c), (1.0, t, t * (c + t), 0.0, len(seqs), *terms, waiting)


def decode_features(
    seqs: Sequence[DecodeSeq], layout: StepLayout, waiting: int = 0, lora: bool = True
) -> tuple[Shape, tuple[float, ...]]:
    """The padded shape and the features (in :data:`FEATURES` order) of one decode step
    (``lora=False``: the adapter features are left at 0, for a model that does not use them)."""
    n = len(seqs)
    most_pages = max([len(s.pages) for s in seqs])
    b, p = layout.buckets.decode_bucket(n, most_pages)
    p *= layout.page_size
    kv_tokens = sum([s.position for s in seqs]) + n
    terms = (
        _adapter_terms([s.lora_slot for s in seqs], None, layout.slot_rank) if lora else (0, 0, 0)
    )
    return (b, p), (1.0, b, b * p, kv_tokens, n, *terms, waiting)


@dataclass(frozen=True)
class CostModel:
    """Coefficients (seconds per unit of each feature) and the measured shapes' residuals.

    Build one with :meth:`load` (a JSON file) or :func:`fit_cost_model`; ``info`` carries what the
    file says about itself (device, model, jax version, date, calibrated configuration, fit errors).
    """

    prefill: Mapping[str, float]
    decode: Mapping[str, float]
    load: Mapping[str, float]
    """Host time of a slot load (the host loop is held for it)."""
    host_load: Mapping[str, float] = field(default_factory=lambda: {"const": 0.0, "rank": 0.0})
    load_device: Mapping[str, float] = field(default_factory=lambda: {"const": 0.0, "rank": 0.0})
    """Time from the end of a load's host part until the slot is usable (transfer and write)."""
    prefill_shapes: Mapping[Shape, float] = field(default_factory=dict)
    """Residual seconds of the linear form at each prefill shape ``(T, C)`` measured."""
    decode_shapes: Mapping[Shape, float] = field(default_factory=dict)
    """Residual seconds of the linear form at each decode shape ``(B, P)`` measured."""
    decode_overlap: Mapping[str, float] = field(default_factory=dict)
    """Device period of a decode step launched while the one before it is still running
    (``overlap_schedule``: the step's dispatch and compute, its host inputs built in the shadow of
    the step before); empty: overlap not calibrated. The host part of such a step runs beside it,
    so an overlapped step takes ``max(decode_overlap, decode_host)``."""
    decode_host: Mapping[str, float] = field(default_factory=dict)
    """Host part of ``decode`` (engine loop, scheduler, driver: the time between two steps),
    which overlap scheduling runs beside the device's step."""
    memory: Mapping[str, float | None] = field(default_factory=dict)
    """The device's memory pool (``bytes_limit``) and what the weights took (``weights_bytes``),
    so that the simulator sizes the KV cache as the device would; empty for a CPU."""
    info: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, coef, names in (
            ("prefill", self.prefill, FEATURES),
            ("decode", self.decode, FEATURES),
            ("load", self.load, LOAD_FEATURES),
            ("host_load", self.host_load, LOAD_FEATURES),
            ("load_device", self.load_device, LOAD_FEATURES),
            ("decode_overlap", self.decode_overlap, FEATURES),
            ("decode_host", self.decode_host, FEATURES),
        ):
            unknown = set(coef) - set(names)
            if unknown:
                raise ValueError(f"cost model {name}: unknown features {sorted(unknown)}")
            for k, v in coef.items():
                if not isinstance(v, int | float) or not math.isfinite(v):
                    raise ValueError(f"cost model {name}.{k}={v!r} must be a finite number")
        # (feature index, coefficient) of the nonzero coefficients, for a short dot product per
        # step (a zero term adds 0.0: leaving it out changes no sum).
        for kind, coef in (
            ("prefill", self.prefill),
            ("decode", self.decode),
            ("decode_overlap", self.decode_overlap),
            ("decode_host", self.decode_host),
        ):
            terms = tuple((i, c) for i, f in enumerate(FEATURES) if (c := coef.get(f, 0.0)))
            object.__setattr__(self, f"_{kind}", terms)
        # Whether the adapter features are worth computing for each kind of step.
        for kind, coef in (
            ("prefill", self.prefill),
            ("decode", self.decode | self.decode_overlap),
        ):
            object.__setattr__(self, f"_{kind}_lora", any(coef.get(f) for f in LORA_FEATURES))

    # ------------------------------------------------------------------ step times
    def prefill_time(self, seqs: Sequence[PrefillSeq], layout: StepLayout, waiting: int = 0):
        """Seconds one prefill step of ``seqs`` takes."""
        shape, feats = prefill_features(seqs, layout, waiting, self._prefill_lora)
        return self._time(self._prefill, feats, self.prefill_shapes.get(shape, 0.0))

    def decode_time(self, seqs: Sequence[DecodeSeq], layout: StepLayout, waiting: int = 0):
        """Seconds one decode step of ``seqs`` takes."""
        shape, feats = decode_features(seqs, layout, waiting, self._decode_lora)
        return self._time(self._decode, feats, self.decode_shapes.get(shape, 0.0))

    @property
    def models_overlap(self) -> bool:
        """Whether overlapped decode steps were calibrated (:attr:`decode_overlap`)."""
        return bool(self.decode_overlap)

    def overlapped_decode_time(
        self, seqs: Sequence[DecodeSeq], layout: StepLayout, waiting: int = 0
    ) -> float:
        """Seconds between the ends of two back-to-back decode steps under overlap scheduling:
        the device's period or the host's work for the step, whichever is longer."""
        if not self.models_overlap:
            raise ValueError("this cost model has no decode_overlap terms (overlap not calibrated)")
        _, feats = decode_features(seqs, layout, waiting, self._decode_lora)
        return max(
            self._time(self._decode_overlap, feats, 0.0), self._time(self._decode_host, feats, 0.0)
        )

    @staticmethod
    def _time(
        terms: tuple[tuple[int, float], ...], feats: tuple[float, ...], residual: float
    ) -> float:
        if len(feats) != len(FEATURES):
            raise ValueError(f"{len(feats)} features, expected {len(FEATURES)}")
        t = residual
        for i, c in terms:
            t += c * feats[i]
        return max(t, 1e-6)

    def time_of(self, sample: Sample) -> float:
        """Seconds the model gives a measured step (from its shape and features)."""
        coef = self._prefill if sample.kind == "prefill" else self._decode
        shapes = self.prefill_shapes if sample.kind == "prefill" else self.decode_shapes
        return self._time(coef, sample.features, shapes.get(sample.shape, 0.0))

    def load_time(self, rank: int) -> float:
        """Seconds a slot load of an adapter of rank ``rank`` (0: clear the slot) holds the host."""
        return max(0.0, self.load.get("const", 0.0) + self.load.get("rank", 0.0) * rank)

    def load_device_time(self, rank: int) -> float:
        """Seconds from the end of a load's host part until the slot is usable."""
        return max(
            0.0, self.load_device.get("const", 0.0) + self.load_device.get("rank", 0.0) * rank
        )

    def host_load_time(self, rank: int) -> float:
        """Seconds to read an adapter of rank ``rank`` into host memory again."""
        return max(0.0, self.host_load.get("const", 0.0) + self.host_load.get("rank", 0.0) * rank)

    # ------------------------------------------------------------------ files
    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            **{k: v for k, v in self.info.items()},
            "prefill": dict(self.prefill),
            "decode": dict(self.decode),
            "load": dict(self.load),
            "host_load": dict(self.host_load),
            "load_device": dict(self.load_device),
            **({"decode_overlap": dict(self.decode_overlap)} if self.decode_overlap else {}),
            **({"decode_host": dict(self.decode_host)} if self.decode_host else {}),
            "prefill_shapes": [[t, c, s] for (t, c), s in sorted(self.prefill_shapes.items())],
            "decode_shapes": [[b, p, s] for (b, p), s in sorted(self.decode_shapes.items())],
            "memory": dict(self.memory),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @classmethod
    def from_json(cls, data: dict, where: str = "cost model") -> CostModel:
        if data.get("format") != FORMAT:
            raise ValueError(f"{where}: format={data.get('format')!r}, expected {FORMAT}")
        try:
            known = {
                "format",
                "prefill",
                "decode",
                "load",
                "host_load",
                "load_device",
                "decode_overlap",
                "decode_host",
                "prefill_shapes",
                "decode_shapes",
                "memory",
            }
            return cls(
                prefill=data["prefill"],
                decode=data["decode"],
                load=data["load"],
                host_load=data.get("host_load", {}),
                load_device=data.get("load_device", {}),
                decode_overlap=data.get("decode_overlap", {}),
                decode_host=data.get("decode_host", {}),
                prefill_shapes={(int(t), int(c)): float(s) for t, c, s in data["prefill_shapes"]},
                decode_shapes={(int(b), int(p)): float(s) for b, p, s in data["decode_shapes"]},
                memory=data.get("memory", {}),
                info={k: v for k, v in data.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: malformed cost model ({type(e).__name__}: {e})") from e

    @classmethod
    def load_file(cls, path: str | Path) -> CostModel:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"cost model file {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"cost model file {str(path)!r} is not valid JSON: {e}") from e
        return cls.from_json(data, where=f"cost model file {str(path)!r}")


# ---------------------------------------------------------------------- fitting
def fit_nonneg(x: np.ndarray, y: np.ndarray, max_iter: int = 200) -> np.ndarray:
    """Non-negative least squares on *relative* error: ``min ||(x @ c - y) / y||``, ``c >= 0``.

    Lawson-Hanson active set on column-normalised features (the times span orders of magnitude,
    so every sample weighs by its relative error). A feature that never varies comes out as 0.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    a = x / y[:, None]
    b = np.ones_like(y)
    norms = np.linalg.norm(a, axis=0)
    live = norms > 0
    a = a[:, live] / norms[live]
    n = a.shape[1]
    passive = np.zeros(n, bool)
    c = np.zeros(n)
    w = a.T @ (b - a @ c)
    for _ in range(max_iter):
        if passive.all() or w[~passive].max(initial=-np.inf) <= 1e-10:
            break
        j = np.argmax(np.where(passive, -np.inf, w))
        passive[j] = True
        while True:
            s = np.zeros(n)
            if passive.any():
                s[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if not passive.any() or s[passive].min() > 0:
                break
            neg = passive & (s <= 0)
            alpha = np.min(c[neg] / (c[neg] - s[neg]))
            c = c + alpha * (s - c)
            passive &= c > 1e-12
            c[~passive] = 0.0
        c = s
        w = a.T @ (b - a @ c)
    out = np.zeros(x.shape[1])
    out[live] = c / norms[live]
    return out


@dataclass(frozen=True)
class Sample:
    """One measured step (median over repetitions), its padded shape and features."""

    kind: str  # prefill / decode
    shape: Shape
    features: tuple[float, ...]
    seconds: float


def fit_step_model(
    samples: Sequence[Sample], use: Sequence[str] = FEATURES
) -> tuple[dict[str, float], dict[Shape, float]]:
    """Coefficients over the features in ``use`` (the others 0) and the median residual at each
    shape, for samples of one kind."""
    cols = [FEATURES.index(f) for f in use]
    x = np.array([[s.features[i] for i in cols] for s in samples])
    y = np.array([s.seconds for s in samples])
    c = fit_nonneg(x, y)
    coef = {f: 0.0 for f in FEATURES} | {f: float(v) for f, v in zip(use, c, strict=True)}
    by_shape: dict[Shape, list[float]] = {}
    for s, p in zip(samples, x @ c, strict=True):
        by_shape.setdefault(s.shape, []).append(s.seconds - p)
    return coef, {k: float(np.mean(v)) for k, v in by_shape.items()}


def fit_errors(
    samples: Sequence[Sample], coef: Mapping[str, float], residual: Mapping[Shape, float]
) -> dict[str, float]:
    """Relative errors of a fit: of the linear form alone (``linear_*``) and with the shapes'
    residuals (``median_rel_err``, ``p90_rel_err``, ``max_rel_err``)."""
    if not samples:
        return {"samples": 0}
    c = np.array([coef.get(f, 0.0) for f in FEATURES])
    y = np.array([s.seconds for s in samples])
    lin = np.array([s.features for s in samples], np.float64) @ c
    full = np.maximum(lin + np.array([residual.get(s.shape, 0.0) for s in samples]), 1e-6)
    rel_lin, rel = np.abs(lin / y - 1), np.abs(full / y - 1)
    return {
        "samples": len(samples),
        "linear_median_rel_err": float(np.median(rel_lin)),
        "linear_max_rel_err": float(rel_lin.max()),
        "median_rel_err": float(np.median(rel)),
        "p90_rel_err": float(np.percentile(rel, 90)),
        "max_rel_err": float(rel.max()),
    }


def fit_load_model(ranks: Sequence[int], seconds: Sequence[float]) -> dict[str, float]:
    """``const + rank * r`` by non-negative least squares."""
    x = np.array([[1.0, float(r)] for r in ranks])
    c = fit_nonneg(x, np.asarray(seconds, np.float64))
    return {"const": float(c[0]), "rank": float(c[1])}
