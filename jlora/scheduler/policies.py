"""Scheduling policies: FCFS, and four LoRA drainers that bound an adapter's wait for a slot.

The problem
-----------
With fewer device slots than adapters in demand, admission gives a slot only to an adapter with no
running request. An adapter that keeps receiving requests therefore keeps its slot for good, and
the requests of the others wait for as long as its stream lasts (the seed measured a P99 TTFT of
39.6 s against a median of 83 ms). A *drainer* notices an adapter that has waited past
``lora_drain_wait_threshold`` seconds (the *starved* one) and makes a running adapter (the
*victim*) give up its slot to it.

What is decided, when, from which state
---------------------------------------
Every policy is consulted once per admission round of :meth:`Scheduler.schedule
<jlora.scheduler.scheduler.Scheduler.schedule>`, between two steps, from host state only:

* ``before_prefill``: per adapter, the waiting count and the longest wait (``now - wait_since``)
  of its waiting requests (and, for ``preempt``, its paused ones), and the largest remaining budget
  (``max_new_tokens - generated``) of its running requests; then the marks ``victim -> starved``
  are set and cleared. O(requests).
* ``pauses``: the running requests to pause now (``preempt`` and ``fair``).
* ``order``: the walk's order: FCFS by ``wait_since``, paused requests first; ``preempt`` and
  ``fair`` put the requests of the adapters past the threshold before all others.
* ``holds``: slots kept for a starved adapter until it runs (``reserve``, ``preempt``, ``fair``).
* ``may_admit``: the draining adapter's admission tolerance (``sglang`` and ``reserve``); a
  victim admits nothing new (``preempt`` and ``fair``).

The scheduler, not the policy, guarantees progress: after ``progress_bound`` rounds without a
token it sets the policy's pauses and holds aside until one comes (:class:`Scheduler
<jlora.scheduler.scheduler.Scheduler>`).

The policies (``lora_drain_policy``; bounds are on the time from when a request of an adapter with
no slot starts to wait until it is admitted; its first token follows one prefill step later.
``T`` is the threshold, ``step`` the longest step, ``t_dec`` a decode step; "a round" happens
between every two steps):

* Off (the threshold is 0: :class:`~jlora.scheduler.scheduler.FCFS`): no bound; the wait grows
  with the hot stream.
* ``sglang`` (:class:`SGLangDrainer`): SGLang's drainer, reproduced exactly. Bound: ``T + step +
  R * t_dec`` plus the prefill steps that run meanwhile, where ``R`` is the victim's largest
  remaining budget when marked, *if* no new request of the victim is admitted under the 1.2x
  tolerance and no other adapter takes the freed slot first. Neither is guaranteed: each tolerated
  request may raise ``R`` by 20%, so a victim whose requests (all of length ``M``) keep arriving
  within ``M / 6`` decode steps of each other never drains. Trades: median TTFT, since a draining
  adapter's own new requests wait for the whole drain.
* ``reserve`` (:class:`ReserveDrainer`): the same, with its gaps closed. Bound: ``T + step +
  1.2 * R * t_dec`` plus the prefill steps that run meanwhile. Trades the same as ``sglang``.
* ``preempt`` (:class:`PreemptDrainer`): pauses the victim once it has run for its residency
  (``max(T, 20 loads)``). Bound: ``T + step`` plus what is left of that residency, while at most
  ``max_loras_per_batch`` adapters (minus pinned ones) pass the threshold within one step (each
  extra batch of that many adds a round). Trades: the victim's requests stall (their time per
  output token grows by the pause) and their KV pages stay allocated while paused; slot loads grow.
* ``fair`` (:class:`FairDrainer`): ``preempt``'s rotation, but the busiest adapters are never
  victims, the victim is the one whose pause stalls the fewest requests, and a victim's request
  that would finish within ``GRACE`` is let finish. Bound: ``preempt``'s plus ``GRACE``, for as
  many starving adapters at once as there are slots not held by the busiest (its docstring).
  Trades the same as ``preempt``, on fewer requests.

How each fares against the drainer off over the workload suite (bursty, skewed, many adapters,
trace replay, in the simulator): ``experiments/results/policy_suite.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from jlora.scheduler.request import Request, Status
from jlora.scheduler.scheduler import FCFS, Adapter, Scheduler

__all__ = [
    "DRAIN_POLICIES",
    "FCFS",
    "FairDrainer",
    "PreemptDrainer",
    "ReserveDrainer",
    "SGLangDrainer",
]

DRAIN_POLICIES = ("sglang", "reserve", "preempt", "fair")
DRAIN_TOLERANCE = 1.2
"""A draining adapter still admits a request whose ``max_new_tokens`` is at most this times its
largest remaining budget (it will not lengthen the drain much). SGLang's constant."""


