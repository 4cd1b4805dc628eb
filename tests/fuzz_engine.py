"""A randomized run of the real engine (issue #19): seeded streams of operations against the tiny
model on the CPU under a fake clock, with the engine's promises checked after every operation.

Operations: good requests (greedy and seeded sampling, stop tokens, chunked prompts), steps,
aborts, clock jumps, adapter loads and unloads at run time (PEFT directories and ``dummy:RANK``),
corrupted adapters, adapter directories that vanish and come back (after host-cache eviction),
scores, ``generate()`` / ``stream()`` while other requests are in flight, and bad input of every
kind. What is checked (each failure is a :class:`Violation`, the run goes on):

* every request ends exactly once (from ``step()``, ``abort()``, ``generate()`` or ``stream()``),
  with ``error`` only if its adapter's files were taken away during the run;
* the greedy tokens of every request equal those of the same request alone (an oracle engine
  without memory pressure runs it by itself); an aborted or failed one's are a prefix of them;
* every unfinished request is in exactly one queue, matching its status; a finished one holds no
  page; pages held plus pages free are the capacity; the adapter pool's slot table is consistent
  and every running request's adapter has a slot; when the engine is empty every page is free;
* bad input raises ``ValueError`` (``TypeError`` for a wrong type) naming the value, and changes
  nothing; a corrupted adapter is refused at load and changes nothing;
* progress: while work is left, some request gains a token or ends within ``stall_steps`` steps.

Run by ``tests/test_randomized.py`` (a few hundred operations per configuration) and, longer, by
``experiments/fuzz_engine.py``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from jlora.adapters.dummy import random_adapter, save_peft_adapter
from jlora.clock import FakeClock
from jlora.config import EngineConfig
from jlora.engine import Engine
from jlora.sampling_params import SamplingParams
from jlora.scheduler.request import Status
from models.presets import get_preset

TINY = get_preset("tiny")
CONTEXT = 64
BASE = dict(
    model="tiny",
    dtype="float32",
    max_lora_rank=8,
    context_length=CONTEXT,
    page_size=4,
    max_running_requests=6,
    max_prefill_tokens=32,
    prefill_token_buckets=(32,),
    decode_batch_buckets=(8,),
    kv_len_buckets=(CONTEXT,),
    warmup=False,
)
DUMMY = {"a": "dummy:4", "b": "dummy:8", "c": "dummy:2", "d": "dummy:8"}


@dataclasses.dataclass(frozen=True)
class FuzzConfig:
    """One configuration of the engine under test, and how much of each operation it gets."""

    name: str
    engine: dict
    """EngineConfig fields over :data:`BASE` (``lora_paths`` defaults to :data:`DUMMY`)."""
    peft: int = 0
    """Adapters written as PEFT directories (``p0``...), added to ``lora_paths``."""
    vanish: bool = False
    """Take PEFT directories away and bring them back (with host-cache eviction: the adapter
    must be read again inside ``step()``)."""
    ops_scale: float = 1.0
    """Share of the run's operations (the Pallas path in interpret mode is slow on the CPU)."""


