"""Drain policies, decision by decision: SGLang's own drainer tests (one slot; two slots and two
starved adapters; the 1.2x tolerance) on the real scheduler with synthetic requests and a fake
clock (the ``now`` passed in), the gaps ``reserve`` closes, ``preempt``'s pauses, refusals of bad
settings, and the per-step state."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest

from jlora.adapters.pool import AdapterPool
from jlora.build import make_policy
from jlora.clock import FakeClock
from jlora.config import EngineConfig
from jlora.engine import Engine
from jlora.runner.fake import FakeRunner
from jlora.sampling_params import SamplingParams
from jlora.scheduler.pages import PagePool
from jlora.scheduler.policies import (
    FCFS,
    FairDrainer,
    PreemptDrainer,
    ReserveDrainer,
    SGLangDrainer,
)
from jlora.scheduler.request import Request, Status
from jlora.scheduler.scheduler import Scheduler, SchedulerConfig

THRESHOLD = 1.0


def _sched(policy, slots=1, base_uses_slot=False, pinned=()) -> Scheduler:
    pool = AdapterPool(lambda name, path: SimpleNamespace(name=name), slots, None)
    for name in "abcde":
        pool.register(name, "stub", pinned=name in pinned)
    config = SchedulerConfig(
        max_running_requests=64,
        max_prefill_tokens=1024,
        chunked_prefill_size=1024,
        max_prefill_seqs=64,
        base_uses_slot=base_uses_slot,
    )
    return Scheduler(config, PagePool(512, 16), pool, policy)


_rids = iter(range(10**6))


def _request(name, max_new, generated=0, since=0.0) -> Request:
    req = Request(
        rid=next(_rids),
        prompt=np.ones(4, np.int32),
        params=SamplingParams(max_new_tokens=max_new),
        lora_name=name,
        arrival=since,
    )
    for _ in range(generated):
        req.append_token(7, since)
    return req


def _running(sched, name, remaining, generated=1) -> Request:
    """A decoding request of ``name`` with ``remaining`` tokens left (its adapter takes a slot)."""
    req = _request(name, generated + remaining, generated)
    if name is not None and name not in sched.running_adapters():
        assert sched.adapters.take_slot(name, sched.running_adapters() - {None}) is not None
    req.pages = sched.pages.alloc(1)
    req.num_computed = req.num_tokens - 1
    sched.waiting.append(req)
    sched._admit(req)
    return req


def _run_prefill(plan) -> None:
    """What the engine does with a prefill plan's results (one sampled token each)."""
    for item in plan.prefill:
        item.req.num_computed = item.end
        item.req.append_token(7, 0.0)


def _waiting(sched, name, since, max_new=8) -> Request:
    req = _request(name, max_new, since=since)
    sched.add(req)
    return req


# ---------------------------------------------------------------- SGLang's own scenarios
def test_sglang_one_slot_drains_for_the_starved_and_clears_when_drained():
    drainer = SGLangDrainer(THRESHOLD)
    sched = _sched(drainer, slots=1)
    a = _running(sched, "a", remaining=10)
    _waiting(sched, "b", since=0.0)
    drainer.before_prefill(sched, now=0.5)
    assert drainer.draining() == {}  # waited 0.5 s of 1
    drainer.before_prefill(sched, now=1.0)
    assert drainer.draining() == {}  # "exceeds" is strict
    drainer.before_prefill(sched, now=1.5)
    assert drainer.draining() == {"a": "b"}
    assert not drainer.may_admit(sched, _request("a", 13), 1.5)  # 13 > 1.2 * 10
    sched.finish(a)
    drainer.before_prefill(sched, now=1.6)
    assert drainer.draining() == {}  # "a" has no running request left: the mark is cleared


def test_sglang_two_slots_most_starved_gets_the_victim_with_fewest_remaining_tokens():
    drainer = SGLangDrainer(THRESHOLD)
    sched = _sched(drainer, slots=2)
    _running(sched, "a", remaining=30)
    _running(sched, "c", remaining=5)
    _waiting(sched, "b", since=0.0)  # the most starved at t=2
    _waiting(sched, "d", since=0.5)
    drainer.before_prefill(sched, now=2.0)
    assert drainer.draining() == {"c": "b", "a": "d"}