def _name_key(name: Adapter) -> tuple[bool, str]:
    """A total order on adapter names (None first), to break ties deterministically."""
    return (name is not None, name or "")


def _sorted_by_name(names: Iterable[Adapter]) -> list[Adapter]:
    """``names`` sorted by :func:`_name_key` (None first): the strings sorted as they are, several
    times faster than comparing a key tuple per name (it matters with a hundred adapters)."""
    names = list(names)
    strings = sorted(a for a in names if a is not None)
    return [None] * (len(names) - len(strings)) + strings


def adapter_stats(
    sched: Scheduler, now: float, include_paused: bool = False
) -> tuple[dict[Adapter, int], dict[Adapter, float]]:
    """Per adapter with queued requests (waiting ones; with ``include_paused``, paused ones too):
    how many, and the seconds the longest of them has waited (since ``wait_since``). Adapters
    with none are absent from both. Once per admission round over every queued request: a plain
    loop over the per-adapter minimum of wait_since, and two plain dicts (no object per adapter:
    with a hundred adapters queued, building one each was a third of the cost)."""
    count: dict[Adapter, int] = {}
    since: dict[Adapter, float] = {}
    queued = sched.waiting + sched.paused if include_paused else sched.waiting
    for r in queued:
        name, t = r.lora_name, r.wait_since
        n = count.get(name)
        if n is None:
            count[name], since[name] = 1, t
        else:
            count[name] = n + 1
            if t < since[name]:
                since[name] = t
    return count, {a: now - t for a, t in since.items()}


def max_remaining(sched: Scheduler) -> dict[Adapter, int]:
    """Per running adapter, the largest remaining budget (``max_new_tokens - generated``) of its
    running requests: what SGLang's drainer reads to pick and bound a victim."""
    left: dict[Adapter, int] = {}
    for r in sched.running:
        name, budget = r.lora_name, r.params.max_new_tokens - len(r.output)
        if budget > left.get(name, -1):
            left[name] = budget
    return left


class SGLangDrainer(FCFS):
    """SGLang's ``LoRADrainer`` (PR #17913), reproduced exactly.

    At every admission round: recompute each adapter's waiting count, longest wait and largest
    remaining budget of its running requests. Only when the running adapters fill every slot:
    adapters whose longest wait exceeds the threshold (with a request waiting) are *starving*;
    those not already drained for are taken most-starved first, and each marks as its victim the
    running, not-yet-draining adapter with the smallest largest remaining budget. While an adapter
    drains, a new request of it is admitted only if its ``max_new_tokens`` is at most 1.2x that
    adapter's largest remaining budget. A mark is cleared when its adapter has no running request.

    The base model counts as an adapter only with ``base_model_uses_slot`` (in SGLang it always
    takes a slot). Kept as SGLang has them (``reserve`` closes them): the freed slot is not
    reserved (admission gives it to whichever waiting request comes first); the base model
    (``None``) can drain but never be the starved party (``None`` doubles as "not draining"); a
    running adapter whose requests wait for other reasons (pages) can be "starving" and even drain
    for itself; the tolerance may extend a drain without limit.

    Bound on a cold adapter's wait: see the module docstring (``T + step + R * t_dec`` plus the
    prefill steps meanwhile, only if the tolerance admits nothing and the slot is not taken).
    Trades median TTFT: the victim's own new requests wait out the whole drain.
    """

    name = "sglang"

    def __init__(self, threshold: float):
        if not threshold > 0:
            raise ValueError(f"lora_drain_wait_threshold={threshold!r} must be positive here")
        self.threshold = threshold
        self.marks: dict[Adapter, Adapter] = {}  # victim -> the starved adapter it drains for
        self.queued: dict[Adapter, int] = {}
        """Per adapter, its queued requests at this round (see :func:`adapter_stats`)."""
        self.longest_wait: dict[Adapter, float] = {}
        """Per adapter with queued requests, the seconds the longest of them has waited."""
        self._remaining: dict[Adapter, int] | None = None  # max_remaining of this round

    def draining(self) -> dict[Adapter, Adapter]:
        return dict(self.marks)

    def _left(self, sched: Scheduler, name: Adapter) -> int:
        """The largest remaining budget of ``name``'s running requests, as at the start of this
        round (counted on first use: most rounds choose no victim)."""
        if self._remaining is None:
            self._remaining = max_remaining(sched)
        return self._remaining.get(name, 0)

    def before_prefill(self, sched: Scheduler, now: float) -> None:
        self.queued, self.longest_wait = adapter_stats(sched, now)
        self._remaining = None
        running = sched.running_adapters()
        self._mark(sched, running)
        for victim in [v for v in self.marks if v not in running]:  # fully drained
            del self.marks[victim]
        if self.marks:  # may_admit reads the budgets as they were before this round's walk
            self._left(sched, None)

    def _mark(self, sched: Scheduler, running: set[Adapter]) -> None:
        if sched.slot_units(running) < sched.adapters.num_slots:
            return
        # In SGLang the base model always takes a slot; here it counts only with
        # base_model_uses_slot, and when it does not it is neither starved of nor holding a slot.
        eligible = {a for a in running if a not in self.marks and sched.uses_unit(a)}
        if not eligible:
            return  # no victim left to mark (every running adapter drains already)
        # (An adapter in `longest_wait` has a request waiting.)
        starving = {
            a for a, w in self.longest_wait.items() if w > self.threshold and sched.uses_unit(a)
        }
        served = {b for b in self.marks.values() if b is not None}
        new = sorted(starving - served, key=lambda a: (-self.longest_wait[a], _name_key(a)))
        for starved in new:
            if not eligible:
                break
            victim = min(eligible, key=lambda a: (self._left(sched, a), _name_key(a)))
            if starved is not None:  # SGLang stores None as "not draining": no mark
                self.marks[victim] = starved
            eligible.remove(victim)

    def may_admit(self, sched: Scheduler, req: Request, now: float) -> bool:
        if self.marks.get(req.lora_name) is None:
            return True
        budget = self._left(sched, req.lora_name)
        return req.params.max_new_tokens <= DRAIN_TOLERANCE * budget


