"""Scheduling policies: FCFS, and three LoRA drainers that bound an adapter's wait for a slot.

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
* ``pauses``: the running requests to pause now (``preempt`` only).
* ``order``: the walk's order: FCFS by ``wait_since``, paused requests first; ``preempt`` puts
  the requests of the adapters past the threshold before all others.
* ``holds``: slots kept for a starved adapter until it runs (``reserve`` and ``preempt``).
* ``may_admit``: the draining adapter's admission tolerance (``sglang`` and ``reserve``).

The policies (``lora_drain_policy``; bounds are on the time from when a request of an adapter with
no slot starts to wait until it is admitted; its first token follows one prefill step later.
``T`` is the threshold, ``step`` the longest step, ``t_dec`` a decode step; "a round" happens
between every two steps):

* Off (the threshold is 0: :class:`FCFS`): no bound; the wait grows with the hot stream.
* ``sglang`` (:class:`SGLangDrainer`): SGLang's drainer, reproduced exactly. Bound: ``T + step +
  R * t_dec`` plus the prefill steps that run meanwhile, where ``R`` is the victim's largest
  remaining budget when marked, *if* no new request of the victim is admitted under the 1.2x
  tolerance and no other adapter takes the freed slot first. Neither is guaranteed: each tolerated
  request may raise ``R`` by 20%, so a victim whose requests (all of length ``M``) keep arriving
  within ``M / 6`` decode steps of each other never drains. Trades: median TTFT, since a draining
  adapter's own new requests wait for the whole drain.
* ``reserve`` (:class:`ReserveDrainer`): the same, with its gaps closed. Bound: ``T + step +
  1.2 * R * t_dec`` plus the prefill steps that run meanwhile. Trades the same as ``sglang``.
* ``preempt`` (:class:`PreemptDrainer`): pauses the victim. Bound: ``T + step`` while at most
  ``max_loras_per_batch`` adapters (minus pinned ones) pass the threshold within one step (each
  extra batch of that many adds a step). Trades: the victim's requests stall (their time per output
  token grows by the pause) and their KV pages stay allocated while paused; slot loads grow.

Measured on the seed workload (6 adapters, 3 slots, 4 req/s, lengths uniform in 1..512) with the
fake runner (decode 25 ms, prefill 5 ms + 0.1 ms/token, 400 requests, 3 seeds;
``experiments/fake_seed_workload.py``): off, P50/P99 TTFT 3.5 s / 92 s; ``sglang`` at any
threshold, 5.8 s / 23 s; ``reserve`` about the same; ``preempt`` at 0.25 s, 76 ms / 0.34 s, with
P99 E2E 34 s against 100 s off (at 0.1 s: 71 ms / 0.19 s, with twice the slot loads).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jlora.scheduler.request import Request, Status

if TYPE_CHECKING:
    from jlora.config import EngineConfig
    from jlora.scheduler.scheduler import Adapter, Policy, Scheduler

DRAIN_POLICIES = ("sglang", "reserve", "preempt")
DRAIN_TOLERANCE = 1.2
"""A draining adapter still admits a request whose ``max_new_tokens`` is at most this times its
largest remaining budget (it will not lengthen the drain much). SGLang's constant."""


def make_policy(config: EngineConfig) -> Policy:
    """The policy an engine configuration asks for: FCFS when the drain threshold is 0."""
    threshold = config.lora_drain_wait_threshold
    if threshold == 0:
        return FCFS()
    cls = {"sglang": SGLangDrainer, "reserve": ReserveDrainer, "preempt": PreemptDrainer}
    return cls[config.lora_drain_policy](threshold)


def _name_key(name: Adapter) -> tuple[bool, str]:
    """A total order on adapter names (None first), to break ties deterministically."""
    return (name is not None, name or "")


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


@dataclass
class AdapterStats:
    """Recomputed at every admission round."""

    waiting: int = 0
    """Waiting requests (for ``preempt``, paused ones too)."""
    longest_wait: float = 0.0
    """Seconds the longest of them has waited (since ``wait_since``)."""
    max_remaining: int = 0
    """Largest remaining budget (``max_new_tokens - generated``) of its running requests."""