def test_sglang_tolerance_while_draining():
    drainer = SGLangDrainer(THRESHOLD)
    sched = _sched(drainer, slots=1)
    _running(sched, "a", remaining=15)
    _waiting(sched, "b", since=0.0)
    drainer.before_prefill(sched, now=2.0)
    assert drainer.draining() == {"a": "b"}
    assert drainer.may_admit(sched, _request("a", 10), 2.0)
    assert drainer.may_admit(sched, _request("a", 18), 2.0)  # 18 = 1.2 * 15
    assert not drainer.may_admit(sched, _request("a", 20), 2.0)  # 20 > 1.2 * 15
    assert drainer.may_admit(sched, _request("c", 500), 2.0)  # not draining: no limit


def test_sglang_acts_only_when_the_slots_are_saturated():
    drainer = SGLangDrainer(THRESHOLD)
    sched = _sched(drainer, slots=2)
    _running(sched, "a", remaining=10)
    _waiting(sched, "b", since=0.0)
    drainer.before_prefill(sched, now=5.0)
    assert drainer.draining() == {}


def test_sglang_gap_the_base_model_is_never_the_starved_party():
    # With the base model in a slot (SGLang's case), a starved base-model request marks nothing:
    # None doubles as "not draining", and the victim it picked is not offered to the next one.
    drainer = SGLangDrainer(THRESHOLD)
    sched = _sched(drainer, slots=1, base_uses_slot=True)
    _running(sched, "a", remaining=10)
    _waiting(sched, None, since=0.0)
    _waiting(sched, "b", since=0.5)
    drainer.before_prefill(sched, now=2.0)
    assert drainer.draining() == {}
    reserve = ReserveDrainer(THRESHOLD)
    sched = _sched(reserve, slots=1, base_uses_slot=True)
    _running(sched, "a", remaining=10)
    _waiting(sched, None, since=0.0)
    reserve.before_prefill(sched, now=2.0)
    assert reserve.draining() == {"a": None}


# ---------------------------------------------------------------- reserve
class _Holds(FCFS):
    def holds(self):
        return {"a": "b"}


def test_a_held_slot_goes_to_its_beneficiary_only():
    sched = _sched(_Holds(), slots=1)
    a = _running(sched, "a", remaining=1)
    sched.finish(a)
    c = _waiting(sched, "c", since=0.0)  # first in FCFS order, but the slot is held for "b"
    b = _waiting(sched, "b", since=0.1)
    assert sched.free_slot("c") is None and sched.free_slot("a") is None
    assert sched.free_slot("b") == 0
    plan = sched.schedule(now=1.0)
    assert [i.req for i in plan.prefill] == [b] and plan.loads == [(0, "b")]
    assert c.status == Status.WAITING


def test_reserve_holds_the_freed_slot_until_the_starved_runs():
    drainer = ReserveDrainer(THRESHOLD)
    sched = _sched(drainer, slots=1)
    a = _running(sched, "a", remaining=3)
    b = _waiting(sched, "b", since=0.0)
    assert sched.schedule(now=2.0).kind == "decode"  # marks a -> b; a still runs
    assert drainer.draining() == {"a": "b"}
    sched.finish(a)
    _waiting(sched, "a", since=2.5, max_new=1)  # the victim may not take its slot back
    plan = sched.schedule(now=3.0)
    assert [i.req for i in plan.prefill] == [b]
    sched.schedule(now=3.1)
    assert drainer.draining() == {}  # b runs: the mark has done its work


def test_reserve_tolerance_cannot_extend_the_drain():
    # SGLang measures the tolerance against the largest remaining budget of whatever runs, so a
    # tolerated request raises the bar for the next one; reserve measures it against the requests
    # the victim owed when it was marked.
    for cls, admitted in [(SGLangDrainer, True), (ReserveDrainer, False)]:
        drainer = cls(THRESHOLD)
        sched = _sched(drainer, slots=1)
        _running(sched, "a", remaining=15)
        _waiting(sched, "b", since=0.0)
        drainer.before_prefill(sched, now=2.0)
        assert drainer.may_admit(sched, _request("a", 18), 2.0)
        _running(sched, "a", remaining=18, generated=0)  # admitted under the tolerance
        drainer.before_prefill(sched, now=2.1)
        assert drainer.may_admit(sched, _request("a", 21), 2.1) is admitted, cls


