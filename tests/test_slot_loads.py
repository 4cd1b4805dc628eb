"""Slot loads (issue #17): adapters kept in slot layout, only their rank rows moved, the write
issued when a step uses the slot, prefetch; and the simulator's model of it."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jlora.adapters import random_adapter
from jlora.adapters.slots import (
    SlotBuffers,
    SlotLoadError,
    adapter_to_groups,
    rank_bucket,
    rank_buckets,
    slot_layout,
)
from jlora.bench.report import format_host_cache
from jlora.clock import FakeClock
from jlora.config import EngineConfig
from jlora.engine import Engine
from jlora.kernels.types import MODULE_GROUPS
from jlora.runner.base import DecodeSeq
from jlora.runner.buckets import ShapeBuckets
from jlora.runner.fake import FakeRunner
from jlora.sampling_params import SamplingParams
from jlora.sim import CostModel, SimRunner, default_cost_model_path
from models.presets import get_preset

TINY = get_preset("tiny")
GREEDY = SamplingParams(max_new_tokens=6, ignore_eos=True)


def _config(**overrides) -> EngineConfig:
    kwargs = dict(
        model="tiny",
        dtype="float32",
        lora_paths={"big": "dummy:16", "small": "dummy:4", "c": "dummy:8", "d": "dummy:2"},
        max_loras_per_batch=2,
        max_lora_rank=16,
        context_length=128,
        page_size=4,
        max_running_requests=4,
        max_prefill_tokens=64,
        prefill_token_buckets=(16, 64),
        decode_batch_buckets=(4,),
        kv_len_buckets=(32, 128),
        warmup=False,
    )
    return EngineConfig(**(kwargs | overrides))


def _assert_slot_holds(slots: SlotBuffers, slot: int, adapter, tp: int = 1) -> None:
    want = adapter_to_groups(adapter, slots.cfg, slots.max_rank, slots.dtype, tp)
    for g, buf in slots.layers.items():  # a [L, S, ...]
        for layer in range(slots.cfg.num_layers):
            for got, ref in zip((buf.a, buf.b, buf.scale), want[layer][g], strict=True):
                np.testing.assert_array_equal(np.asarray(got[layer, slot]), ref)


# ---------------------------------------------------------------- layout and buffers
def test_rank_buckets():
    assert rank_buckets(64) == (8, 16, 32, 64)
    assert rank_buckets(48) == (8, 16, 32, 48) and rank_buckets(4) == (4,)
    assert [rank_bucket(r, 64) for r in (0, 1, 8, 9, 16, 40, 64)] == [8, 8, 8, 16, 16, 64, 64]
    with pytest.raises(ValueError, match="rank=65 outside"):
        rank_bucket(65, 64)


@pytest.mark.parametrize("tp", [1, 2])
def test_slot_layout_is_the_padded_reference_stacked_at_the_rank_bucket(tp):
    adapter = random_adapter("x", TINY, 5, seed=3)
    layout = slot_layout(adapter, TINY, 32, "float32", tp)
    ref = adapter_to_groups(adapter, TINY, 32, "float32", tp)
    for g in MODULE_GROUPS:
        assert layout[g].a.shape[:3] == (TINY.num_layers, len(MODULE_GROUPS[g]), 8)
        for layer in range(TINY.num_layers):
            a, b, scale = ref[layer][g]
            np.testing.assert_array_equal(layout[g].a[layer], a[:, :8])
            np.testing.assert_array_equal(layout[g].b[layer], b[:, :8])
            np.testing.assert_array_equal(layout[g].scale[layer], scale)
            assert not a[:, 8:].any() and not b[:, 8:].any()  # the rows the bus never carries


def test_smaller_rank_after_larger_leaves_no_stale_rows():
    slots = SlotBuffers(TINY, num_slots=2, max_rank=32, dtype="float32")
    large, small = random_adapter("l", TINY, 32, seed=1), random_adapter("s", TINY, 3, seed=2)
    slots.put(1, slots.host_adapter(large))
    _assert_slot_holds(slots, 1, large)
    slots.put(1, slots.host_adapter(small))  # bucket 8: rows 8..32 zeroed on the device
    _assert_slot_holds(slots, 1, small)
    assert list(slots.slot_rank) == [0, 3] and slots.occupant == [None, "s"]
    slots.put(1, None)
    _assert_slot_holds(slots, 1, None)


def test_the_write_of_every_rank_bucket_compiles_at_warmup():
    slots = SlotBuffers(TINY, num_slots=3, max_rank=64, dtype="float32")
    slots.warmup()
    before = SlotBuffers.compiled_count()
    for slot, rank in enumerate((3, 16, 40)):
        slots.put(slot, random_adapter(f"a{rank}", TINY, rank, seed=rank))
    slots.put(0, None)
    jax.block_until_ready(slots.layers)  # every write issued
    assert SlotBuffers.compiled_count() == before


def test_a_pending_load_is_written_when_a_step_uses_its_slot(monkeypatch):
    """A transfer that has not landed is written only for the step that uses its slot."""
    slots = SlotBuffers(TINY, num_slots=3, max_rank=16, dtype="float32")
    monkeypatch.setattr(SlotBuffers, "_landed", staticmethod(lambda values: False))
    adapter = random_adapter("a", TINY, 8, seed=4)
    slots.put(2, slots.host_adapter(adapter))
    assert slots.pending == (2,)
    before = slots.layers_for([0, 1])  # a step that does not read slot 2: not written
    assert slots.pending == (2,)
    assert not np.asarray(before["qkv"].a[:, 2]).any()
    slots.layers_for([2])
    assert slots.pending == ()
    _assert_slot_holds(slots, 2, adapter)


def test_a_load_is_sent_only_after_a_step_that_does_not_read_it_is_dispatched(monkeypatch):
    """``put`` queues; a step that does not read the slot leaves the transfer for after its
    dispatch (``send_queued``); a step that reads it sends and writes it first."""
    slots = SlotBuffers(TINY, num_slots=3, max_rank=16, dtype="float32")
    sent = []
    to_device = slots._to_device
    monkeypatch.setattr(slots, "_to_device", lambda groups: sent.append(1) or to_device(groups))
    adapter = random_adapter("a", TINY, 8, seed=5)
    slots.put(2, slots.host_adapter(adapter))
    assert slots.pending == (2,) and not sent
    slots.layers_for([0, 1])  # the buffers of a step that does not read slot 2
    assert slots.pending == (2,) and not sent
    slots.send_queued()  # that step dispatched
    assert len(sent) == 1 and slots.pending == (2,)  # sent, not yet written
    slots.layers_for([2])
    assert slots.pending == () and len(sent) == 1
    _assert_slot_holds(slots, 2, adapter)
    slots.put(1, slots.host_adapter(adapter))
    slots.layers_for([1])  # read at once: sent and written before the step
    assert slots.pending == () and len(sent) == 2
    _assert_slot_holds(slots, 1, adapter)


def test_a_load_spread_over_steps_sends_whole_groups_within_the_budget(monkeypatch):
    """With ``send_bytes_per_step`` each ``send_queued`` starts at most that many bytes (whole
    module groups, at least one); the load is written only once every group is sent, and a step
    that reads the slot sends the rest first."""
    from jlora.adapters.slots import group_bytes

    slots = SlotBuffers(TINY, num_slots=3, max_rank=16, dtype="float32")
    sent: list[list[str]] = []
    to_device = slots._to_device
    monkeypatch.setattr(slots, "_to_device", lambda g: sent.append(list(g)) or to_device(g))
    adapter = random_adapter("a", TINY, 8, seed=6)
    host = slots.host_adapter(adapter)
    sizes = {g: group_bytes(group) for g, group in host.groups.items()}
    slots.send_bytes_per_step = max(sizes.values())  # one group or more a call, never all
    assert sum(sizes.values()) > slots.send_bytes_per_step
    slots.put(0, host)
    slots.send_queued()
    assert sent and sum(sizes[g] for g in sent[0]) <= slots.send_bytes_per_step
    assert 0 not in slots._pending and slots.pending == (0,)  # not all sent: nothing to write
    while 0 in slots._queued:
        slots.send_queued()
    assert sorted(g for chunk in sent for g in chunk) == sorted(MODULE_GROUPS)
    slots.layers_for([0])
    _assert_slot_holds(slots, 0, adapter)
    # a step that reads the slot sends every group left at once, then writes it
    sent.clear()
    slots.send_bytes_per_step = 1  # one group a call
    slots.put(1, host)
    slots.send_queued()
    assert len(sent) == 1 and len(sent[0]) == 1
    slots.layers_for([1])
    assert len(sent) == 2 and len(sent[0]) + len(sent[1]) == len(MODULE_GROUPS)
    assert slots.pending == ()
    _assert_slot_holds(slots, 1, adapter)


def test_the_runner_sends_queued_loads_after_dispatching_a_step():
    engine = Engine(_config())
    _generate(engine, [[5, 6, 7]], ["big"])
    runner = engine.runner
    free = next(s for s, name in enumerate(engine.adapters.occupant) if name is None)
    engine.add_request([3, 4, 5], GREEDY, "big")
    runner.load_lora(free, engine.adapters.get("small"))
    assert runner.slots._queued
    engine.step()  # a step that does not read the free slot
    assert not runner.slots._queued


def test_a_transfer_refused_after_dispatch_empties_the_slot_and_is_reported(monkeypatch):
    """A transfer that fails when it starts (right after a step's dispatch) raises nothing there:
    the slot is emptied, the failure kept for the engine, and a step that reads the slot raises
    it before it runs."""
    slots = SlotBuffers(TINY, num_slots=3, max_rank=16, dtype="float32")
    slots.put(1, slots.host_adapter(random_adapter("old", TINY, 8, seed=1)))
    slots.layers_for([1])

    def refuse(groups):
        raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")

    monkeypatch.setattr(slots, "_to_device", refuse)
    slots.put(1, slots.host_adapter(random_adapter("new", TINY, 8, seed=2)))
    slots.send_queued()  # what the runner does after a dispatch: must not raise
    assert slots.occupant[1] is None and slots.slot_rank[1] == 0
    with pytest.raises(SlotLoadError, match="'new' into slot 1 failed: RESOURCE_EXHAUSTED"):
        slots.layers_for([1])
    failed = slots.take_failed()
    assert list(failed) == [1] and failed[1].name == "new"
    assert slots.take_failed() == {}
    assert not any(np.asarray(buf.a[:, 1]).any() for buf in slots.layers.values())  # no "old"


def test_a_refused_transfer_ends_only_its_adapters_requests():
    """A step whose slot's transfer is refused does not run: the requests of that adapter end
    with the error, the others go on to the outputs of an engine without the failure, and the
    adapter loads again for a later request."""
    prompts, names = [[3, 4, 5], [6, 7, 8]], ["big", "small"]
    want = _generate(Engine(_config()), prompts, names)
    engine = Engine(_config())
    slots = engine.runner.slots
    to_device, refused = slots._to_device, []
    small = engine.adapters.get("small").groups

    def refuse_small_once(groups):
        if any(group is small[g] for g, group in groups.items()) and not refused:
            refused.append(1)
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")
        return to_device(groups)

    slots._to_device = refuse_small_once
    outputs = engine.generate(prompts, GREEDY, names)
    assert refused
    assert outputs[0].token_ids == want[0] and outputs[0].finish_reason != "error"
    assert outputs[1].finish_reason == "error"
    assert "'small'" in outputs[1].error and "RESOURCE_EXHAUSTED" in outputs[1].error
    assert engine.adapters.slot_of("small") is None
    assert _generate(engine, prompts[1:], names[1:]) == want[1:]
    assert engine.pages.num_free == engine.pages.capacity  # every page back


# ---------------------------------------------------------------- the engine
def _generate(engine: Engine, prompts, names) -> list[list[int]]:
    return [o.token_ids for o in engine.generate(prompts, GREEDY, names)]


def test_a_slot_reloaded_with_a_smaller_rank_gives_a_fresh_engines_outputs():
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    one_slot = _config(max_loras_per_batch=1)
    engine = Engine(one_slot)
    _generate(engine, prompts[:1], ["big"])  # rank 16 in the only slot
    got = _generate(engine, prompts, ["small", "small"])  # rank 4 into that slot
    assert engine.adapters.slot_loads == 2
    fresh = Engine(one_slot)
    assert got == _generate(fresh, prompts, ["small", "small"])


def test_no_step_runs_on_a_slot_whose_load_has_not_landed(monkeypatch):
    """Transfers that never land by themselves (a slow bus): every load is written by the step
    that first uses its slot, so no step ever reads a slot with a pending load, and the outputs
    are those of an engine whose loads are written at once."""
    prompts = [[3, 4, 5], [6, 7], [8, 9, 10, 11], [12, 13], [14]]
    names = ["big", "small", "c", "d", "big"]
    want = _generate(Engine(_config()), prompts, names)
    monkeypatch.setattr(SlotBuffers, "_landed", staticmethod(lambda values: False))
    engine = Engine(_config())
    runner, checked = engine.runner, []

    def checking(step):
        def run(seqs, *rest):
            used = {s.lora_slot for s in seqs} - {-1}
            layers_for = runner.slots.layers_for

            def layers_then_check(slots_used):
                layers = layers_for(slots_used)
                assert not used & set(runner.slots.pending), (used, runner.slots.pending)
                checked.append(used)
                return layers

            runner.slots.layers_for = layers_then_check
            try:
                return step(seqs, *rest)
            finally:
                del runner.slots.layers_for

        return run

    monkeypatch.setattr(runner, "prefill", checking(runner.prefill))
    monkeypatch.setattr(runner, "launch_decode", checking(runner.launch_decode))
    assert _generate(engine, prompts, names) == want
    assert any(checked) and engine.adapters.slot_loads > 2


def test_prefetch_gives_the_same_greedy_outputs_and_loads_ahead():
    rng = np.random.default_rng(7)
    prompts = [rng.integers(3, 256, int(n)).tolist() for n in rng.integers(2, 20, 8)]
    names = ["big", "small", "c", "d", "small", "c", None, "big"]
    outs, prefetched = {}, {}
    for on in (False, True):
        engine = Engine(_config(lora_prefetch=on, max_running_requests=2, max_loras_per_batch=3))
        rids = [engine.add_request(p, GREEDY, n) for p, n in zip(prompts, names, strict=True)]
        prefetched[on] = 0
        while engine.has_unfinished():
            engine.step()
            prefetched[on] += len(engine.last_plan.prefetch)
        outs[on] = [engine.requests[r].output for r in rids]
    assert outs[True] == outs[False]
    assert prefetched[False] == 0 and prefetched[True] > 0


def test_loads_spread_over_steps_give_the_same_greedy_outputs():
    """``lora_load_mb_per_step``: prefetched loads go one module group a step, and the outputs
    are those of loads moved at once."""
    rng = np.random.default_rng(8)
    prompts = [rng.integers(3, 256, int(n)).tolist() for n in rng.integers(2, 20, 6)]
    names = ["big", "small", "c", "d", "small", "big"]
    want = _generate(Engine(_config(max_running_requests=2)), prompts, names)
    engine = Engine(_config(max_running_requests=2, lora_load_mb_per_step=1e-6))
    assert engine.runner.slots.send_bytes_per_step == 1  # 1e-6 MB: one group a step
    assert _generate(engine, prompts, names) == want


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), "8", True])
def test_a_bad_load_budget_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="lora_load_mb_per_step="):
        _config(lora_load_mb_per_step=bad)


def test_prefetch_never_evicts_an_adapter_that_has_requests():
    """Fake runner, many adapters through few slots: every prefetch takes an empty slot or one
    whose adapter no running, waiting or paused request uses, for the first request in line
    whose adapter has no slot."""
    clock = FakeClock()
    names = [f"a{i}" for i in range(6)]
    config = _config(
        lora_paths={n: "dummy:4" for n in names},
        max_loras_per_batch=3,
        max_running_requests=2,
    )
    engine = Engine(config, runner=FakeRunner(clock), clock=clock)
    params = SamplingParams(max_new_tokens=3, ignore_eos=True)
    for i in range(24):
        engine.add_request([5, 6, 7], params, names[(i * 5) % 6])
    seen = 0
    sched, pool = engine.scheduler, engine.adapters
    while engine.has_unfinished():
        before = list(pool.occupant)
        engine.step()
        for slot, name in engine.last_plan.prefetch:
            seen += 1
            users = {r.lora_name for r in sched.running + sched.waiting + sched.paused}
            assert before[slot] is None or before[slot] not in users, (slot, before[slot])
            # the first in line whose adapter had no slot (the prefetched one has one now)
            line = sched.policy.order(sched.paused + sched.waiting, clock.now())
            after = set(pool.occupant) - {name}
            assert name == next(r.lora_name for r in line if r.lora_name not in after)
    assert seen > 0


def test_host_memory_of_the_cache_is_reported_per_adapter():
    engine = Engine(_config())
    sizes = engine.adapters.host_bytes()
    assert set(sizes) == {"big", "small", "c", "d"}
    shapes = TINY.module_shapes()

    def layout_bytes(rows: int) -> int:  # float32 a, b and scale of every layer
        per_layer = sum(
            len(ms) * rows * shapes[ms[0]][0] + sum(shapes[m][1] for m in ms) * rows + len(ms)
            for ms in MODULE_GROUPS.values()
        )
        return 4 * TINY.num_layers * per_layer

    assert sizes == {"big": layout_bytes(16), "small": layout_bytes(8), "c": layout_bytes(8)} | {
        "d": layout_bytes(8)
    }
    line = format_host_cache(sizes)
    assert "big " in line and "total" in line


# ---------------------------------------------------------------- the simulator
def test_the_simulator_makes_only_the_step_that_uses_a_slot_wait_for_its_load():
    buckets = ShapeBuckets(
        prefill_tokens=(16,), decode_batch=(4,), kv_pages=(4,), prefix_pages=4, prefill_rows=4
    )
    step = {"const": 0.01}
    cost = CostModel(
        prefill=step,
        decode=step,
        load={"const": 0.001},
        load_device={"const": 0.1, "rank": 0.01},
    )
    clock = FakeClock()
    runner = SimRunner(clock, cost, buckets, page_size=4, num_slots=2)
    sp = SamplingParams()

    def decode(slot: int) -> None:
        runner.decode([DecodeSeq(0, 1, 3, (1,), slot, sp, 0, 1)])

    runner.load_lora(0, random_adapter("a", TINY, 10, seed=0))
    assert clock.now() == pytest.approx(0.001)  # the host part only
    decode(1)  # does not read slot 0: not delayed
    assert clock.now() == pytest.approx(0.011) and runner.busy["load_wait"] == 0
    decode(0)  # reads it: starts when the load lands, 0.001 + 0.1 + 0.01 * 10
    assert clock.now() == pytest.approx(0.201 + 0.01)
    assert runner.busy["load_wait"] == pytest.approx(0.201 - 0.011)
    decode(0)  # landed: no more waiting
    assert clock.now() == pytest.approx(0.221)


def test_a_cost_model_from_before_async_loads_still_loads():
    old = CostModel.load_file(default_cost_model_path("llama-3.1-8b")).to_json()
    old.pop("load_device")
    cost = CostModel.from_json(old)
    assert cost.load_device_time(64) == 0.0  # its load term is the whole, blocking load
    assert cost.load_time(64) > 0