def adapter_stats(
    sched: Scheduler, now: float, include_paused: bool = False
) -> dict[Adapter, AdapterStats]:
    stats: dict[Adapter, AdapterStats] = {}
    queued = sched.waiting + sched.paused if include_paused else sched.waiting
    for r in queued:
        s = stats.setdefault(r.lora_name, AdapterStats())
        s.waiting += 1
        s.longest_wait = max(s.longest_wait, now - r.wait_since)
    for r in sched.running:
        s = stats.setdefault(r.lora_name, AdapterStats())
        s.max_remaining = max(s.max_remaining, r.remaining_budget)
    return stats


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
        self.stats: dict[Adapter, AdapterStats] = {}

    def draining(self) -> dict[Adapter, Adapter]:
        return dict(self.marks)

    def _stat(self, name: Adapter) -> AdapterStats:
        return self.stats.get(name) or AdapterStats()

    def before_prefill(self, sched: Scheduler, now: float) -> None:
        self.stats = adapter_stats(sched, now)
        running = sched.running_adapters()
        self._mark(sched, running)
        for victim in [v for v in self.marks if v not in running]:  # fully drained
            del self.marks[victim]

    def _mark(self, sched: Scheduler, running: set[Adapter]) -> None:
        if sched.slot_units(running) < sched.adapters.num_slots:
            return
        # In SGLang the base model always takes a slot; here it counts only with
        # base_model_uses_slot, and when it does not it is neither starved of nor holding a slot.
        starving = {
            a
            for a, s in self.stats.items()
            if s.waiting > 0 and s.longest_wait > self.threshold and sched.uses_unit(a)
        }
        served = {b for b in self.marks.values() if b is not None}
        new = sorted(starving - served, key=lambda a: (-self.stats[a].longest_wait, _name_key(a)))
        eligible = {a for a in running if a not in self.marks and sched.uses_unit(a)}
        for starved in new:
            if not eligible:
                break
            victim = min(eligible, key=lambda a: (self._stat(a).max_remaining, _name_key(a)))
            if starved is not None:  # SGLang stores None as "not draining": no mark
                self.marks[victim] = starved
            eligible.remove(victim)

    def may_admit(self, sched: Scheduler, req: Request, now: float) -> bool:
        if self.marks.get(req.lora_name) is None:
            return True
        budget = self._stat(req.lora_name).max_remaining
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

    def holds(self) -> Mapping[Adapter, Adapter]:
        return self.marks

    def before_prefill(self, sched: Scheduler, now: float) -> None:
        self.stats = adapter_stats(sched, now, include_paused=self._paused_wait)
        running = sched.running_adapters()
        for victim, starved in list(self.marks.items()):
            if starved in running or self._stat(starved).waiting == 0:
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
        self.starved = sorted(
            (
                a
                for a, s in self.stats.items()
                if s.waiting > 0
                and s.longest_wait > self.threshold
                and a not in running
                and a not in self.marks
                and sched.uses_unit(a)
            ),
            key=lambda a: (-self.stats[a].longest_wait, _name_key(a)),
        )
        served = set(self.marks.values())
        busy, claimed, need = set(running), set(), []
        for a in self.starved:
            if a in served:
                continue
            slot = sched.free_slot(a, busy, claimed)
            if slot is None:
                need.append(a)
            else:
                busy.add(a)
                claimed.add(slot)
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
        return min(eligible, key=lambda a: (self._stat(a).max_remaining, _name_key(a)))

    def may_admit(self, sched: Scheduler, req: Request, now: float) -> bool:
        name = req.lora_name
        if name not in self.marks:
            return True
        owed = self.owed.get(name, set())
        budget = max(
            (r.remaining_budget for r in sched.running if r.rid in owed),
            default=0,
        )
        return req.params.max_new_tokens <= DRAIN_TOLERANCE * budget


class PreemptDrainer(ReserveDrainer):
    """Bounded waiting by pausing: the victim gives up its slot at once.

    When an adapter with no slot has waited past the threshold (its waiting *or paused* requests;
    a paused request waits from the moment it paused), the running adapter chosen as victim has
    all its running requests **paused** before this round's walk: they leave the running set and
    keep their KV pages and outputs. The freed slot is held for the starved adapter, which is
    admitted in the same round. Paused requests resume as soon as their adapter can get a slot
    again (a slot freed by an adapter that finished, or, once they have waited past the threshold
    themselves, one they take by pausing someone else), before new arrivals of other adapters, and
    continue decoding from their cache: their tokens are those of an unpaused run. Under page
    pressure, paused requests are preempted by recompute (most recently paused first).

    The victim is the running adapter with the fewest running requests (the fewest requests
    stalled), ties broken by the smallest largest remaining budget.

    Bound on a cold adapter's wait: ``T + step``, while at most as many adapters as there are
    unpinned slots pass the threshold within one step (with more, one step more per such batch),
    given pages and ``max_running_requests`` allow. Nobody starves: paused requests count as
    waiting and get the same bound for their resumption.

    Trades: the paused requests stall (their time per output token and E2E grow by the pause,
    at most ``T + step`` each time while the bound holds, and a request may be paused more than
    once), their pages stay allocated while paused, and every pause costs a slot load on both
    sides. Nothing is recomputed for the policy's sake (but a victim's request caught in the
    middle of a chunked prefill), and an adapter with no rival waiting past the threshold is never
    disturbed: only requests that would have waited longer than the threshold are affected, so a
    threshold well under a second stays cheap.
    """

    name = "preempt"
    _paused_wait = True

    def __init__(self, threshold: float):
        super().__init__(threshold)
        self._to_pause: list[Request] = []

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

    def _on_mark(self, sched: Scheduler, victim: Adapter) -> None:
        self._to_pause += [r for r in sched.running if r.lora_name == victim]

    def _victim(self, sched: Scheduler, running: set[Adapter], starved: Adapter) -> Adapter | None:
        eligible = self._eligible(sched, running)
        if not eligible:
            return None
        count: dict[Adapter, int] = {}
        for r in sched.running:
            count[r.lora_name] = count.get(r.lora_name, 0) + 1
        return min(
            eligible,
            key=lambda a: (count.get(a, 0), self._stat(a).max_remaining, _name_key(a)),
        )

    def may_admit(self, sched: Scheduler, req: Request, now: float) -> bool:
        return True  # a victim is paused, not drained: nothing to tolerate