class ReserveDrainer(SGLangDrainer):
    """SGLang's drainer with its known gaps closed.

    * The slot a victim frees is **held** for the starved adapter it drained for: no other adapter
      gets it, and the victim cannot sit down again, until the starved adapter runs. The mark then
      ends (also when the starved adapter got another slot first, or has nothing left waiting):
      the victim stops draining at once instead of refusing requests for nothing.
    * The base model (``None``, when ``base_model_uses_slot``) can be the starved party.
    * Only an adapter that cannot get a slot is starving (not one that runs but waits for pages),
      and the slots count as saturated for it exactly when it cannot get one (pinned slots too).
      A pinned adapter is never a victim (its slot cannot be freed).
    * The 1.2x tolerance is measured against the largest remaining budget of the requests the
      victim was running when marked, so tolerated requests cannot extend the drain beyond 1.2x
      of what it owed then.

    Bound on a cold adapter's wait: ``T + step + 1.2 * R * t_dec`` plus the prefill steps that run
    meanwhile, ``R`` being the victim's largest remaining budget when marked (the smallest among
    the running adapters). Trades median TTFT like ``sglang``: a victim's new requests longer than
    the tolerance wait for the whole drain, and the drain can last a full generation length.
    """

    name = "reserve"
    _paused_wait = False  # whether paused requests count as waiting (preempt's do)

    def __init__(self, threshold: float):
        super().__init__(threshold)
        self.owed: dict[Adapter, set[int]] = {}  # victim -> rids it was running when marked
        self.starved: list[Adapter] = []  # past the threshold with no slot, most starved first
        # The owed budgets of this round (:meth:`_owed_budget`) and the sched.running_changes
        # they were counted at: may_admit asks for one for every waiting request of a victim, and
        # they change only with the running set.
        self._owed_budgets: tuple[int, dict[Adapter, int]] | None = None

    def holds(self) -> Mapping[Adapter, Adapter]:
        return self.marks

    @property
    def starved_after(self) -> float:
        """The wait after which an adapter without a slot is starving (the threshold)."""
        return self.threshold

    def before_prefill(self, sched: Scheduler, now: float) -> None:
        self.queued, self.longest_wait = adapter_stats(sched, now, self._paused_wait)
        self._remaining = None
        self._owed_budgets = None
        running = sched.running_adapters()
        for victim, starved in list(self.marks.items()):
            if starved in running or starved not in self.queued:
                del self.marks[victim]
                self.owed.pop(victim, None)
        for starved in self._starving(sched, running):
            victim = self._victim(sched, running, starved)
            if victim is None:
                break
            self.marks[victim] = starved
            self.owed[victim] = {r.rid for r in sched.running if r.lora_name == victim}
            self._on_mark(sched, victim)

    def _on_mark(self, sched: Scheduler, victim: Adapter) -> None:
        return None

    def _starving(self, sched: Scheduler, running: set[Adapter]) -> list[Adapter]:
        """Adapters past the threshold that need a victim, most starved first: those that can get
        a slot now are given theirs first (in the same order), and those already drained for are
        served. An adapter that owes its slot to another is not starving until that one runs."""
        after, longest_wait = self.starved_after, self.longest_wait
        not_starving = running.union(self.marks)  # they run, or owe their slot
        if not sched.uses_unit(None):
            not_starving.add(None)  # the base model, when it takes no slot
        # (An adapter in `longest_wait` has a request queued.) Most starved first, ties by name:
        # sorted by name, then (stable) by the wait, longest first.
        self.starved = _sorted_by_name(
            a for a, w in longest_wait.items() if w > after and a not in not_starving
        )
        self.starved.sort(key=longest_wait.__getitem__, reverse=True)
        served = set(self.marks.values())
        busy, claimed, need = set(running), set(), []
        # None of these adapters is in `busy`: once no slot unit is left for one, free_slot
        # refuses them all, and the rest need a victim without asking it once per adapter.
        no_unit_left = sched.slot_units(busy) >= sched.adapters.num_slots
        for a in self.starved:
            if a in served:
                continue
            slot = None if no_unit_left else sched.free_slot(a, busy, claimed)
            if slot is None:
                need.append(a)
            else:
                busy.add(a)
                claimed.add(slot)
                no_unit_left = sched.slot_units(busy) >= sched.adapters.num_slots
        return need

    def _eligible(self, sched: Scheduler, running: set[Adapter]) -> list[Adapter]:
        return [
            a
            for a in running
            if a not in self.marks and sched.uses_unit(a) and a not in sched.adapters.pinned
        ]

    def _victim(self, sched: Scheduler, running: set[Adapter], starved: Adapter) -> Adapter | None:
        eligible = self._eligible(sched, running)
        if not eligible:
            return None
        return min(eligible, key=lambda a: (self._left(sched, a), _name_key(a)))

    def may_admit(self, sched: Scheduler, req: Request, now: float) -> bool:
        name = req.lora_name
        if name not in self.marks:
            return True
        return req.params.max_new_tokens <= DRAIN_TOLERANCE * self._owed_budget(sched, name)

    def _owed_budget(self, sched: Scheduler, victim: Adapter) -> int:
        """The largest remaining budget of the requests ``victim`` was running when marked that
        still run (0 if none does). Counted for every victim at once, in one pass over the
        running requests, and kept until the running set changes."""
        if self._owed_budgets is None or self._owed_budgets[0] != sched.running_changes:
            budgets: dict[Adapter, int] = {}
            for r in sched.running:
                owed = self.owed.get(r.lora_name)
                if owed is not None and r.rid in owed:
                    name, budget = r.lora_name, r.remaining_budget
                    if name not in budgets or budget > budgets[name]:
                        budgets[name] = budget
            self._owed_budgets = (sched.running_changes, budgets)
        return self._owed_budgets[1].get(victim, 0)


