"""Calibration: time the real engine's steps and fit a :class:`CostModel`.

Three measurements, on a real engine that has compiled its buckets:

1. **Designed steps** (:func:`measure_steps`): the runner's ``prefill`` and ``decode`` on synthetic
   sequences over every bucket of the engine's setting, with the actual sizes inside each bucket
   varied (tokens, batch, contexts, sequences per step) and three adapter mixes (none, one adapter,
   every slot), so that padded and actual terms, and adapter terms, can be told apart. Timed
   round-robin (each step follows a different one, as in serving), median over repetitions. Pages
   come from the engine's page pool, distinct per sequence where the pool allows.
2. **Adapter loads** (:func:`measure_loads`): ``load_lora`` into a slot (the time it holds the
   host, and the time until the slot is usable), and reading a dummy adapter into host memory
   (which lays it out for the slots), for several ranks.
3. **Serving** (:func:`measure_serving`): a burst of requests through the benchmark driver and the
   engine, the runner wrapped to time every step where it ran (caches as serving leaves them),
   and the host time between two steps (engine loop, scheduler, driver; not loads, not sleeps)
   against the step's sequences and the requests waiting.

:func:`fit_cost_model`: the device terms from the steps of (1) and (3) together, by non-negative
least squares on relative error (the adapter terms kept only if they explain the designed mixes),
with each measured shape's mean residual, so that sums of steps come out right; the host terms
(``const``, ``seqs``, ``waiting``) fitted on (3) and added; the loads' host part fitted on (2) and
(3), their device part on (2). The engine stays usable: its slots hold what its adapter pool says.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import numpy as np

from jlora.bench.driver import run_workload
from jlora.bench.workload import make_random_workload
from jlora.engine import Engine
from jlora.kernels.types import NO_SLOT
from jlora.runner.base import FED_BACK, DecodeSeq, PrefillSeq
from jlora.sampling_params import SamplingParams
from jlora.sim.cost_model import (
    FEATURES,
    LORA_FEATURES,
    CostModel,
    Sample,
    StepLayout,
    decode_features,
    fit_errors,
    fit_load_model,
    fit_step_model,
    prefill_features,
)

MIXES = ("none", "one", "all")
LOAD_BUILD = (
    "asynchronous slot loads from the slot layout (issue #17): load = the host part, load_device "
    "= from then until the slot is usable"
)
"""What a cost model's ``info["load_terms"]`` says of loads measured by this build (a model
without it measured the loads before #17: blocking, the whole load in ``load``)."""
DEVICE_FEATURES = ("const", "tokens", "attention", "kv_tokens", "seqs")
HOST_FEATURES = ("const", "seqs", "waiting")


@dataclass(frozen=True, kw_only=True)
class Design:
    """Which steps calibration times."""

    reps: int = 5
    """Timed repetitions of each step (the median is kept)."""
    warm: int = 2
    """Untimed runs of each step before."""
    fills: tuple[float, ...] = (1.0, 0.55, 0.15)
    """Actual size inside each bucket, as a fraction of the bucket (at least one past the bucket
    below): prefill tokens, decode batch and decode context."""
    prefill_seqs: tuple[int, ...] = (1, 8)
    """Sequences per prefill step (capped by the tokens and the step's rows)."""
    mixes: tuple[str, ...] = MIXES
    """Adapter mixes: ``none``, ``one`` (every sequence of the highest-rank adapter), ``all``
    (sequences spread over every slot)."""
    load_ranks: tuple[int, ...] = (4, 8, 16)
    """Ranks of the adapters timed into a slot (capped by ``max_lora_rank``)."""
    load_reps: int = 3
    serving_requests: int = 96
    """Requests of the serving run (every registered adapter and the base model, uniformly)."""
    serving_rate: float = float("inf")
    """Their Poisson arrival rate (``inf``: all at once, the queue drains from full to empty)."""
    serving_max_len: int = 128
    """Longest prompt and output of the serving run (at most half the context)."""
    seed: int = 12345
    """Seed of the serving run's workload."""
    overlap_steps: int = 8
    """Back-to-back launched decode steps timed per designed decode step, where the runner
    overlaps (``CostModel.decode_overlap``; 0: not measured)."""


