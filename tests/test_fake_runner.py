"""The runner seam: the real engine and scheduler over a fake runner with hand-computable times."""

from __future__ import annotations

import pytest

from jlora.clock import FakeClock
from jlora.config import EngineConfig
from jlora.engine import Engine
from jlora.runner.fake import FakeRunner
from jlora.sampling_params import SamplingParams


def _engine(**overrides):
    clock = FakeClock()
    runner = FakeRunner(clock, prefill_base=0.01, prefill_per_token=0.001, decode_base=0.02)
    kwargs = dict(
        model="tiny",
        lora_paths={"a": "dummy:4", "b": "dummy:4"},
        max_loras_per_batch=1,
        max_lora_rank=4,
        context_length=256,
        max_prefill_tokens=64,
    )
    kwargs.update(overrides)
    return Engine(EngineConfig(**kwargs), runner=runner, clock=clock), runner, clock


def test_timestamps_follow_the_step_times():
    engine, runner, clock = _engine()
    p = SamplingParams(max_new_tokens=3, ignore_eos=True)
    r0 = engine.add_request([1] * 10, p, lora_name="a")
    r1 = engine.add_request([1] * 20, p, lora_name="a")
    outs = {}
    while engine.has_unfinished():
        for o in engine.step():
            outs[o.rid] = o
    # One prefill of both (30 tokens: 0.01 + 0.030 s), then two decode steps of 0.02 s.
    assert outs[r0].token_times == pytest.approx([0.04, 0.06, 0.08])
    assert outs[r1].token_times == outs[r0].token_times
    assert outs[r0].token_ids == [runner.token_fn(r0, i) for i in range(3)]
    assert runner.log[0] == ("load", 0, "a")
    assert runner.log[1] == ("prefill", [(r0, 0, 10), (r1, 0, 20)])
    assert runner.log[2:] == [("decode", [r0, r1])] * 2


def test_one_slot_adapters_take_turns_and_the_skip_goes_on_down_the_queue():
    engine, runner, clock = _engine()
    p = SamplingParams(max_new_tokens=2, ignore_eos=True)
    ra = engine.add_request([1] * 4, p, lora_name="a")
    rb = engine.add_request([1] * 4, p, lora_name="b")  # must wait: the one slot holds "a"
    rn = engine.add_request([1] * 4, p, lora_name=None)  # no adapter: skips past "b"
    engine.step()
    assert runner.log[-1] == ("prefill", [(ra, 0, 4), (rn, 0, 4)])
    while engine.has_unfinished():
        engine.step()
    loads = [e for e in runner.log if e[0] == "load"]
    assert loads == [("load", 0, "a"), ("load", 0, "b")]
    b = engine.requests[rb]
    assert b.token_times[0] > engine.requests[ra].token_times[-1]  # b starts after a drained


def test_base_model_uses_slot_like_sglang():
    engine, runner, _ = _engine(base_model_uses_slot=True)
    p = SamplingParams(max_new_tokens=2, ignore_eos=True)
    ra = engine.add_request([1] * 4, p, lora_name="a")
    engine.add_request([1] * 4, p, lora_name=None)  # the base model needs the one slot too
    engine.step()
    assert runner.log[-1] == ("prefill", [(ra, 0, 4)])


def test_chunked_prefill_is_continued_first():
    engine, runner, _ = _engine(chunked_prefill_size=16, max_prefill_tokens=16)
    p = SamplingParams(max_new_tokens=1, ignore_eos=True)
    long = engine.add_request([1] * 40, p)
    short = engine.add_request([1] * 3, p)
    while engine.has_unfinished():
        engine.step()
    prefills = [e[1] for e in runner.log if e[0] == "prefill"]
    # The short prompt waits while the chunks fill the budget, then shares the last one's step.
    assert prefills == [[(long, 0, 16)], [(long, 16, 16)], [(long, 32, 8), (short, 0, 3)]]


def test_decode_seq_fields():
    """The engine builds DecodeSeq by position (it is on the per-token path): each field must
    carry what its name says."""
    engine, runner, clock = _engine(max_loras_per_batch=2, random_seed=5)
    seen = []
    decode = runner.decode

    def record(seqs):
        seen.append(list(seqs))
        return decode(seqs)

    runner.decode = record
    ra = engine.add_request([1] * 20, SamplingParams(max_new_tokens=3, ignore_eos=True), "b")
    rb = engine.add_request([2] * 4, SamplingParams(max_new_tokens=3, seed=77, ignore_eos=True))
    engine.step()  # prefill both
    engine.step()  # the first decode
    (sa, sb) = seen[0]
    a, b = engine.requests[ra], engine.requests[rb]
    assert (sa.rid, sb.rid) == (ra, rb)
    assert (sa.token, sb.token) == (a.output[0], b.output[0])
    assert (sa.position, sb.position) == (20, 4)
    assert sa.pages == tuple(a.pages) and sb.pages == tuple(b.pages)
    assert (sa.lora_slot, sb.lora_slot) == (engine.adapters.slot_of("b"), -1)
    assert (sa.params, sb.params) == (a.params, b.params)
    assert (sa.seed, sb.seed) == (5 + ra, 77)
    assert (sa.out_index, sb.out_index) == (1, 1)