def test_reserve_never_drains_a_pinned_adapter_nor_for_a_running_one():
    drainer = ReserveDrainer(THRESHOLD)
    sched = _sched(drainer, slots=2, pinned=("a",))
    _running(sched, "a", remaining=1)
    _running(sched, "c", remaining=50)
    _waiting(sched, "b", since=0.0)
    _waiting(sched, "c", since=0.0)  # c runs: its waiting request is not waiting for a slot
    drainer.before_prefill(sched, now=2.0)
    assert drainer.draining() == {"c": "b"}


# ---------------------------------------------------------------- preempt
def test_preempt_pauses_the_victim_and_seats_the_starved_in_the_same_round():
    drainer = PreemptDrainer(THRESHOLD)
    sched = _sched(drainer, slots=2)
    a1, a2 = _running(sched, "a", remaining=3), _running(sched, "a", remaining=3)
    c1 = _running(sched, "c", remaining=100)  # fewest running requests: the victim
    b = _waiting(sched, "b", since=0.0)
    plan = sched.schedule(now=2.0)
    assert plan.paused == [c1] and c1.status == Status.PAUSED and c1.pages  # pages kept
    assert c1.wait_since == 2.0 and c1.num_pauses == 1
    assert [i.req for i in plan.prefill] == [b] and plan.loads == [(1, "b")]
    assert {r.lora_name for r in sched.running} == {"a", "b"}
    # b's and a's requests finish: the paused one resumes (it decodes in the next decode step).
    for r in (a1, a2, b):
        sched.finish(r)
    plan = sched.schedule(now=2.5)
    assert plan.resumed == [c1] and plan.kind == "decode" and plan.decode == [c1]


def test_preempt_counts_paused_requests_as_waiting():
    drainer = PreemptDrainer(THRESHOLD)
    sched = _sched(drainer, slots=1)
    a = _running(sched, "a", remaining=50)
    _waiting(sched, "b", since=0.0)
    _run_prefill(sched.schedule(now=1.5))
    assert a.status == Status.PAUSED
    plan = sched.schedule(now=2.0)  # a has waited 0.5 s since it paused: not yet starved
    assert a.status == Status.PAUSED and plan.decode and a not in plan.decode
    plan = sched.schedule(now=2.6)  # 1.1 s: b is paused in turn and a resumes
    assert plan.resumed == [a] and [r.lora_name for r in plan.paused] == ["b"]


def test_preempt_lets_a_victim_finish_its_chunked_prefill_then_pauses_it():
    # Recomputing it would throw its chunks away, and a victim caught mid-prefill again and again
    # never produced a token (the livelock of issue #19): it finishes its prefill, then is paused.
    drainer = PreemptDrainer(THRESHOLD)
    sched = _sched(drainer, slots=1)
    chunked = _running(sched, "a", remaining=5, generated=0)
    chunked.num_computed = 2  # of its 4 prompt tokens
    b = _waiting(sched, "b", since=0.0)
    plan = sched.schedule(now=2.0)
    assert not plan.preempted and not plan.paused and drainer.draining() == {"a": "b"}
    assert [i.req for i in plan.prefill] == [chunked]  # b's slot is held until a has drained
    assert not drainer.may_admit(sched, _request("a", 4, since=2.0), 2.0)  # a admits nothing new
    _run_prefill(plan)
    plan = sched.schedule(now=2.1)
    assert plan.paused == [chunked] and chunked.pages and chunked.num_preemptions == 0
    assert [i.req for i in plan.prefill] == [b]