def device_tag() -> str:
    """A short name of the device: ``cpu``, ``h100``, ``h200``, ``a100``... (cost-model files)."""
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return "cpu"
    kind = dev.device_kind.lower()
    m = re.search(r"\b([a-z]\d{2,3}[a-z]?)\b", kind)
    return m[1] if m else re.sub(r"[^a-z0-9]+", "-", kind).strip("-")


Timer = Callable[[], float]


def _split(total: int, parts: int) -> list[int]:
    q, r = divmod(total, parts)
    return [q + (i < r) for i in range(parts)]


def _sizes(buckets: Sequence[int], fills: Sequence[float]) -> list[tuple[int, int]]:
    """(bucket, actual size) pairs: each fill of each bucket, above the bucket below."""
    out = []
    for i, top in enumerate(buckets):
        low = buckets[i - 1] + 1 if i else 1
        for f in fills:
            n = min(top, max(low, round(top * f)))
            if (top, n) not in out:
                out.append((top, n))
    return out


def _seat(engine: Engine) -> list[tuple[int, int]]:
    """Put the registered adapters with the highest ranks into every slot; (slot, rank)."""
    pool = engine.adapters
    names = sorted(pool.paths, key=lambda n: (-pool.get(n).rank, n))[: pool.num_slots]
    seated = []
    for name in names:
        slot, must_load = pool.take_slot(name, {n for n in names if n != name})
        if must_load:
            engine.runner.load_lora(slot, pool.get(name))
        seated.append((slot, pool.get(name).rank))
    return seated


def _mix_slots(mix: str, n: int, seated: list[tuple[int, int]]) -> list[int]:
    if mix == "none" or not seated:
        return [NO_SLOT] * n
    if mix == "one":
        return [seated[0][0]] * n
    return [seated[i % len(seated)][0] for i in range(n)]


def _overlapped_period(runner, seqs: list[DecodeSeq], steps: int, timer: Timer) -> float:
    """Seconds per step of ``steps`` decode steps each launched while the one before runs, as
    overlap scheduling runs them (their input tokens fed back on the device)."""
    fed_back = [dataclasses.replace(s, token=FED_BACK) for s in seqs]
    runner.launch_decode(seqs, None).tokens()  # warm: the first launch after other steps
    t = timer()
    launched = runner.launch_decode(seqs, None)
    for _ in range(steps):
        following = runner.launch_decode(fed_back, launched)
        launched.tokens()
        launched = following
    launched.tokens()
    return (timer() - t) / (steps + 1)