CONFIGS: tuple[FuzzConfig, ...] = (
    FuzzConfig("one_context_kv", dict(max_total_tokens=CONTEXT, max_loras_per_batch=2)),
    FuzzConfig("fewer_slots", dict(max_loras_per_batch=1, chunked_prefill_size=12)),
    FuzzConfig(
        "sglang_10ms",
        dict(max_loras_per_batch=2, lora_drain_policy="sglang", lora_drain_wait_threshold=0.01),
    ),
    FuzzConfig(
        "reserve_30ms",
        dict(max_loras_per_batch=2, lora_drain_policy="reserve", lora_drain_wait_threshold=0.03),
    ),
    FuzzConfig(
        "preempt_10ms",
        dict(
            max_loras_per_batch=2,
            lora_drain_policy="preempt",
            lora_drain_wait_threshold=0.01,
            max_total_tokens=3 * CONTEXT,
        ),
    ),
    FuzzConfig(
        "preempt_50ms_overlap",
        dict(
            max_loras_per_batch=2,
            lora_drain_policy="preempt",
            lora_drain_wait_threshold=0.05,
            overlap_schedule=True,
        ),
    ),
    FuzzConfig(
        "fair_20ms_chunked",
        dict(
            max_loras_per_batch=2,
            lora_drain_policy="fair",
            lora_drain_wait_threshold=0.02,
            chunked_prefill_size=8,
            max_total_tokens=3 * CONTEXT,
        ),
    ),
    FuzzConfig(
        "fair_50ms_overlap",
        dict(
            max_loras_per_batch=2,
            lora_drain_policy="fair",
            lora_drain_wait_threshold=0.05,
            overlap_schedule=True,
        ),
    ),
    FuzzConfig(
        "overlap_chunked_8",
        dict(max_loras_per_batch=3, overlap_schedule=True, chunked_prefill_size=8),
    ),
    FuzzConfig(
        "chunked_24_base_slot",
        dict(max_loras_per_batch=2, chunked_prefill_size=24, base_model_uses_slot=True),
    ),
    FuzzConfig(
        "host_eviction_vanish",
        dict(max_loras_per_batch=2, max_loaded_loras=2, lora_eviction_policy="fifo"),
        peft=3,
        vanish=True,
    ),
    FuzzConfig(
        "pallas_staged",
        dict(
            max_loras_per_batch=2,
            lora_backend="pallas",
            attention_backend="pallas",
            stage_host_inputs=True,
        ),
        ops_scale=0.15,
    ),
)


@dataclasses.dataclass
class Violation:
    config: str
    op: int
    what: str

    def __str__(self) -> str:
        return f"[{self.config} op {self.op}] {self.what}"


@dataclasses.dataclass
class Report:
    config: str
    ops: Counter = dataclasses.field(default_factory=Counter)
    requests: int = 0
    finish_reasons: Counter = dataclasses.field(default_factory=Counter)
    greedy_checked: int = 0
    violations: list[Violation] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def num_ops(self) -> int:
        return sum(self.ops.values())

    def as_dict(self) -> dict:
        return {
            "config": self.config,
            "ops": self.num_ops,
            "ops_by_kind": dict(self.ops),
            "requests": self.requests,
            "finish_reasons": dict(self.finish_reasons),
            "greedy_checked": self.greedy_checked,
            "violations": [str(v) for v in self.violations],
            "seconds": round(self.seconds, 1),
        }


class Stalled(Exception):
    """No request made progress for too many steps (a livelock)."""


class Oracle:
    """Each request alone: an engine without memory pressure runs one request at a time."""

    def __init__(self, paths: dict[str, str]):
        self.engine = Engine(
            EngineConfig(
                **{**BASE, "max_loras_per_batch": 1, "max_total_tokens": 4 * CONTEXT},
                lora_paths=paths,
            )
        )
        self.cache: dict[tuple, list[int]] = {}

    def alone(self, prompt, params: SamplingParams, name: str | None, path: str | None):
        key = (tuple(prompt), params, name, path)
        if key not in self.cache:
            engine = self.engine
            if name is not None and engine.adapters.paths.get(name) != path:
                if engine.adapters.known(name):
                    engine.unload_lora_adapter(name)
                engine.load_lora_adapter(name, path)
            (out,) = engine.generate([list(prompt)], params, name)
            self.cache[key] = out.token_ids
        return self.cache[key]


def _corrupt(root: Path) -> dict[str, str]:
    """PEFT directories the engine must refuse at load, by what is wrong with them."""
    out = {}
    good = random_adapter("good", TINY, 4, seed=11)
    for kind in ("nan", "inf", "truncated", "empty", "regex", "latin1", "no_weights"):
        path = save_peft_adapter(good, root / f"corrupt_{kind}")
        weights, config = path / "adapter_model.safetensors", path / "adapter_config.json"
        if kind in ("nan", "inf"):
            bad = random_adapter("bad", TINY, 4, seed=12)
            next(iter(bad.modules.values())).b[0, 0] = np.nan if kind == "nan" else -np.inf
            save_peft_adapter(bad, path)
        elif kind == "truncated":
            weights.write_bytes(weights.read_bytes()[:100])
        elif kind == "empty":
            weights.write_bytes(b"")
        elif kind == "regex":
            cfg = json.loads(config.read_text())
            cfg["alpha_pattern"] = {"q_proj[": 8}
            config.write_text(json.dumps(cfg))
        elif kind == "latin1":
            config.write_bytes(b'{"r": 4, "note": "caf\xe9"}')
        else:
            weights.unlink()
        out[kind] = str(path)
    return out