class PreemptDrainer(ReserveDrainer):
    """Bounded waiting by pausing: the victim gives up its slot at once.

    When an adapter with no slot has waited past the threshold (its waiting *or paused* requests;
    a paused request waits from the moment it paused), the running adapter chosen as victim has
    its decoding requests **paused** before this round's walk: they leave the running set and
    keep their KV pages and outputs. The freed slot is held for the starved adapter, which is
    admitted in the same round. A victim's request in the middle of its (chunked) prefill is not
    paused (that would throw its chunks away): it finishes its prefill, admits nothing new
    meanwhile, and is paused in the first round after. Paused requests resume as soon as their
    adapter can get a slot again (a slot freed by an adapter that finished, or, once they have
    waited past the threshold themselves, one they take by pausing someone else), before new
    arrivals of other adapters, and continue decoding from their cache: their tokens are those of
    an unpaused run. Under page pressure, paused requests are preempted by recompute (most
    recently paused first).

    Guards against thrashing: an adapter is a victim only after it has run for ``residency``
    seconds since it last sat down (:attr:`Scheduler.seated_since
    <jlora.scheduler.scheduler.Scheduler.seated_since>`): the threshold, and at least
    :attr:`SWAPS_PER_RESIDENCY` times the measured load time of an adapter, so that swaps take at
    most a small share of the time; and nobody is paused under **overload** (a request of a running
    adapter has waited past the threshold for the batch or the pages, not for a slot: slots are
    not what is short, and pausing would add no capacity).

    The victim is the running adapter with the fewest running requests (the fewest requests
    stalled), ties broken by the smallest largest remaining budget.

    Bound on a cold adapter's wait: ``T + step`` plus, if every running adapter sat down less than
    ``residency`` ago, the rest of that residency, and plus the prefill steps of a victim's
    request caught mid-prefill; while at most as many adapters as there are unpinned slots pass
    the threshold within one step (with more, one step more per such batch), given pages and
    ``max_running_requests`` allow, and without overload. Nobody starves: paused requests count
    as waiting and get the same bound for their resumption.

    Trades: the paused requests stall (their time per output token and E2E grow by the pause),
    their pages stay allocated while paused, and every pause costs a slot load on both sides.
    """

    name = "preempt"
    _paused_wait = True
    SWAPS_PER_RESIDENCY = 20
    """A residency lasts at least this many adapter loads' time (swaps <= 5% of the time)."""

    def __init__(self, threshold: float):
        super().__init__(threshold)
        self._to_pause: list[Request] = []
        self.now = 0.0  # the time of the round being decided
        self.overloaded = False
        """Whether the last round found the engine overloaded (no pauses then)."""

    def residency(self, sched: Scheduler) -> float:
        """Seconds an adapter runs before it may be a victim."""
        return max(self.threshold, self.SWAPS_PER_RESIDENCY * (sched.load_seconds or 0.0))

    def before_prefill(self, sched: Scheduler, now: float) -> None:
        self.now = now
        super().before_prefill(sched, now)
        self._to_pause = [] if self.overloaded else self._victims_to_pause(sched, now)

    def _starving(self, sched: Scheduler, running: set[Adapter]) -> list[Adapter]:
        # Overload: a running adapter (not one owing its slot) has a request that has waited
        # past the threshold, for the batch, the pages or the prefill budget, not for a slot:
        # the engine is short of capacity, and freeing slots would add none.
        # (Over the running adapters, fewer than the queued ones; one not in `longest_wait` has
        # nothing queued, and the threshold is positive.)
        self.overloaded = any(
            self.longest_wait.get(a, 0.0) > self.threshold and a not in self.marks for a in running
        )
        return [] if self.overloaded else super()._starving(sched, running)

    def _victims_to_pause(self, sched: Scheduler, now: float) -> list[Request]:
        """The decoding requests of every marked victim (those mid-prefill wait a round)."""
        if not self.marks:
            return []
        return [r for r in sched.running if r.lora_name in self.marks and not r.in_prefill]

    def pauses(self, sched: Scheduler, now: float) -> Sequence[Request]:
        out, self._to_pause = self._to_pause, []
        return out

    def order(self, queue: list[Request], now: float) -> list[Request]:
        """Requests of starved adapters first (most starved first: they take the slots freed or
        free for them), then paused requests, then the waiting ones, each by ``wait_since``."""
        rank = {a: i for i, a in enumerate(self.starved)}
        last = len(rank)

        def key(r: Request):
            return (rank.get(r.lora_name, last), r.status != Status.PAUSED, r.wait_since, r.rid)

        return sorted(queue, key=key)

    def _eligible(self, sched: Scheduler, running: set[Adapter]) -> list[Adapter]:
        """Running adapters that may be victims: unmarked, unpinned, past their residency."""
        seated_before = self.now - self.residency(sched)
        return [
            a
            for a in super()._eligible(sched, running)
            if sched.seated_since.get(a, -math.inf) <= seated_before
        ]

    def _victim(self, sched: Scheduler, running: set[Adapter], starved: Adapter) -> Adapter | None:
        eligible = self._eligible(sched, running)
        if not eligible:
            return None
        count = sched.running_count  # (every eligible adapter runs)
        return min(
            eligible,
            key=lambda a: (count.get(a, 0), self._left(sched, a), _name_key(a)),
        )

    def may_admit(self, sched: Scheduler, req: Request, now: float) -> bool:
        return req.lora_name not in self.marks  # a victim owes its slot: it admits nothing new