def test_preempt_keeps_a_victim_seated_for_its_residency():
    drainer = PreemptDrainer(THRESHOLD)
    sched = _sched(drainer, slots=1)
    a = _waiting(sched, "a", since=0.0)
    _run_prefill(sched.schedule(now=0.0))  # a sits down at 0.0
    _waiting(sched, "b", since=0.0)
    sched.observe_load(0.1)  # residency = max(T, 20 loads) = 2 s
    assert drainer.residency(sched) == pytest.approx(2.0)
    plan = sched.schedule(now=1.5)  # b is past the threshold, a within its residency
    assert not plan.paused and a.status == Status.RUNNING and drainer.draining() == {}
    plan = sched.schedule(now=2.0)
    assert plan.paused == [a]


def test_preempt_pauses_nobody_under_overload():
    # A request of a running adapter has waited past the threshold for the batch, not for a slot:
    # freeing slots would add no capacity.
    drainer = PreemptDrainer(THRESHOLD)
    sched = _sched(drainer, slots=1)
    sched.config = dataclasses.replace(sched.config, max_running_requests=1)
    _running(sched, "a", remaining=50)
    _waiting(sched, "a", since=0.0)
    _waiting(sched, "b", since=0.0)
    plan = sched.schedule(now=2.0)
    assert drainer.overloaded and not plan.paused and drainer.draining() == {}


# ---------------------------------------------------------------- settings
def test_make_policy_from_the_config():
    base = dict(model="tiny", lora_paths={"a": "dummy:4"}, max_lora_rank=4)
    assert type(make_policy(EngineConfig(**base))) is FCFS
    assert type(make_policy(EngineConfig(**base, lora_drain_policy="preempt"))) is FCFS  # 0: off
    for name, cls in [
        ("sglang", SGLangDrainer),
        ("reserve", ReserveDrainer),
        ("preempt", PreemptDrainer),
    ]:
        policy = make_policy(
            EngineConfig(**base, lora_drain_wait_threshold=0.2, lora_drain_policy=name)
        )
        assert type(policy) is cls and policy.threshold == 0.2
    clock = FakeClock()
    config = EngineConfig(**base, lora_drain_wait_threshold=3)  # sglang by default
    engine = Engine(config, runner=FakeRunner(clock), clock=clock)
    assert type(engine.scheduler.policy) is SGLangDrainer


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"lora_drain_wait_threshold": -1}, "lora_drain_wait_threshold=-1 must be"),
        ({"lora_drain_wait_threshold": -0.5}, "lora_drain_wait_threshold=-0.5 must be"),
        ({"lora_drain_wait_threshold": math.nan}, "lora_drain_wait_threshold=nan must be"),
        ({"lora_drain_wait_threshold": math.inf}, "lora_drain_wait_threshold=inf must be"),
        ({"lora_drain_wait_threshold": "3"}, "lora_drain_wait_threshold='3' must be"),
        ({"lora_drain_wait_threshold": True}, "lora_drain_wait_threshold=True must be"),
        ({"lora_drain_policy": "lifo"}, "lora_drain_policy='lifo' is not one of sglang, reserve"),
        ({"lora_drain_policy": None}, "lora_drain_policy=None is not one of"),
    ],
)
def test_bad_drain_settings_are_refused(kw, needle):
    with pytest.raises(ValueError, match=needle):
        EngineConfig(model="tiny", **kw)
    with pytest.raises(ValueError, match="must be positive"):
        SGLangDrainer(0.0)


# ---------------------------------------------------------------- per-step state
def test_engine_keeps_the_scheduler_state_of_each_decision():
    clock = FakeClock()
    runner = FakeRunner(clock, prefill_base=0.01, prefill_per_token=0.0, decode_base=0.02)
    config = EngineConfig(
        model="tiny",
        lora_paths={"a": "dummy:4", "b": "dummy:4"},
        max_loras_per_batch=1,
        max_lora_rank=4,
        lora_drain_wait_threshold=0.05,
        lora_drain_policy="preempt",
    )
    engine = Engine(config, runner=runner, clock=clock)
    p = SamplingParams(max_new_tokens=20, ignore_eos=True)
    engine.add_request([1, 2], p, "a")
    engine.add_request([1, 2], p, "a")
    engine.step()
    engine.add_request([3], p, "b")
    state = engine.last_state
    assert state.kind == "prefill" and state.batch == {"a": 2} and state.slots == ("a",)
    for _ in range(3):  # 0.06 s of decode: b has waited past the threshold
        engine.step()
    state = engine.last_state
    assert state.longest_wait == {"b": pytest.approx(0.04)} and state.waiting == {"b": 1}
    engine.step()  # a's two requests are paused, b takes the slot
    state = engine.last_state
    assert state.paused == {"a": 2} and state.running == {"b": 1} and state.batch == {"b": 1}
    assert state.draining == {"a": "b"} and state.slots == ("b",)
    assert state.waiting == {} and state.longest_wait == {"a": 0.0}
    while engine.has_unfinished():
        engine.step()
    assert all(r.finish_reason == "length" for r in engine.requests.values())


