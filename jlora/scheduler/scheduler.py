"""The scheduler: between two jitted steps, decide what the next step runs.

What is decided, when, and from which state
-------------------------------------------
The engine loop calls :meth:`Scheduler.schedule` once per step. It reads only host state: the
waiting queue, the running set, the paused set, the page pool's free list, the adapter pool's slot
table, the policy's marks, and the clock. Nothing on the device is read, so a decision costs
O(requests) of Python between two steps, and the same code runs under a fake clock and runner. It
returns a :class:`StepPlan`:

1. **Admission round**, if anything waits, is paused, or a chunked prompt is in progress:

   a. The policy updates its marks (:meth:`Policy.before_prefill`; the drainers of
      :mod:`jlora.scheduler.policies` recompute per-adapter waits and budgets here) and names the
      running requests to **pause** (:meth:`Policy.pauses`; only the ``preempt`` drainer does). A
      paused request leaves the running set, keeps its KV pages and outputs, and waits from now.
      A request in the middle of a chunked prefill is preempted by recompute instead.
   b. **The walk**: a chunked prompt in progress is continued first. Then the paused and waiting
      requests are walked in the policy's order (FCFS: paused ones first, so they resume before
      new arrivals of other adapters; then by ``wait_since``).

      * A paused request **resumes** (back to the running set; it decodes in the next decode
        step, from its cache) if its adapter runs already or can get a slot (below).
      * A waiting request is **admitted** (for prefill) if the running set has room
        (``max_running_requests``); its adapter runs already or can get a slot (otherwise it is
        *skipped* and the walk goes on: a request of another adapter further down may fit); the
        policy agrees (:meth:`Policy.may_admit`: the drainers' 1.2x tolerance); its pages fit in
        the free pages, keeping one page per running request in reserve for decode growth (if
        not, paused requests are preempted by recompute, most recently paused first, to make
        room, and if that is not enough no further request is admitted: pages are shared by
        all, and skipping would starve the larger request behind smaller ones); and its tokens
        fit in the step's token budget (``max_prefill_tokens``); a prompt longer than what is
        left is split in chunks of at most ``chunked_prefill_size`` (one at a time).

2. **Prefill** step if anything was admitted or continued. Otherwise **decode** of every running
   request that has finished its prefill (paused requests are never decoded). Each gets the page
   its next token needs; when none is free a paused request (most recently paused first), else the
   newest running one, is preempted: its pages are freed, it goes back to the waiting queue with
   its outputs kept, and its prompt and outputs are recomputed when admitted again.

3. **Idle** when nothing can run.

When can an adapter get a slot? A slot *unit* must be free (``max_loras_per_batch`` minus the
units of running adapters; the base model takes one only with ``base_uses_slot``), and, for an
adapter, a device slot: its own, an empty one, or one whose adapter has no running request (the
adapter pool picks by ``lru``/``fifo``). A policy may **hold** a slot (:meth:`Policy.holds`,
victim -> beneficiary): until the beneficiary runs, the victim's slot and one unit are kept for
it, and the victim itself cannot sit down again. Adapter loads the plan needs (for admissions and
resumes) are listed in it; the engine has the runner perform them before the step. With
``prefetch``, the adapter of the first request in line that has no slot is also loaded into a free
slot, if there is one, ahead of its turn (:meth:`Scheduler._prefetch`).

Policies decide (order, marks, pauses, holds, may-admit); the scheduler applies. :class:`FCFS`,
the policy of a scheduler given none, is here; the drainers, built on it, are in
:mod:`jlora.scheduler.policies`; :meth:`Scheduler.snapshot` reports the state a
benchmark logs per step.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from jlora.adapters.pool import AdapterPool
from jlora.scheduler.pages import OutOfPages, PagePool
from jlora.scheduler.request import Request, Status

Adapter = str | None
"""An adapter name; ``None`` is the base model (no adapter)."""


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    max_running_requests: int
    """Most requests admitted at once (prefilling or decoding; paused ones not counted)."""
    max_prefill_tokens: int
    """Token budget of one prefill step."""
    chunked_prefill_size: int
    """Longest chunk of one prompt in a prefill step."""
    max_prefill_seqs: int
    """Most sequences in one prefill step."""
    base_uses_slot: bool = False
    """Requests without an adapter count as one adapter against the slots (SGLang's behaviour)."""
    context_length: int = 4096
    """Longest sequence: with ``chunked_prefill_size`` it sets the progress bound
    (:attr:`Scheduler.progress_bound`)."""
    prefetch: bool = False
    """Load the adapter seated next into a free slot ahead of its turn
    (:meth:`Scheduler._prefetch`)."""


@dataclass
class PrefillItem:
    req: Request
    start: int
    end: int

    @property
    def completes(self) -> bool:
        return self.end == self.req.num_tokens


@dataclass
class StepPlan:
    kind: str  # "prefill", "decode" or "idle"
    prefill: list[PrefillItem] = field(default_factory=list)
    decode: list[Request] = field(default_factory=list)
    loads: list[tuple[int, str]] = field(default_factory=list)  # (slot, adapter) to copy in first
    prefetch: list[tuple[int, str]] = field(default_factory=list)  # (slot, adapter) ahead of turn
    preempted: list[Request] = field(default_factory=list)  # pages freed, back to waiting
    paused: list[Request] = field(default_factory=list)  # pages kept, out of the running set
    resumed: list[Request] = field(default_factory=list)  # paused -> running in this round


@dataclass(frozen=True)
class SchedulerState:
    """What the scheduler holds at one moment, for traces (adapters by name; None = base model).

    Taken by :meth:`Scheduler.snapshot`; the engine keeps the one of its last decision as
    ``Engine.last_state``. Counts are per adapter; adapters with none are absent.
    """

    time: float
    slots: tuple[str | None, ...]  # adapter in each device slot
    waiting: dict[Adapter, int]  # waiting requests per adapter (paused ones not included)
    longest_wait: dict[Adapter, float]  # seconds the longest-waiting one (waiting or paused) waited
    running: dict[Adapter, int]  # admitted (prefilling or decoding) requests per adapter
    paused: dict[Adapter, int]  # paused requests per adapter (KV pages kept)
    draining: dict[Adapter, Adapter]  # victim adapter -> the starved adapter it makes room for
    free_pages: int
    kind: str = "idle"  # the last plan's kind: prefill, decode or idle
    batch: dict[Adapter, int] = field(default_factory=dict)  # the last plan's sequences per adapter


class Policy(Protocol):
    """What a scheduling policy may decide (see :mod:`jlora.scheduler.policies`).

    The hooks are called once per admission round, in this order: ``before_prefill``, ``pauses``,
    ``order``, then ``holds`` and ``may_admit`` during the walk.
    """

    def order(self, queue: list[Request], now: float) -> list[Request]:
        """The order in which the walk takes the paused and waiting requests (``queue``).

        A stable sort by a key of each request: the walk may pass only the requests that can act
        (:meth:`Scheduler._walk`), and they must come in the order they have among the whole
        queue."""
        ...

    def before_prefill(self, sched: Scheduler, now: float) -> None:
        """Update the policy's marks from the scheduler's state (the drainers' bookkeeping)."""
        ...

    def pauses(self, sched: Scheduler, now: float) -> Sequence[Request]:
        """Running requests to pause before this round's walk (their slot is then free)."""
        ...

    def may_admit(self, sched: Scheduler, req: Request, now: float) -> bool:
        """Whether ``req`` may be admitted in this round (its adapter has or can get a slot)."""
        ...

    def holds(self) -> Mapping[Adapter, Adapter]:
        """Slots held: victim adapter -> the adapter its slot is kept for, until that one runs."""
        ...

    def draining(self) -> dict[Adapter, Adapter]:
        """Current drain marks: victim adapter -> the starved adapter it drains for."""
        ...


class FCFS:
    """First come, first served by ``wait_since`` (paused requests, if any, first: they resume
    before new arrivals); admission skips requests whose adapter cannot get a slot. No bound on a
    cold adapter's wait: it lasts as long as the hot adapters' streams keep every slot busy."""

    def order(self, queue: list[Request], now: float) -> list[Request]:
        return sorted(queue, key=lambda r: (r.status != Status.PAUSED, r.wait_since, r.rid))

    def before_prefill(self, sched: Scheduler, now: float) -> None:
        return None

    def pauses(self, sched: Scheduler, now: float) -> Sequence[Request]:
        return ()

    def may_admit(self, sched: Scheduler, req: Request, now: float) -> bool:
        return True

    def holds(self) -> Mapping[Adapter, Adapter]:
        return {}

    def draining(self) -> dict[Adapter, Adapter]:
        return {}


def running_mean(old: float | None, new: float, weight: float = 0.1) -> float:
    """An exponential running mean (the first value taken as is)."""
    return new if old is None else old + weight * (new - old)


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        pages: PagePool,
        adapters: AdapterPool,
        policy: Policy | None = None,
    ):
        self.config, self.pages, self.adapters = config, pages, adapters
        self.policy: Policy = policy or FCFS()
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.running_count: dict[Adapter, int] = {}
        """Running requests per adapter (adapters with none are absent)."""
        self.running_changes = 0
        """Bumped whenever a request joins or leaves the running set: a policy may keep what it
        computed from the running set while this stays the same (within one round; between two
        rounds the running requests' outputs grow)."""
        self.paused: list[Request] = []
        self.last_plan = StepPlan("idle")
        self._admitted_order: dict[int, int] = {}  # rid -> admission counter (newest = largest)
        self._counter = 0
        # The running requests again, oldest admission first: the order decode takes them in (a
        # resumed request keeps its place). `running` itself keeps the order they joined it, which
        # the policies see (e.g. the order a victim's requests are paused in).
        self._by_admission: list[Request] = []
        self.seated_since: dict[Adapter, float] = {}
        """When each running adapter last began to run (it had no running request before): how
        long it has held its slot, for the policies' minimum residency."""
        self._gives_token = False  # whether the last plan gives some request a token
        self.steps_without_progress = 0
        """Steps in a row that gave no request a token (idle steps not counted)."""
        self.guarded_rounds = 0
        """Admission rounds in which the progress guard overrode the policy (see the module doc)."""
        self.decode_seconds: float | None = None
        """Running mean of a decode step's duration, as the engine measured it (None: none yet)."""
        self.load_seconds: float | None = None
        """Running mean of an adapter load's duration on the engine's loop (None: none yet)."""

    # ------------------------------------------------------------------ queue
    def add(self, req: Request) -> None:
        req.status = Status.WAITING
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.paused)

    def running_adapters(self) -> set[Adapter]:
        return set(self.running_count)

    @property
    def progress_bound(self) -> int:
        """Steps after which the scheduler stops applying the policy's pauses and holds until some
        request gets a token: the most prefill steps one prompt needs, plus one."""
        chunk = min(self.config.chunked_prefill_size, self.config.max_prefill_tokens)
        return -(-self.config.context_length // chunk) + 1

    @property
    def guarded(self) -> bool:
        """Whether the progress guard is in force (the policy's pauses and holds are ignored)."""
        return self.steps_without_progress >= self.progress_bound

    # ------------------------------------------------------------------ measurements
    def observe_step(self, kind: str, seconds: float) -> None:
        """The engine reports each step's duration (the policies read ``decode_seconds``)."""
        if kind == "decode":
            self.decode_seconds = running_mean(self.decode_seconds, seconds)

    def observe_load(self, seconds: float) -> None:
        """The engine reports the time its loop spent on one adapter load."""
        self.load_seconds = running_mean(self.load_seconds, seconds)

    # ------------------------------------------------------------------ slots
    def uses_unit(self, name: Adapter) -> bool:
        """Whether requests of ``name`` count against ``max_loras_per_batch``."""
        return name is not None or self.config.base_uses_slot

    def slot_units(self, names: Iterable[Adapter]) -> int:
        """Slot units the adapters ``names`` take when they run together."""
        names = set(names)
        return len(names) - (None in names and not self.config.base_uses_slot)

    def _held_for_others(self, name: Adapter, busy: set[Adapter]) -> list[tuple[Adapter, Adapter]]:
        """Holds (victim, beneficiary) in force against ``name``: beneficiary not yet running.
        None while the progress guard is in force."""
        if self.guarded:
            return []
        return [(v, b) for v, b in self.policy.holds().items() if b not in busy and b != name]

    def free_slot(
        self, name: Adapter, busy: set[Adapter] | None = None, claimed: Iterable[int] = ()
    ) -> int | None:
        """The device slot an adapter that is not running could sit in now (-1: it needs none, the
        base model), honouring the policy's holds; None if it cannot. ``busy``: the adapters that
        run (default: those of the running set); ``claimed``: slots promised to others."""
        busy = self.running_adapters() if busy is None else busy
        if not self.uses_unit(name):
            return -1
        if self.slot_units(busy) + (name not in busy) > self.adapters.num_slots:
            return None  # no unit left, before counting holds (they only take more)
        held = self._held_for_others(name, busy)
        if any(v == name for v, _ in held):
            return None  # it owes its slot to another adapter
        units = self.slot_units(busy | {name}) + sum(
            1 for v, b in held if v not in busy and self.uses_unit(b)
        )
        if units > self.adapters.num_slots:
            return None
        if name is None:
            return -1
        reserved = self._reserved_slots(held, busy) | set(claimed)
        return self.adapters.free_slot_for(name, busy - {None}, reserved)

    def _reserved_slots(self, held: list[tuple[Adapter, Adapter]], busy: set[Adapter]) -> set[int]:
        out = set()
        for v, _ in held:
            if v is not None and v not in busy and (s := self.adapters.slot_of(v)) is not None:
                out.add(s)
        return out

    def take_slot(self, name: str, using: Iterable[Adapter] = ()) -> tuple[int, bool] | None:
        """Give ``name`` a device slot now; returns (slot, whether its weights must be copied in),
        or None. The one place slots are handed out: to an adapter seated by the walk, pinned
        (:meth:`Engine.load_lora_adapter <jlora.engine.Engine.load_lora_adapter>`) or scored
        (:meth:`Engine.score <jlora.engine.Engine.score>`). *Busy*, never taken from: the slots
        of the adapters with running requests and of those in ``using`` (the caller's own, for
        this use), pinned slots, and slots a policy holds for another adapter."""
        busy = set(self.running_count) | set(using)
        reserved = self._reserved_slots(self._held_for_others(name, busy), busy)
        return self.adapters.take_slot(name, busy - {None}, reserved)

    def _seat(self, name: Adapter, plan: StepPlan, now: float) -> None:
        """Give ``name`` (checked by :meth:`free_slot`) its slot; list the load in the plan."""
        self.seated_since[name] = now
        if name is None:
            return
        taken = self.take_slot(name)
        assert taken is not None, f"no slot for {name!r} after free_slot found one"
        slot, must_load = taken
        if must_load:
            plan.loads.append((slot, name))

    def _prefetch(self, now: float, plan: StepPlan) -> None:
        """After the walk: the first paused or waiting request, in the policy's order, whose
        adapter has no slot gets its adapter loaded into a free slot ahead of its turn (listed in
        ``plan.prefetch``). Free: empty, or holding an adapter that no running, waiting or paused
        request uses, that is not pinned and that no policy hold names. Nothing is admitted and
        no slot unit is taken: the slot stays free for any adapter that is seated before."""
        queue = self.paused + self.waiting
        wanted = set(self.running_count) | {r.lora_name for r in queue}
        holds = self.policy.holds()
        keep = (wanted | self.adapters.pinned | set(holds) | set(holds.values())) - {None}
        if all(name in keep for name in self.adapters.occupant):
            return  # no free slot: nothing to sort the queue for
        for req in self.policy.order(queue, now):
            name = req.lora_name
            if name is not None and self.adapters.slot_of(name) is None:
                taken = self.adapters.take_slot(name, keep)
                if taken is not None:
                    plan.prefetch.append((taken[0], name))
                return

    # ------------------------------------------------------------------ the decision
    def schedule(self, now: float) -> StepPlan:
        self._count_progress()
        plan = StepPlan("prefill")
        if self.waiting or self.paused or self._mid_prefill() is not None:
            busy = self.running_adapters()
            for name in [a for a in self.seated_since if a not in busy]:
                del self.seated_since[name]
            self.policy.before_prefill(self, now)
            pauses = self.policy.pauses(self, now)
            if self.guarded:
                self.guarded_rounds += 1
            else:
                for req in pauses:
                    self._pause(req, now, plan)
            self._walk(now, plan, self.running_adapters())
            if self.config.prefetch:
                self._prefetch(now, plan)
        if plan.prefill:
            self.adapters.touch(
                i.req.lora_name for i in plan.prefill if i.req.lora_name is not None
            )
            self.last_plan = plan
            self._gives_token = any(i.completes for i in plan.prefill)
            return plan
        plan.kind = "decode"
        page_size = self.pages.page_size
        running = Status.RUNNING
        # `not r.in_prefill`, inlined: this and `_mid_prefill` run for every running request per
        # step.
        decoding = [
            r for r in self._by_admission if r.output and r.num_computed >= r.num_tokens - 1
        ]
        for req in decoding:
            if req.status is not running:  # preempted below, to make room for an older one
                continue
            while req.num_tokens > len(req.pages) * page_size:  # its next token needs a page
                try:
                    req.pages += self.pages.alloc(1)
                except OutOfPages:
                    victim = self.paused[-1] if self.paused else self._newest_running()
                    self._preempt(victim, now)
                    plan.preempted.append(victim)
                    if victim is req:
                        break
            if req.status is running:
                plan.decode.append(req)
        if not plan.decode:
            plan.kind = "idle"
        return self._decided_decode(plan)

    def lookahead(self, in_flight: list[Request], context_length: int) -> StepPlan | None:
        """The decode step after the one in flight (overlap scheduling), planned before its tokens
        are known: the same requests, less those that end by length in it, each one token
        further. None where there may be another decision to make (a request waits, is paused or
        is mid-prefill: the drainer acts only on waiters) or the pages for one more token of each
        are not free (nothing is preempted for a lookahead); the caller then waits for the step
        in flight and asks :meth:`schedule`."""
        if (
            self.waiting
            or self.paused
            or self._mid_prefill() is not None
            or len(self.running) != len(in_flight)
        ):
            return None
        running = Status.RUNNING
        going_on = [
            r
            for r in in_flight
            if r.status is running
            and len(r.output) + 1 < r.params.max_new_tokens
            and r.num_tokens + 1 < context_length
        ]
        page_size = self.pages.page_size
        need = [r for r in going_on if r.num_tokens + 1 > len(r.pages) * page_size]
        if not going_on or len(need) > self.pages.num_free:
            return None
        for req in need:
            req.pages += self.pages.alloc(1)
        return self._decided_decode(StepPlan("decode", decode=going_on))

    def _count_progress(self) -> None:
        """Count the last plan: a decode step gives each of its requests a token, a prefill step
        each request whose prompt it completes; a prefill of chunks only, or an idle round while
        requests wait, gives none."""
        if self._gives_token:
            self.steps_without_progress = 0
        elif self.last_plan.kind == "prefill" or self.has_work():
            # An idle plan while requests wait or are paused is a round without progress too
            # (e.g. holds that no beneficiary can take); one with nothing to do is not.
            self.steps_without_progress += 1

    def _decided_decode(self, plan: StepPlan) -> StepPlan:
        """Mark a decode plan's adapters used (for LRU) and keep it as the last plan."""
        names = {r.lora_name for r in plan.decode}
        names.discard(None)
        self.adapters.touch(names)
        self.last_plan = plan
        self._gives_token = bool(plan.decode)
        return plan

    def _mid_prefill(self) -> Request | None:
        """The running request in the middle of a chunked prefill (at most one), if any
        (``in_prefill`` and ``num_computed > 0``, inlined)."""
        return next(
            (
                r
                for r in self.running
                if r.num_computed > 0 and (not r.output or r.num_computed < r.num_tokens - 1)
            ),
            None,
        )

    def _walk(self, now: float, plan: StepPlan, busy: set[Adapter]) -> None:
        """Resume paused requests and admit waiting ones, in the policy's order."""
        cfg = self.config
        budget = cfg.max_prefill_tokens
        chunked = self._mid_prefill()
        if chunked is not None:
            done = chunked.num_computed
            n = min(chunked.num_tokens - done, cfg.chunked_prefill_size, budget)
            plan.prefill.append(PrefillItem(chunked, done, done + n))
            budget -= n
        chunking = chunked is not None
        reserve = len(self.running)
        admitting = True  # false once the prefill is full: paused requests may still resume
        # Whether an adapter that does not run could get a slot: it changes only when `busy` (and
        # with it the slot table) does, so it is asked once per adapter between two seatings, not
        # once per waiting request.
        seatable: dict[Adapter, bool] = {}

        def can_get_slot(name: Adapter) -> bool:
            ok = seatable.get(name)
            if ok is None:
                ok = seatable[name] = self.free_slot(name, busy) is not None
            return ok

        if len(self.running) >= cfg.max_running_requests:
            return  # nothing can be admitted or resumed: no need to order the queue
        queue = self.paused + self.waiting
        if self.slot_units(busy) >= self.adapters.num_slots:
            # No slot unit is left for an adapter outside `busy` (free_slot's first test), and
            # only seating one could change that (resumes and admissions of running adapters
            # change neither `busy`, the slots nor the holds): the requests of the other adapters
            # would all be skipped, so only those of running adapters (and of the base model when
            # it takes no unit) are ordered and walked. The policy's order is a stable sort by a
            # key of each request, so they keep the order they have among the whole queue.
            walkable = busy if self.config.base_uses_slot else busy | {None}
            queue = [r for r in queue if r.lora_name in walkable]
        if not self.paused and reserve > self.pages.num_free and not any(r.pages for r in queue):
            # Nothing to resume, nor to preempt for pages, and the free pages do not even cover
            # the decode reserve: the first waiting request to reach the page test would stop
            # admission, and those before it are skipped without effect (so all of them are).
            return
        paused_left = sum(1 for r in queue if r.status is Status.PAUSED)  # not walked yet
        for req in self.policy.order(queue, now):
            if len(self.running) >= cfg.max_running_requests:
                break
            if budget <= 0 or len(plan.prefill) >= cfg.max_prefill_seqs:
                admitting = False
            if not admitting and not paused_left:
                break  # the rest wait, and none of them is paused: nothing left to do
            name = req.lora_name
            if req.status == Status.PAUSED:
                paused_left -= 1
                if not self.policy.may_admit(self, req, now):
                    continue  # e.g. its adapter owes its slot to another
                if name not in busy:
                    if not can_get_slot(name):
                        continue
                    self._seat(name, plan, now)
                    busy.add(name)
                    seatable.clear()
                self.paused.remove(req)
                req.status = Status.RUNNING
                self._join_running(req)
                bisect.insort(self._by_admission, req, key=lambda r: self._admitted_order[r.rid])
                plan.resumed.append(req)
                reserve += 1
                continue
            if not admitting or req.status != Status.WAITING:
                continue  # (a paused request preempted below for pages is waiting again)
            if name not in busy and not can_get_slot(name):
                continue
            if not self.policy.may_admit(self, req, now):
                continue
            need = self.pages.pages_for(req.num_tokens) - len(req.pages)
            while need + reserve > self.pages.num_free and self.paused:
                victim = self.paused[-1]  # the most recently paused
                self._preempt(victim, now)
                plan.preempted.append(victim)
            if need + reserve > self.pages.num_free:
                admitting = False
                continue
            n = req.num_tokens - req.num_computed
            if n > budget or n > cfg.chunked_prefill_size:
                if chunking:
                    admitting = False
                    continue
                n = min(budget, cfg.chunked_prefill_size)
                chunking = True
            if name not in busy:
                self._seat(name, plan, now)
                busy.add(name)
                seatable.clear()
            req.pages += self.pages.alloc(need)
            self._admit(req)
            reserve += 1
            plan.prefill.append(PrefillItem(req, req.num_computed, req.num_computed + n))
            budget -= n

    def _admit(self, req: Request) -> None:
        self.waiting.remove(req)
        req.status = Status.RUNNING
        self._join_running(req)
        self._by_admission.append(req)  # the newest admission
        self._counter += 1
        self._admitted_order[req.rid] = self._counter

    def _newest_running(self) -> Request:
        return max(
            (r for r in self.running if r.status == Status.RUNNING),
            key=lambda r: self._admitted_order[r.rid],
        )

    def _join_running(self, req: Request) -> None:
        self.running_changes += 1
        self.running.append(req)
        self.running_count[req.lora_name] = self.running_count.get(req.lora_name, 0) + 1

    def _leave_running(self, req: Request) -> None:
        self.running_changes += 1
        self.running.remove(req)
        self._by_admission.remove(req)
        left = self.running_count[req.lora_name] - 1
        if left:
            self.running_count[req.lora_name] = left
        else:
            del self.running_count[req.lora_name]

    def _pause(self, req: Request, now: float, plan: StepPlan) -> None:
        """Take a running request out of the running set, keeping its pages; it waits from now.

        A request in the middle of its (chunked) prefill has produced nothing yet: it is preempted
        by recompute instead (at most a few chunks are lost), so a resumed request always decodes.
        """
        assert req in self.running, f"request {req.rid} is not running; it cannot be paused"
        if req.in_prefill:
            self._preempt(req, now)
            plan.preempted.append(req)
            return
        self._leave_running(req)
        req.status = Status.PAUSED
        req.wait_since = now
        req.num_pauses += 1
        self.paused.append(req)
        plan.paused.append(req)

    def _preempt(self, req: Request, now: float) -> None:
        """Free the request's pages and send it back to wait; it will be recomputed.

        A paused request keeps the time it paused as the start of its wait.
        """
        req.num_preemptions += 1
        self._requeue(req, now)

    def not_run(self, reqs: Iterable[Request], now: float) -> None:
        """The step planned for ``reqs`` did not run (a slot load it needed was refused): those
        it admitted (nothing computed yet) wait again, their pages freed; the others (decoding, or
        in the middle of a chunked prefill) are planned again as they stand."""
        for req in reqs:
            if req.status is Status.RUNNING and req.num_computed == 0:
                self._requeue(req, now)

    def _requeue(self, req: Request, now: float) -> None:
        self.pages.free(req.pages)
        req.pages = []
        req.num_computed = 0
        if req in self.paused:
            self.paused.remove(req)
        else:
            req.wait_since = now
            self._leave_running(req)
        self._admitted_order.pop(req.rid, None)
        self.add(req)

    # ------------------------------------------------------------------ traces
    def snapshot(self, now: float) -> SchedulerState:
        """The state traces log after each step (O(requests), host only); ``kind`` and ``batch``
        describe the last plan."""
        return self.deferred_snapshot(now)()

    def deferred_snapshot(self, now: float) -> Callable[[], SchedulerState]:
        """:meth:`snapshot` of now, counted only when called (the engine takes one per step and
        most runs never read it). What the step and the calls between steps change is copied now:
        the queues (the requests' adapters and wait starts stay until the next decision), the
        slots, the marks and the free pages."""
        waiting, paused, running = list(self.waiting), list(self.paused), list(self.running)
        plan = self.last_plan
        slots = tuple(self.adapters.occupant)
        draining = dict(self.policy.draining())
        free_pages = self.pages.num_free

        def count() -> SchedulerState:
            waiting_n: dict[Adapter, int] = {}
            longest: dict[Adapter, float] = {}
            paused_n: dict[Adapter, int] = {}
            running_n: dict[Adapter, int] = {}
            for r in waiting:
                waiting_n[r.lora_name] = waiting_n.get(r.lora_name, 0) + 1
            for r in waiting + paused:
                longest[r.lora_name] = max(longest.get(r.lora_name, 0.0), now - r.wait_since)
            for r in paused:
                paused_n[r.lora_name] = paused_n.get(r.lora_name, 0) + 1
            for r in running:
                running_n[r.lora_name] = running_n.get(r.lora_name, 0) + 1
            batch: dict[Adapter, int] = {}
            for r in [i.req for i in plan.prefill] + plan.decode:
                batch[r.lora_name] = batch.get(r.lora_name, 0) + 1
            return SchedulerState(
                time=now,
                slots=slots,
                waiting=waiting_n,
                longest_wait=longest,
                running=running_n,
                paused=paused_n,
                draining=draining,
                free_pages=free_pages,
                kind=plan.kind,
                batch=batch,
            )

        return count

    # ------------------------------------------------------------------ after a step
    def finish(self, req: Request) -> None:
        """Release a finished (or failed) request's pages and its place."""
        self.pages.free(req.pages)
        req.pages = []
        if req.status == Status.RUNNING and req in self.running:
            self._leave_running(req)  # and it is in no other queue: the waiting one may be long
        else:
            for queue in (self.waiting, self.paused):
                if req in queue:
                    queue.remove(req)
            if req in self._by_admission:
                self._by_admission.remove(req)
        self._admitted_order.pop(req.rid, None)
        req.status = Status.FINISHED