def measure_steps(
    engine: Engine,
    design: Design,
    timer: Timer = time.perf_counter,
    overlapped: list[Sample] | None = None,
) -> list[Sample]:
    """Time the real runner's steps over the design (see the module docstring).

    The steps are timed round-robin (every step once, then every step again...), so that each
    timing follows a different step, as in serving, rather than a copy of itself. With
    ``overlapped`` (a list), each designed decode step is also timed back to back under overlap
    (:attr:`Design.overlap_steps`) and its sample appended there.
    """
    runner, b, ps = engine.runner, engine.buckets, engine.config.page_size
    layout = StepLayout(b, ps, runner.slots.slot_rank)
    seated = _seat(engine)
    pool = engine.pages
    pages = pool.alloc(pool.num_free)
    rng = np.random.default_rng(0)
    vocab = engine.model_config.vocab_size
    params = SamplingParams(max_new_tokens=1 << 20, ignore_eos=True)
    steps: list[tuple[str, list]] = []

    def take(n: int, offset: int) -> tuple[int, ...]:
        return tuple(pages[(offset + i) % len(pages)] for i in range(n))

    for _, total in _sizes(b.prefill_tokens, design.fills):
        for nseq in sorted({min(k, total, b.prefill_rows) for k in design.prefill_seqs}):
            for mix in design.mixes:
                seqs, off = [], 0
                slots = _mix_slots(mix, nseq, seated)
                for i, (n, slot) in enumerate(zip(_split(total, nseq), slots, strict=True)):
                    tokens = rng.integers(3, vocab, n).astype(np.int32)
                    seqs.append(
                        PrefillSeq(i, tokens, 0, take(-(-n // ps), off), slot, True, params, i, 0)
                    )
                    off += -(-n // ps)
                steps.append(("prefill", seqs))
    for _, batch in _sizes(b.decode_batch, design.fills):
        for _, ctx in _sizes([p * ps for p in b.kv_pages], design.fills):
            ctx = min(ctx, engine.context_length)
            per_seq = -(-ctx // ps)
            for mix in design.mixes:
                seqs = [
                    DecodeSeq(i, 5, ctx - 1, take(per_seq, i * per_seq), slot, params, i, 1)
                    for i, slot in enumerate(_mix_slots(mix, batch, seated))
                ]
                steps.append(("decode", seqs))
    times: list[list[float]] = [[] for _ in steps]
    try:
        for rep in range(design.warm + design.reps):
            for (kind, seqs), record in zip(steps, times, strict=True):
                call = runner.prefill if kind == "prefill" else runner.decode
                t = timer()
                call(seqs)
                if rep >= design.warm:
                    record.append(timer() - t)
        if overlapped is not None:
            for kind, seqs in steps:
                if kind == "decode":
                    shape, feats = decode_features(seqs, layout)
                    period = _overlapped_period(runner, seqs, design.overlap_steps, timer)
                    overlapped.append(Sample(kind, shape, feats, period))
    finally:
        pool.free(pages)
    samples = []
    for (kind, seqs), record in zip(steps, times, strict=True):
        features = prefill_features if kind == "prefill" else decode_features
        shape, feats = features(seqs, layout)
        samples.append(Sample(kind, shape, feats, statistics.median(record)))
    return samples


@dataclass(frozen=True)
class LoadSamples:
    """(rank, seconds) samples of adapter loads."""

    slot: list[tuple[int, float]]
    """The host part of a slot load (``load_lora`` returning)."""
    device: list[tuple[int, float]]
    """From then until the slot is usable (its buffers written and ready)."""
    host: list[tuple[int, float]]
    """Reading a dummy adapter into host memory (laid out for the slots)."""


def time_slot_load(runner, slot: int, adapter, timer: Timer = time.perf_counter):
    """(host seconds, device seconds) of one load of ``adapter`` into ``slot`` of the real runner:
    the host time of ``load_lora`` and of starting the transfer (which the engine pays right after
    dispatching a step), then the time until a step using the slot could start (its write issued
    and the buffers ready)."""
    t0 = timer()
    runner.load_lora(slot, adapter)
    runner.slots.send_queued([slot])  # the transfer's start: host time too, wherever it is paid
    t1 = timer()
    jax.block_until_ready(runner.slots.layers_for([slot]))
    return t1 - t0, timer() - t1


def measure_loads(engine: Engine, design: Design, timer: Timer = time.perf_counter) -> LoadSamples:
    """Slot loads (host and device part) and host reads, for each rank of the design."""
    out = LoadSamples([], [], [])
    ranks = sorted({min(r, engine.config.max_lora_rank) for r in design.load_ranks})
    runner = engine.runner
    for rank in ranks:
        name = f"__calibration_r{rank}"
        t = timer()
        adapter = engine._load_adapter(name, f"dummy:{rank}")
        out.host.append((rank, timer() - t))
        for _ in range(design.load_reps - 1):
            t = timer()
            engine._load_adapter(name, f"dummy:{rank}")
            out.host.append((rank, timer() - t))
        time_slot_load(runner, 0, adapter, timer)  # warm
        times = [time_slot_load(runner, 0, adapter, timer) for _ in range(design.load_reps)]
        out.slot.append((rank, statistics.median(h for h, _ in times)))
        out.device.append((rank, statistics.median(d for _, d in times)))
    # Back to what the adapter pool says each slot holds.
    for slot, name in enumerate(engine.adapters.occupant):
        engine.runner.load_lora(slot, None if name is None else engine.adapters.get(name))
    jax.block_until_ready(runner.slots.layers)
    return out


class _SleepCounter:
    """The engine's clock, counting the seconds the driver slept (idle, not host work)."""

    def __init__(self, clock, timer: Timer):
        self.clock, self.timer, self.slept = clock, timer, 0.0

    def now(self) -> float:
        return self.clock.now()

    def sleep_until(self, t: float) -> None:
        before = self.timer()
        self.clock.sleep_until(t)
        self.slept += self.timer() - before


class _Recorder:
    """Wraps the real runner: times each call, and the host time since the previous step."""

    def __init__(self, engine: Engine, timer: Timer, sleeps: _SleepCounter):
        self.inner, self.engine, self.timer, self.sleeps = engine.runner, engine, timer, sleeps
        self.layout = StepLayout(
            engine.buckets, engine.config.page_size, self.inner.slots.slot_rank
        )
        self.steps: list[Sample] = []
        self.host: list[Sample] = []
        self.loads: list[tuple[int, float]] = []
        self._last_end: float | None = None
        self._mark = 0.0  # loads and sleeps since the last step ended

    def _step(self, kind: str, seqs, call):
        shape, feats = (prefill_features if kind == "prefill" else decode_features)(
            seqs, self.layout
        )
        waiting = len(self.engine.scheduler.waiting)
        t0 = self.timer()
        out = call(seqs)
        t1 = self.timer()
        self.steps.append(Sample(kind, shape, feats, t1 - t0))
        if self._last_end is not None:
            gap = t0 - self._last_end - self._mark - self.sleeps.slept
            host = tuple(
                {"const": 1.0, "seqs": float(len(seqs)), "waiting": float(waiting)}.get(f, 0.0)
                for f in FEATURES
            )
            self.host.append(Sample(kind, (0, 0), host, max(gap, 1e-7)))
        self._last_end, self._mark, self.sleeps.slept = self.timer(), 0.0, 0.0
        return out

    def prefill(self, seqs):
        return self._step("prefill", seqs, self.inner.prefill)

    def decode(self, seqs):
        return self._step("decode", seqs, self.inner.decode)

    def host_adapter(self, adapter):
        return self.inner.host_adapter(adapter)

    def load_lora(self, slot, adapter):
        t0 = self.timer()
        self.inner.load_lora(slot, adapter)
        dt = self.timer() - t0
        self.loads.append((0 if adapter is None else adapter.rank, dt))
        self._mark += dt

    def take_failed_loads(self):
        return self.inner.take_failed_loads()

    def score(self, seqs):
        return self.inner.score(seqs)

    def warmup(self):
        return self.inner.warmup()


def measure_serving(
    engine: Engine, design: Design, timer: Timer = time.perf_counter
) -> tuple[list[Sample], list[Sample], list[tuple[int, float]]]:
    """Serve a burst of requests with the real engine, timing every step where it ran; returns
    (step samples, host samples, slot loads). Host time is the time between two steps that was
    neither a step, an adapter load nor the driver sleeping: the engine loop, the scheduler and
    the driver, against the sequences of the next step and the requests waiting."""
    sleeps = _SleepCounter(engine.clock, timer)
    recorder = _Recorder(engine, timer, sleeps)
    runner, clock, overlap = engine.runner, engine.clock, engine._overlap
    # Whole steps, one at a time (the overlapped period is timed by measure_steps).
    engine.runner, engine.clock, engine._overlap = recorder, sleeps, False
    n = min(design.serving_max_len, engine.context_length // 2)
    work = make_random_workload(
        num_prompts=design.serving_requests,
        request_rate=design.serving_rate,
        input_len=n,
        output_len=n,
        range_ratio=0.0,
        vocab_size=engine.model_config.vocab_size,
        lora_names=sorted(engine.config.lora_paths) + [None],
        seed=design.seed,
    )
    try:
        run_workload(engine, work, progress=False, desc="calibration")
    finally:
        engine.runner, engine.clock, engine._overlap = runner, clock, overlap
    kinds = {s.kind for s in recorder.steps}
    if kinds != {"prefill", "decode"}:
        raise RuntimeError(f"the serving run timed only {sorted(kinds)} steps")
    return recorder.steps, recorder.host, recorder.loads


def _rms_rel(samples: list[Sample], coef: dict, residual: dict) -> float:
    c = np.array([coef.get(f, 0.0) for f in FEATURES])
    rel = [
        (float(np.dot(c, s.features)) + residual.get(s.shape, 0.0)) / s.seconds - 1 for s in samples
    ]
    return float(np.sqrt(np.mean(np.square(rel)))) if rel else 0.0


def _mean_matched(coef: dict, samples: list[Sample]) -> dict:
    """``coef`` with its constant shifted by the samples' mean residual (kept >= 0): the fit is on
    relative error, but sums of steps follow the mean (as the shapes' residuals do for the device
    terms)."""
    c = np.array([coef[f] for f in FEATURES])
    shift = float(np.mean([s.seconds - np.dot(c, s.features) for s in samples]))
    return coef | {"const": max(0.0, coef["const"] + shift)}


def fit_cost_model(
    design: list[Sample],
    serving: list[Sample],
    host: list[Sample],
    loads: LoadSamples,
    info: dict,
    memory: dict,
    overlapped: list[Sample] = (),
) -> CostModel:
    """The device terms fitted on the step samples (designed and served), the host terms fitted
    on the host samples and added on top, the loads fitted on their own (``loads.slot`` with the
    served loads' host times). With ``overlapped`` decode samples, the overlapped period
    (``decode_overlap``, on the decode step's features) and the decode host share
    (``decode_host``)."""
    coefs, shapes, fit = {}, {}, {}
    for kind in ("prefill", "decode"):
        mine = [s for s in design + serving if s.kind == kind]
        coef, residual = fit_step_model(mine, DEVICE_FEATURES)
        # The adapter terms only if they explain the designed mixes (a backend whose LoRA cost
        # does not depend on the batch's adapters gets none, rather than noise).
        with_lora = fit_step_model(mine, DEVICE_FEATURES + LORA_FEATURES)
        mixes = [s for s in design if s.kind == kind]
        if _rms_rel(mixes, *with_lora) < 0.9 * _rms_rel(mixes, coef, residual):
            coef, residual = with_lora
        host_kind = [s for s in host if s.kind == kind]
        host_coef = _mean_matched(fit_step_model(host_kind, HOST_FEATURES)[0], host_kind)
        fit[kind] = {
            "design": fit_errors([s for s in design if s.kind == kind], coef, residual),
            "serving": fit_errors([s for s in serving if s.kind == kind], coef, residual),
            "host": fit_errors([s for s in host if s.kind == kind], host_coef, {}),
            "device_coef": dict(coef),
            "host_coef": dict(host_coef),
        }
        coefs[kind] = {f: coef[f] + host_coef[f] for f in FEATURES}
        shapes[kind] = residual
    fit.update(load_fit(loads))
    overlap_terms = {}
    if overlapped:
        features = DEVICE_FEATURES + tuple(
            f for f in LORA_FEATURES if fit["decode"]["device_coef"].get(f)
        )
        coef = _mean_matched(fit_step_model(list(overlapped), features)[0], list(overlapped))
        fit["decode_overlap"] = fit_errors(list(overlapped), coef, {})
        overlap_terms = {"decode_overlap": coef, "decode_host": fit["decode"]["host_coef"]}
    model = CostModel(
        **overlap_terms,
        prefill=coefs["prefill"],
        decode=coefs["decode"],
        **load_terms(loads),
        prefill_shapes=shapes["prefill"],
        decode_shapes=shapes["decode"],
        memory=memory,
        info=info,
    )
    fit["design_samples"] = [[s.kind, *s.shape, s.seconds, model.time_of(s)] for s in design]
    return dataclasses.replace(model, info=info | {"fit": fit})


def load_terms(loads: LoadSamples) -> dict[str, dict[str, float]]:
    """The cost model's ``load``, ``load_device`` and ``host_load`` fitted on ``loads``."""
    return {
        "load": fit_load_model(*zip(*loads.slot, strict=True)),
        "load_device": fit_load_model(*zip(*loads.device, strict=True)),
        "host_load": fit_load_model(*zip(*loads.host, strict=True)),
    }


def load_fit(loads: LoadSamples) -> dict[str, dict]:
    """The samples behind :func:`load_terms`, for the cost model's ``info["fit"]``."""
    return {
        "load": {"samples": [[r, s] for r, s in loads.slot]},
        "load_device": {"samples": [[r, s] for r, s in loads.device]},
        "host_load": {"samples": [[r, s] for r, s in loads.host]},
    }


def calibrate(
    engine: Engine,
    design: Design | None = None,
    *,
    timer: Timer = time.perf_counter,
    log: Callable[[str], None] = print,
) -> CostModel:
    """Measure the engine (a real one, warmed up) and fit its cost model. ``timer`` reads seconds
    (wall time by default; the fidelity test passes the process CPU time, see
    :class:`~jlora.sim.fidelity.CpuClock`)."""
    design = design or Design()
    t0 = time.perf_counter()
    overlaps = design.overlap_steps and getattr(engine.runner, "supports_overlap", False)
    overlapped: list[Sample] | None = [] if overlaps else None
    steps = measure_steps(engine, design, timer, overlapped)
    log(
        f"designed steps: {len(steps)} (and {len(overlapped or [])} overlapped) timed in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    t1 = time.perf_counter()
    loads = measure_loads(engine, design, timer)
    log(f"loads: {len(loads.slot)} ranks timed in {time.perf_counter() - t1:.1f} s")
    t2 = time.perf_counter()
    served, host, served_loads = measure_serving(engine, design, timer)
    log(f"serving: {len(served)} steps timed in {time.perf_counter() - t2:.1f} s")
    dev = jax.devices()[0]
    stats = dev.memory_stats() or {}
    cfg = engine.config
    info = {
        "device": device_tag(),
        "device_kind": dev.device_kind,
        "model": cfg.model,
        "jax": jax.__version__,
        "date": datetime.date.today().isoformat(),
        "calibrated_with": {
            "dtype": cfg.dtype,
            "lora_backend": cfg.resolved_lora_backend(jax.default_backend()),
            "graph_scheduling": cfg.graph_scheduling,
            "stage_host_inputs": cfg.resolved_stage_host_inputs(jax.default_backend()),
            "max_loras_per_batch": cfg.max_loras_per_batch,
            "max_lora_rank": cfg.max_lora_rank,
            "page_size": cfg.page_size,
            "context_length": engine.context_length,
            "max_running_requests": cfg.max_running_requests,
            "max_prefill_tokens": cfg.max_prefill_tokens,
            "prefill_token_buckets": list(engine.buckets.prefill_tokens),
            "decode_batch_buckets": list(engine.buckets.decode_batch),
            "kv_pages_buckets": list(engine.buckets.kv_pages),
            "kv_pages": engine.pages.num_pages,
            "overlap_schedule": bool(overlapped),
        },
        "calibration_seconds": round(time.perf_counter() - t0, 1),
        "load_terms": LOAD_BUILD,
    }
    memory = {"bytes_limit": stats["bytes_limit"]} if "bytes_limit" in stats else {}
    loads = dataclasses.replace(loads, slot=loads.slot + served_loads)
    return fit_cost_model(steps, served, host, loads, info, memory, overlapped or [])
