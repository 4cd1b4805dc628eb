"""The scheduler: between two jitted steps, decide what the next step runs.

What is decided, when, and from which state
-------------------------------------------
The engine loop calls :meth:`Scheduler.schedule` once per step. It reads only host state: the
waiting queue, the running set, the page pool's free list and the adapter pool's slot table, and
the clock. It returns a :class:`StepPlan`:

1. **Prefill**, if anything can be admitted. A chunked prompt in progress is continued first. Then
   the waiting queue is walked in the policy's order; a request is admitted if

   * the running set has room (``max_running_requests``),
   * its adapter is already in a slot, or a slot can be had: an empty one, or one whose adapter has
     no running or just-admitted request (otherwise the request is *skipped*, and the walk goes on:
     a request of another adapter further down may fit),
   * the policy agrees (the drainer's hook; FCFS always does),
   * its pages fit in the free pages, keeping one page per running request in reserve for decode
     growth (otherwise the walk stops: pages are shared by all, and skipping would starve the
     larger request behind smaller ones),
   * its tokens fit in the step's token budget (``max_prefill_tokens``); a prompt longer than what
     is left is split in chunks of at most ``chunked_prefill_size`` (one chunked prompt at a time).

2. **Decode** of every running request that has finished its prefill, otherwise. Each gets the
   page its next token needs; when none is free, the newest running request is preempted: its
   pages are freed, it goes back to the waiting queue with its outputs kept, and its prompt and
   outputs are recomputed when it is admitted again. Nothing is lost and nothing crashes.

3. **Idle** when nothing waits or runs.

Adapter slot loads the plan needs are listed in it; the engine has the runner perform them before
the step. Policies (FCFS here, the drainers in :mod:`jlora.scheduler.policies`) change only the
order of the walk and which requests may be admitted; they see the same state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from jlora.adapters.pool import AdapterPool
from jlora.runner.kv_cache import OutOfPages, PagePool
from jlora.scheduler.request import Request, Status


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    max_running_requests: int
    """Most requests admitted at once (prefilling or decoding)."""
    max_prefill_tokens: int
    """Token budget of one prefill step."""
    chunked_prefill_size: int
    """Longest chunk of one prompt in a prefill step."""
    max_prefill_seqs: int
    """Most sequences in one prefill step."""
    base_uses_slot: bool = False
    """Requests without an adapter count as one adapter against the slots (SGLang's behaviour)."""


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
    preempted: list[Request] = field(default_factory=list)


@dataclass(frozen=True)
class SchedulerState:
    """What the scheduler holds at one moment, for traces (adapters by name; None = base model)."""

    time: float
    slots: tuple[str | None, ...]  # adapter in each device slot
    waiting: dict[str | None, int]  # waiting requests per adapter
    longest_wait: dict[str | None, float]  # seconds the longest-waiting one has waited
    running: dict[str | None, int]  # admitted (prefilling or decoding) requests per adapter
    paused: dict[str | None, int]  # paused requests per adapter
    draining: dict[str | None, str | None]  # victim adapter -> the starved adapter it drains for
    free_pages: int


class Policy(Protocol):
    """What a scheduling policy may change (see :mod:`jlora.scheduler.policies`)."""

    def order(self, waiting: list[Request], now: float) -> list[Request]:
        """The order in which admission walks the waiting queue."""
        ...

    def before_prefill(self, sched: Scheduler, now: float) -> None:
        """Called once per scheduling round, before the walk (the drainer updates its marks)."""
        ...

    def may_admit(self, sched: Scheduler, req: Request, now: float) -> bool:
        """Whether ``req`` may be admitted in this round (its adapter has or can get a slot)."""
        ...

    def draining(self) -> dict[str | None, str | None]:
        """Current drain marks: victim adapter -> the starved adapter it drains for."""
        ...


class FCFS:
    """First come, first served; admission skips requests whose adapter cannot get a slot."""

    def order(self, waiting: list[Request], now: float) -> list[Request]:
        return sorted(waiting, key=lambda r: (r.wait_since, r.rid))

    def before_prefill(self, sched: Scheduler, now: float) -> None:
        return None

    def may_admit(self, sched: Scheduler, req: Request, now: float) -> bool:
        return True

    def draining(self) -> dict[str | None, str | None]:
        return {}


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
        self._admitted_order: dict[int, int] = {}  # rid -> admission counter (newest = largest)
        self._counter = 0

    # ------------------------------------------------------------------ queue
    def add(self, req: Request) -> None:
        req.status = Status.WAITING
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def running_adapters(self) -> set[str | None]:
        return {r.lora_name for r in self.running}

    def adapter_busy(self, name: str | None) -> bool:
        return name in self.running_adapters()

    # ------------------------------------------------------------------ the decision
    def schedule(self, now: float) -> StepPlan:
        plan = self._schedule_prefill(now)
        if plan is not None:
            return plan
        decoding = [r for r in self.running if not r.in_prefill and r.status == Status.RUNNING]
        if not decoding:
            return StepPlan("idle")
        plan = StepPlan("decode")
        for req in sorted(decoding, key=lambda r: self._admitted_order[r.rid]):
            if req.status != Status.RUNNING:  # preempted below, to make room for an older one
                continue
            while len(req.pages) < self.pages.pages_for(req.num_tokens):
                try:
                    req.pages += self.pages.alloc(1)
                except OutOfPages:
                    victim = self._newest_running()
                    self._preempt(victim, now)
                    plan.preempted.append(victim)
                    if victim is req:
                        break
            if req.status == Status.RUNNING:
                plan.decode.append(req)
        if not plan.decode:
            return StepPlan("idle", preempted=plan.preempted)
        self.adapters.touch(r.lora_name for r in plan.decode if r.lora_name is not None)
        return plan

    def _slots_needed(self, names: set[str | None]) -> int:
        return len({n for n in names if n is not None or self.config.base_uses_slot})

    def _schedule_prefill(self, now: float) -> StepPlan | None:
        cfg = self.config
        chunked = [r for r in self.running if r.in_prefill and r.num_computed > 0]
        if not self.waiting and not chunked:
            return None
        self.policy.before_prefill(self, now)
        plan = StepPlan("prefill")
        budget = cfg.max_prefill_tokens
        busy: set[str | None] = self.running_adapters()
        for req in chunked:  # at most one
            n = min(req.num_tokens - req.num_computed, cfg.chunked_prefill_size, budget)
            plan.prefill.append(PrefillItem(req, req.num_computed, req.num_computed + n))
            budget -= n
        chunking = bool(chunked)
        reserve = len(self.running)
        for req in self.policy.order(self.waiting, now):
            if budget <= 0 or len(plan.prefill) >= cfg.max_prefill_seqs:
                break
            if len(self.running) >= cfg.max_running_requests:
                break
            name = req.lora_name
            new_adapter = name not in busy
            if new_adapter:
                if self._slots_needed(busy | {name}) > self.adapters.num_slots:
                    continue
                if name is not None and self.adapters.free_slot_for(name, busy - {None}) is None:
                    continue
            if not self.policy.may_admit(self, req, now):
                continue
            need = self.pages.pages_for(req.num_tokens) - len(req.pages)
            if need + reserve > self.pages.num_free:
                break
            n = req.num_tokens - req.num_computed
            if n > budget or n > cfg.chunked_prefill_size:
                if chunking:
                    break
                n = min(budget, cfg.chunked_prefill_size)
                chunking = True
            if name is not None:
                taken = self.adapters.take_slot(name, busy - {None})
                assert taken is not None  # checked by free_slot_for above
                slot, must_load = taken
                if must_load:
                    plan.loads.append((slot, name))
            req.pages += self.pages.alloc(need)
            self._admit(req)
            busy.add(name)
            reserve += 1
            plan.prefill.append(PrefillItem(req, req.num_computed, req.num_computed + n))
            budget -= n
        if not plan.prefill:
            return None
        self.adapters.touch(i.req.lora_name for i in plan.prefill if i.req.lora_name is not None)
        return plan

    def _admit(self, req: Request) -> None:
        self.waiting.remove(req)
        req.status = Status.RUNNING
        self.running.append(req)
        self._counter += 1
        self._admitted_order[req.rid] = self._counter

    def _newest_running(self) -> Request:
        return max(
            (r for r in self.running if r.status == Status.RUNNING),
            key=lambda r: self._admitted_order[r.rid],
        )

    def _preempt(self, req: Request, now: float) -> None:
        """Free the request's pages and send it back to wait; it will be recomputed."""
        self.pages.free(req.pages)
        req.pages = []
        req.num_computed = 0
        req.num_preemptions += 1
        req.wait_since = now
        self.running.remove(req)
        self._admitted_order.pop(req.rid, None)
        self.add(req)

    def snapshot(self, now: float) -> SchedulerState:
        """The state traces log after each step (O(requests), host only)."""
        waiting: dict[str | None, int] = {}
        longest: dict[str | None, float] = {}
        paused: dict[str | None, int] = {}
        for r in self.waiting:
            waiting[r.lora_name] = waiting.get(r.lora_name, 0) + 1
            longest[r.lora_name] = max(longest.get(r.lora_name, 0.0), now - r.wait_since)
        running: dict[str | None, int] = {}
        for r in self.running:
            if r.status == Status.PAUSED:
                paused[r.lora_name] = paused.get(r.lora_name, 0) + 1
            else:
                running[r.lora_name] = running.get(r.lora_name, 0) + 1
        return SchedulerState(
            time=now,
            slots=tuple(self.adapters.occupant),
            waiting=waiting,
            longest_wait=longest,
            running=running,
            paused=paused,
            draining=dict(self.policy.draining()),
            free_pages=self.pages.num_free,
        )

    # ------------------------------------------------------------------ after a step
    def finish(self, req: Request) -> None:
        """Release a finished (or failed) request's pages and its place."""
        self.pages.free(req.pages)
        req.pages = []
        if req in self.running:
            self.running.remove(req)
        if req in self.waiting:
            self.waiting.remove(req)
        self._admitted_order.pop(req.rid, None)
        req.status = Status.FINISHED