# ---------------------------------------------------------------- fair
def _fair(slots=1):
    drainer = FairDrainer(THRESHOLD)
    sched = _sched(drainer, slots=slots)
    sched.observe_step("decode", 0.01)  # 10 ms a decode step: 50 tokens make GRACE (0.5 s)
    return drainer, sched


def test_fair_pauses_the_victim_once_the_starved_adapter_passes_the_threshold():
    drainer, sched = _fair()
    a = _running(sched, "a", remaining=100)
    b = _waiting(sched, "b", since=0.0)
    plan = sched.schedule(now=0.6)  # b has waited less than T: nothing happens
    assert drainer.draining() == {} and not plan.paused and a.status == Status.RUNNING
    plan = sched.schedule(now=1.01)  # past T: a's request (1 s left > GRACE) is paused
    assert drainer.draining() == {"a": "b"} and plan.paused == [a]
    assert [i.req for i in plan.prefill] == [b]
    assert plan.loads == [(0, "b")] and a.pages  # paused, not recomputed
    assert not drainer.may_admit(sched, _request("a", 4, since=0.0), 1.01)  # a admits nothing


def test_fair_lets_a_request_about_to_finish_finish():
    drainer, sched = _fair()
    a = _running(sched, "a", remaining=20)  # 0.2 s left < GRACE
    b = _waiting(sched, "b", since=0.0)
    plan = sched.schedule(now=1.01)
    assert drainer.draining() == {"a": "b"} and not plan.paused and plan.decode == [a]
    sched.finish(a)
    plan = sched.schedule(now=1.2)  # the held slot goes to b
    assert [i.req for i in plan.prefill] == [b]


def test_fair_takes_the_victim_whose_pause_stalls_fewest_requests():
    # preempt would take x (fewer running requests); fair takes y, whose requests all finish
    # within GRACE, so nobody is paused; h has more than its share and is never a victim.
    drainer, sched = _fair(slots=3)
    hot = [_running(sched, "h", remaining=100) for _ in range(6)]
    x = [_running(sched, "x", remaining=100) for _ in range(2)]
    y = [_running(sched, "y", remaining=10) for _ in range(3)]
    _waiting(sched, "b", since=0.0)
    plan = sched.schedule(now=1.01)
    assert drainer.hot == {"h"}
    assert drainer.draining() == {"y": "b"} and not plan.paused
    assert all(r.status == Status.RUNNING for r in hot + x + y)


def test_fair_keeps_the_busy_adapters_and_waits_for_the_least_busy_one():
    drainer, sched = _fair(slots=2)
    busy = [_running(sched, "h", remaining=100) for _ in range(6)]
    sched.observe_load(0.1)  # residency >= 20 loads = 2 s
    c = _waiting(sched, "c", since=0.0, max_new=200)
    _run_prefill(sched.schedule(now=0.0))  # c sits down at 0.0 beside the busy "h"
    _waiting(sched, "b", since=0.0)
    plan = sched.schedule(now=1.5)  # b starves; c is within its residency: nobody is taken
    assert drainer.draining() == {} and not plan.paused and "h" in drainer.hot
    residency = drainer.residency(sched)
    assert residency >= 2.0
    plan = sched.schedule(now=residency + 0.01)  # c is past it: c, not the busy h, gives way
    assert drainer.draining() == {"c": "b"} and plan.paused == [c]
    assert all(r.status == Status.RUNNING for r in busy)