class Fuzzer:
    """One configuration's run: ``run(num_ops)`` drives the engine, checking as it goes."""

    def __init__(self, cfg: FuzzConfig, seed: int, root: Path, oracle: Oracle, stall_steps=400):
        self.cfg, self.rng, self.root, self.oracle = cfg, np.random.default_rng(seed), root, oracle
        self.report = Report(cfg.name)
        self.stall_steps = stall_steps
        self.peft_paths = {
            f"p{i}": str(
                save_peft_adapter(
                    random_adapter(f"p{i}", TINY, 4 + 2 * (i % 3), seed=100 + i),
                    root / cfg.name / f"p{i}",
                )
            )
            for i in range(cfg.peft)
        }
        paths = {**DUMMY, **self.peft_paths}
        self.clock = FakeClock()
        self.engine = Engine(
            EngineConfig(**{**BASE, **cfg.engine, "lora_paths": paths}), clock=self.clock
        )
        self.corrupt = _corrupt(root / cfg.name)
        self.initial_free = self.engine.pages.num_free
        self.ended: Counter = Counter()  # rid -> times it was reported ended
        self.adapter_path: dict[int, str | None] = {}  # rid -> its adapter's path at arrival
        self.vanished: set[str] = set()  # adapters whose files were taken away at some point
        self.gone: dict[str, Path] = {}  # adapter -> where its directory is hidden now
        self.runtime = 0  # adapters loaded at run time so far
        self.since_progress = 0
        self.tokens_ended = 0  # tokens of the requests that ended (a request's output only grows)
        self.tokens_seen = 0
        self.op = 0

    # ------------------------------------------------------------------ the run
    def run(self, num_ops: int) -> Report:
        t0 = time.perf_counter()
        kinds, weights = zip(*self._mix(), strict=True)
        p = np.asarray(weights, float) / sum(weights)
        try:
            for self.op in range(num_ops):
                kind = kinds[self.rng.choice(len(kinds), p=p)]
                self.report.ops[kind] += 1
                getattr(self, f"op_{kind}")()
                self.check_invariants()
            self.finish()
        except Stalled as e:
            self.violation(f"no progress: {e}")
        self.report.seconds = time.perf_counter() - t0
        return self.report

    def _mix(self) -> list[tuple[str, float]]:
        mix = [
            ("add", 30),
            ("step", 40),
            ("abort", 4),
            ("clock", 5),
            ("bad_request", 6),
            ("bad_params", 3),
            ("bad_call", 3),
            ("load", 2),
            ("unload", 2),
            ("load_corrupt", 2),
            ("score", 2),
            ("generate", 1),
            ("stream", 1),
        ]
        if self.cfg.vanish:
            mix.append(("vanish", 3))
        return mix

    def violation(self, what: str) -> None:
        self.report.violations.append(Violation(self.cfg.name, self.op, what))

    # ------------------------------------------------------------------ operations
    def _request(self) -> tuple[list[int], SamplingParams, str | None]:
        rng = self.rng
        names = [None, *self.engine.adapters.paths]
        name = names[rng.integers(len(names))]
        n = int(rng.integers(1, 33))
        prompt = rng.integers(3, TINY.vocab_size, n).tolist()
        stops = tuple(int(t) for t in rng.integers(3, TINY.vocab_size, rng.integers(0, 3)))
        kw = dict(max_new_tokens=int(rng.integers(1, 11)), stop_token_ids=stops)
        kw["ignore_eos"] = bool(rng.random() < 0.5)
        if rng.random() < 0.15:
            kw.update(temperature=float(rng.uniform(0.5, 1.5)), seed=int(rng.integers(1 << 20)))
        return prompt, SamplingParams(**kw), name

    def _track(self, rid: int, name: str | None) -> None:
        self.report.requests += 1
        self.adapter_path[rid] = None if name is None else self.engine.adapters.paths[name]

    def op_add(self) -> None:
        prompt, params, name = self._request()
        arrival = None
        if self.rng.random() < 0.3:
            arrival = self.clock.now() - float(self.rng.uniform(0, 0.05))
        self._track(self.engine.add_request(prompt, params, name, arrival_time=arrival), name)

    def op_step(self) -> None:
        self.clock.advance(float(self.rng.uniform(0.001, 0.01)))  # the step's time
        self._ended(self.engine.step(), "step")
        self._progress()

    def op_clock(self) -> None:
        self.clock.advance(float(self.rng.choice([0.005, 0.02, 0.06, 0.3])))

    def op_abort(self) -> None:
        live = [r for r, q in self.engine.requests.items() if q.status is not Status.FINISHED]
        pool = live or list(self.engine.requests)
        if not pool:
            return
        rid = pool[self.rng.integers(len(pool))]
        was_finished = self.engine.requests[rid].status is Status.FINISHED
        out = self.engine.abort(rid)
        if out.rid != rid:
            self.violation(f"abort({rid}) returned the output of {out.rid}")
        if not was_finished:
            self._ended([out], "abort")

    def op_generate(self) -> None:
        reqs = [self._request() for _ in range(int(self.rng.integers(1, 3)))]
        with self._watchdog():
            outs = self.engine.generate(
                [p for p, _, _ in reqs], [s for _, s, _ in reqs], [n for _, _, n in reqs]
            )
        for out, (_, _, name) in zip(outs, reqs, strict=True):
            self._track(out.rid, name)
        self._ended(outs, "generate")

    def op_stream(self) -> None:
        prompt, params, name = self._request()
        with self._watchdog():
            events = list(self.engine.stream(prompt, params, name))
        final = events[-1].finished if events else None
        if final is None:
            self.violation("stream() ended without a finished event")
            return
        self._track(final.rid, name)
        tokens = [e.token_id for e in events if e.token_id is not None]
        if tokens != final.token_ids:
            self.violation(f"stream of {final.rid}: events {tokens} != output {final.token_ids}")
        self._ended([final], "stream")

    def op_load(self) -> None:
        self.runtime += 1
        name = f"r{self.runtime}"
        if self.rng.random() < 0.5:
            path = f"dummy:{int(self.rng.choice([2, 4, 8]))}"
        else:
            adapter = random_adapter(name, TINY, int(self.rng.choice([2, 4])), seed=self.runtime)
            path = str(save_peft_adapter(adapter, self.root / self.cfg.name / name))
        pinned = bool(self.rng.random() < 0.2)
        before = self.state()
        try:
            self.engine.load_lora_adapter(name, path, pinned=pinned)
        except ValueError as e:  # only a pin may be refused (no free slot, or one must stay free)
            if not pinned or "pin" not in str(e):
                self.violation(f"load_lora_adapter({name!r}, {path!r}) refused: {e}")
            if self.state() != before:
                self.violation(f"a refused load of {name!r} changed the state")

    def op_unload(self) -> None:
        names = list(self.engine.adapters.paths)
        if not names:
            return
        name = names[self.rng.integers(len(names))]
        users = [
            r
            for r in self.engine.requests.values()
            if r.lora_name == name and r.status is not Status.FINISHED
        ]
        before = self.state()
        try:
            self.engine.unload_lora_adapter(name)
        except ValueError as e:
            if not users or name not in str(e):
                self.violation(f"unload of {name!r} (users {len(users)}) refused: {e}")
            if self.state() != before:
                self.violation(f"a refused unload of {name!r} changed the state")
            return
        if users:
            self.violation(f"unloaded {name!r} while {len(users)} requests use it")
        hidden = self.gone.pop(name, None)
        if hidden is not None:  # its files come back (the oracle reads them at the end)
            hidden.rename(self.peft_paths[name])

    def op_load_corrupt(self) -> None:
        kind = list(self.corrupt)[self.rng.integers(len(self.corrupt))]
        name = f"bad_{kind}_{self.op}"
        self._refused(
            f"corrupt adapter ({kind})",
            lambda: self.engine.load_lora_adapter(name, self.corrupt[kind]),
            f"adapter {name!r}",
        )

    def op_vanish(self) -> None:
        """Take a PEFT adapter's directory away, or bring one back."""
        if self.gone and self.rng.random() < 0.5:
            name = list(self.gone)[self.rng.integers(len(self.gone))]
            self.gone.pop(name).rename(self.peft_paths[name])
            return
        present = [
            n for n in self.peft_paths if n not in self.gone and self.engine.adapters.known(n)
        ]
        if present:
            name = present[self.rng.integers(len(present))]
            hidden = Path(self.peft_paths[name] + ".gone")
            Path(self.peft_paths[name]).rename(hidden)
            self.gone[name] = hidden
            self.vanished.add(name)

    def op_score(self) -> None:
        prompt, _, name = self._request()
        try:
            (logits,) = self.engine.score([prompt], name)
        except ValueError as e:
            if "no free adapter slot" in str(e) or (name in self.gone and f"{name!r}" in str(e)):
                return
            self.violation(f"score refused: {e}")
            return
        if logits.shape != (len(prompt), TINY.vocab_size) or not np.isfinite(logits).all():
            self.violation(f"score gave shape {logits.shape}, finite={np.isfinite(logits).all()}")

    # ------------------------------------------------------------------ bad input
    def _refused(self, what: str, call, needle: str, kind=ValueError) -> None:
        before = self.state()
        try:
            call()
        except (ValueError, TypeError) as e:
            if not isinstance(e, kind):
                self.violation(f"{what}: {type(e).__name__} where {kind.__name__} is due: {e}")
            elif needle not in str(e):
                self.violation(f"{what}: the message does not name {needle!r}: {e}")
        except Exception as e:  # noqa: BLE001 - any other error type is the violation
            self.violation(f"{what}: raised {type(e).__name__}: {e}")
        else:
            self.violation(f"{what}: accepted")
        if self.state() != before:
            self.violation(f"{what}: the refusal changed the state")

    def op_bad_request(self) -> None:
        prompt, params, name = self._request()
        cases = [
            ("arrival_time='soon'", dict(arrival_time="soon"), "'soon'", TypeError),
            ("arrival_time=nan", dict(arrival_time=float("nan")), "nan", ValueError),
            ("arrival_time=inf", dict(arrival_time=float("inf")), "inf", ValueError),
            ("float prompt", dict(prompt_ids=[1.5, 2]), "1.5", TypeError),
            ("str in prompt", dict(prompt_ids=[1, "a"]), "'a'", TypeError),
            ("text prompt", dict(prompt_ids="hello"), "'hello'", TypeError),
            ("empty prompt", dict(prompt_ids=[]), "[]", ValueError),
            ("nested prompt", dict(prompt_ids=[[1, 2], [3]]), "[[1, 2], [3]]", TypeError),
            ("token past vocab", dict(prompt_ids=[1, 300]), "300", ValueError),
            ("negative token", dict(prompt_ids=[-4, 3]), "-4", ValueError),
            ("list lora_name", dict(lora_name=["a"]), "['a']", TypeError),
            ("unknown lora_name", dict(lora_name="nope"), "'nope'", ValueError),
            ("dict params", dict(params={"seed": 1}), "{'seed': 1}", TypeError),
            ("too long", dict(prompt_ids=[5] * 60, params=SamplingParams(max_new_tokens=10)),
             "max_new_tokens=10", ValueError),
        ]  # fmt: skip
        what, kw, needle, kind = cases[self.rng.integers(len(cases))]
        args = dict(prompt_ids=prompt, params=params, lora_name=name, arrival_time=None)
        args.update(kw)
        self._refused(f"add_request({what})", lambda: self.engine.add_request(**args), needle, kind)

    def op_bad_params(self) -> None:
        cases = [
            (dict(seed="abc"), "'abc'", TypeError),
            (dict(seed=1.5), "1.5", TypeError),
            (dict(temperature="hot"), "'hot'", TypeError),
            (dict(temperature=float("inf")), "inf", ValueError),
            (dict(temperature=-1.0), "-1.0", ValueError),
            (dict(top_p="x"), "'x'", TypeError),
            (dict(top_p=0.0), "0.0", ValueError),
            (dict(top_k=0), "top_k=0", ValueError),
            (dict(stop_token_ids=5), "5", TypeError),
            (dict(stop_token_ids=(1.5,)), "1.5", TypeError),
            (dict(max_new_tokens=0), "max_new_tokens=0", ValueError),
            (dict(max_new_tokens="4"), "'4'", TypeError),
            (dict(ignore_eos="no"), "'no'", TypeError),
        ]
        kw, needle, kind = cases[self.rng.integers(len(cases))]
        self._refused(f"SamplingParams({kw})", lambda: SamplingParams(**kw), needle, kind)

    def op_bad_call(self) -> None:
        e = self.engine
        cases = [
            ("abort(1.0)", lambda: e.abort(1.0), "1.0", TypeError),
            ("abort(True)", lambda: e.abort(True), "True", TypeError),
            ("abort(unknown)", lambda: e.abort(10**9), str(10**9), ValueError),
            ("score([])", lambda: e.score([]), "[]", ValueError),
            ("score([[1.5]])", lambda: e.score([[1.5]]), "1.5", TypeError),
            ("generate(lora_name=5)", lambda: e.generate([[1]], None, 5), "5", TypeError),
            ("generate(one bad prompt)", lambda: e.generate([[1, 2], [999]]), "999", ValueError),
            ("load(name='')", lambda: e.load_lora_adapter("", "dummy:4"), "''", ValueError),
            ("load(rank 99)", lambda: e.load_lora_adapter("big", "dummy:99"), "99", ValueError),
            ("unload(unknown)", lambda: e.unload_lora_adapter("nope"), "'nope'", ValueError),
        ]
        what, call, needle, kind = cases[self.rng.integers(len(cases))]
        self._refused(what, call, needle, kind)

    # ------------------------------------------------------------------ checks
    def state(self) -> tuple:
        e, s = self.engine, self.engine.scheduler
        return (
            len(e.requests),
            tuple(r.rid for r in s.waiting),
            tuple(r.rid for r in s.running),
            tuple(r.rid for r in s.paused),
            e.pages.num_free,
            tuple(e.adapters.occupant),
            tuple(sorted(e.adapters.paths.items())),
            tuple(sorted(e.adapters.pinned)),
        )

    def _ended(self, outs, how: str) -> None:
        for out in outs:
            self.ended[out.rid] += 1
            self.report.finish_reasons[out.finish_reason] += 1
            if self.ended[out.rid] > 1:
                self.violation(f"request {out.rid} ended {self.ended[out.rid]} times ({how})")
            else:
                self.tokens_ended += len(out.token_ids)

    def _progress(self) -> None:
        """Count a step: progress is a token more in all requests' outputs, or an end."""
        s = self.engine.scheduler
        tokens = self.tokens_ended + sum(len(r.output) for r in s.waiting + s.running + s.paused)
        if tokens != self.tokens_seen or not self.engine.has_unfinished():
            self.tokens_seen, self.since_progress = tokens, 0
            return
        self.since_progress += 1
        if self.since_progress > self.stall_steps:
            raise Stalled(self._stall_message())

    def _stall_message(self) -> str:
        s = self.engine.scheduler
        return (
            f"{self.stall_steps} steps without a token or an end; waiting "
            f"{[(r.rid, r.lora_name) for r in s.waiting][:6]}, running "
            f"{[(r.rid, r.lora_name) for r in s.running][:6]}, paused "
            f"{[(r.rid, r.lora_name) for r in s.paused][:6]}, slots {s.adapters.occupant}"
        )

    class _Watch:
        def __init__(self, fuzzer):
            self.fuzzer = fuzzer

        def __enter__(self):
            f, engine = self.fuzzer, self.fuzzer.engine
            # The step generate() and stream() run (``_step``; ``step`` in an engine before #19).
            self.method = "_step" if hasattr(engine, "_step") else "step"
            inner = getattr(engine, self.method)

            def counted():  # generate() and stream() step the engine themselves
                f.clock.advance(0.005)
                outs = inner()
                f._progress()
                return outs

            setattr(engine, self.method, counted)
            return self

        def __exit__(self, *exc):
            delattr(self.fuzzer.engine, self.method)  # the method again
            return False

    def _watchdog(self):
        return self._Watch(self)

    def check_invariants(self) -> None:
        e, s = self.engine, self.engine.scheduler
        queues = {Status.WAITING: s.waiting, Status.RUNNING: s.running, Status.PAUSED: s.paused}
        held = 0
        for req in e.requests.values():
            places = [st for st, q in queues.items() if req in q]
            if req.status is Status.FINISHED:
                if places or req.pages:
                    self.violation(f"finished request {req.rid} in {places}, pages {req.pages}")
            elif places != [req.status]:
                self.violation(f"request {req.rid} ({req.status}) is in queues {places}")
            held += len(req.pages)
        if held + e.pages.num_free != e.pages.capacity:
            self.violation(
                f"pages: {held} held + {e.pages.num_free} free != capacity {e.pages.capacity}"
            )
        pool = e.adapters
        table = {n: i for i, n in enumerate(pool.occupant) if n is not None}
        if table != pool.slot_index:
            self.violation(f"slot table {pool.occupant} disagrees with index {pool.slot_index}")
        for req in s.running:
            if req.lora_name is not None and req.lora_name not in pool.slot_index:
                self.violation(f"running request {req.rid} has no slot for {req.lora_name!r}")
        if not s.has_work() and e._in_flight is None and e.pages.num_free != self.initial_free:
            self.violation(f"engine empty but {e.pages.num_free} of {self.initial_free} free")

    def finish(self) -> None:
        """Bring vanished adapters back, drain the engine, and check every request's end."""
        for name, hidden in list(self.gone.items()):
            hidden.rename(self.peft_paths[name])
        self.gone.clear()
        for _ in range(10_000):
            if not self.engine.has_unfinished():
                break
            self.op_step()
            self.check_invariants()
        self._ended(self.engine.step(), "step")  # outputs kept by generate/stream, if any
        for rid, req in self.engine.requests.items():
            if self.ended[rid] != 1:
                self.violation(f"request {rid} ({req.status}) ended {self.ended[rid]} times")
                continue
            self.check_tokens(req)

    def check_tokens(self, req) -> None:
        if req.finish_reason == "error":
            if req.lora_name not in self.vanished or repr(req.lora_name) not in (req.error or ""):
                self.violation(f"request {req.rid} failed: {req.error}")
        if req.params.temperature > 0:
            return
        alone = self.oracle.alone(req.prompt, req.params, req.lora_name, self.adapter_path[req.rid])
        self.report.greedy_checked += 1
        if req.finish_reason in ("abort", "error"):
            ok = alone[: len(req.output)] == req.output
        else:
            ok = alone == req.output
        if not ok:
            self.violation(
                f"request {req.rid} ({req.lora_name}, {req.finish_reason}, "
                f"{req.num_preemptions} preemptions, {req.num_pauses} pauses): tokens "
                f"{req.output} != alone {alone}"
            )


def run(
    num_ops: int,
    seed: int = 0,
    configs: tuple[FuzzConfig, ...] = CONFIGS,
    log=None,
) -> list[Report]:
    """Every configuration for ``num_ops`` operations (times its ``ops_scale``), seeded."""
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        oracle = Oracle(dict(DUMMY))
        for i, cfg in enumerate(configs):
            fuzzer = Fuzzer(cfg, seed * 1000 + i, root, oracle)
            report = fuzzer.run(max(10, int(num_ops * cfg.ops_scale)))
            reports.append(report)
            if log is not None:
                log(report)
        shutil.rmtree(root, ignore_errors=True)
    return reports