class FairDrainer(PreemptDrainer):
    """Fair slot scheduling: ``preempt``'s rotation, taking from each rotation as few requests as
    it can and never the busiest adapters.

    State kept: the drain marks (victim -> starved adapter) and, from the scheduler, when each
    running adapter sat down and the measured decode-step and load times. Nothing else: no
    counters, no history.

    Decided each round (host state only, O(requests)), as ``preempt`` does except where said:

    * An adapter with no slot whose oldest request (waiting or paused) has waited past ``T`` is
      *starving*; most starved first, each gets a victim, whose slot is then held for it.
    * **Hot** adapters (running, with at least their share of the demand: running, waiting and
      paused requests over the slots) are never victims: where off's median lives. While some
      adapter without a slot has demand, at least one slot holder is not hot (the holders'
      demand would otherwise sum past the total), so a victim exists once its residency is over
      unless that holder is pinned (pinned slots never rotate).
    * The victim is the not-hot running adapter past its residency (``preempt``'s: ``max(T,
      SWAPS_PER_RESIDENCY loads)``) whose pause would **hurt** the fewest requests (running ones
      with more than ``GRACE`` seconds left at the measured decode step), then the smallest
      largest remaining budget.
    * The victim admits nothing new; its decoding requests with more than ``GRACE`` seconds
      left are **paused** at once (KV kept, resumed from their cache: the tokens of an unpaused
      run); those about to finish are let finish, and the slot changes hands when they have.
      Nobody is paused under overload (``preempt``'s test); a request mid-prefill is paused once
      its prefill is done.

    Bound on a wait for a slot: ``T + R + GRACE + step`` plus the prefill steps of a victim's
    request caught mid-prefill, ``R`` what is left of the victim's residency, for as many starving
    adapters at once as there are unpinned slots not held by hot adapters; each further such batch
    waits one more round. Conditions as ``preempt``'s (pages and ``max_running_requests`` allow;
    no overload). Trades: a paused request stalls until its adapter sits again (E2E); each swap
    costs a load on both sides. Against ``preempt``, whose mechanism it keeps: fewer requests
    paused per rotation, none near its end, and none of the busiest adapters'. How it fares over
    the workload suite: ``experiments/results/policy_suite.md``.
    """

    name = "fair"
    GRACE = 0.5
    """Seconds: a victim's request that would finish within this is never paused."""

    def __init__(self, threshold: float):
        super().__init__(threshold)
        self.hot: set[Adapter] = set()
        """Running adapters with at least their share of the demand (never victims)."""

    def _starving(self, sched: Scheduler, running: set[Adapter]) -> list[Adapter]:
        need = super()._starving(sched, running)
        demand = dict(self.queued)
        for a, n in sched.running_count.items():
            demand[a] = demand.get(a, 0) + n
        share = sum(demand.values()) / sched.adapters.num_slots
        self.hot = {a for a in running if demand.get(a, 0) >= share}
        return need

    def _outlasts_grace(self, sched: Scheduler, req: Request) -> bool:
        """Whether a pause would stall ``req``: more than ``GRACE`` seconds left at the measured
        decode step. The victim's choice and its pauses read the same test."""
        return req.remaining_budget * (sched.decode_seconds or 0.0) > self.GRACE

    def _hurt(self, sched: Scheduler) -> dict[Adapter, int]:
        """Per running adapter, its requests that a pause would stall."""
        hurt: dict[Adapter, int] = {}
        for r in sched.running:
            if self._outlasts_grace(sched, r):
                hurt[r.lora_name] = hurt.get(r.lora_name, 0) + 1
        return hurt

    def _victim(self, sched: Scheduler, running: set[Adapter], starved: Adapter) -> Adapter | None:
        candidates = [a for a in self._eligible(sched, running) if a not in self.hot]
        if not candidates:
            return None
        hurt = self._hurt(sched)
        return min(candidates, key=lambda a: (hurt.get(a, 0), self._left(sched, a), _name_key(a)))

    def _victims_to_pause(self, sched: Scheduler, now: float) -> list[Request]:
        if not self.marks:
            return []
        return [
            r
            for r in sched.running
            if r.lora_name in self.marks and not r.in_prefill and self._outlasts_grace(sched, r)
        ]
