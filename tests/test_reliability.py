"""Issue #19, "Nothing lost, nothing wedged": one test per finding of the randomized run (the
preempt livelock, finding 1, is the scheduler's). Bad input is refused where it enters, naming the
field and the value, before any state changes; a failure inside ``step()`` ends the requests it
touches with an ``error`` output, frees what they held, and the engine goes on."""

from __future__ import annotations

import dataclasses
import gc
import json
import shutil
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jlora.adapters import AdapterError, load_peft_adapter, random_adapter, save_peft_adapter
from jlora.bench import cli
from jlora.bench.config import BenchConfig
from jlora.build import DeviceMemory
from jlora.config import EngineConfig
from jlora.engine import Engine
from jlora.kernels.lora_xla import lora_group_ref
from jlora.kernels.types import LoraGroup, make_lora_batch
from jlora.runner.kv_cache import kv_bytes_per_page
from jlora.sampling_params import SamplingParams
from jlora.scheduler.request import Status
from models.presets import get_preset
from tests.tp_worker import run_workers

TINY = get_preset("tiny")
GREEDY = SamplingParams(max_new_tokens=6, ignore_eos=True)


def _config(**overrides) -> EngineConfig:
    kwargs = dict(
        model="tiny",
        dtype="float32",
        lora_paths={"a": "dummy:4", "b": "dummy:8"},
        max_loras_per_batch=2,
        max_lora_rank=8,
        context_length=64,
        page_size=4,
        max_running_requests=4,
        max_prefill_tokens=32,
        prefill_token_buckets=(32,),
        decode_batch_buckets=(4,),
        kv_len_buckets=(64,),
        warmup=False,
    )
    kwargs.update(overrides)
    return EngineConfig(**kwargs)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(_config())


def _drain(engine: Engine, limit: int = 500) -> list:
    out = []
    for _ in range(limit):
        if not engine.has_unfinished():
            return out
        out += engine.step()
    raise AssertionError(f"the engine did not finish within {limit} steps")


def _peft_dir(tmp_path, name: str, rank: int = 4, seed: int = 0):
    return save_peft_adapter(random_adapter(name, TINY, rank, seed=seed), tmp_path / name)


def _state(engine: Engine) -> tuple:
    s = engine.scheduler
    return (
        len(engine.requests),
        len(s.waiting),
        len(s.running),
        len(s.paused),
        engine.pages.num_free,
        tuple(engine.adapters.occupant),
    )


# ---------------------------------------------------------------- finding 2: NaN in a slot
def _nan_adapter(name: str = "nan"):
    adapter = random_adapter(name, TINY, 4, seed=3)
    (key, mod), *_ = adapter.modules.items()
    mod.a[0, 0] = np.nan
    mod.b[1, 0] = np.inf
    return adapter


def test_non_finite_adapter_refused_at_load_naming_adapter_and_tensor(tmp_path, engine):
    path = save_peft_adapter(_nan_adapter(), tmp_path / "nan")
    with pytest.raises(
        AdapterError, match=r"adapter 'nan': tensor='base_model.*lora_A.* non-finite"
    ):
        load_peft_adapter("nan", path, TINY, 8)
    before = _state(engine)
    with pytest.raises(AdapterError, match="adapter 'bad': tensor=.* non-finite"):
        engine.load_lora_adapter("bad", str(path))
    assert not engine.adapters.known("bad") and _state(engine) == before


def test_reference_math_ignores_what_sits_in_unused_slots():
    # One adapter's NaN/Inf in a slot no token uses must not reach any token (0 x NaN = NaN).
    rng = np.random.default_rng(0)
    sizes, d_in, rank = (8, 4, 4), 16, 4
    a = rng.standard_normal((3, 3, rank, d_in)).astype(np.float32)
    b = rng.standard_normal((3, sum(sizes), rank)).astype(np.float32)
    scale = np.ones((3, 3), np.float32)
    x = jnp.asarray(rng.standard_normal((5, d_in)), jnp.float32)
    batch = make_lora_batch(np.array([0, 0, -1, 2, -1], np.int32), np.full(3, rank, np.int32))
    clean = LoraGroup(jnp.asarray(a), jnp.asarray(b), jnp.asarray(scale))
    a[1, 0, 0, 0], b[1, 2, 1], scale[1, 1] = np.nan, np.inf, np.nan  # slot 1: no token uses it
    poisoned = LoraGroup(jnp.asarray(a), jnp.asarray(b), jnp.asarray(scale))
    want = np.asarray(lora_group_ref(x, clean, batch, sizes))
    got = np.asarray(lora_group_ref(x, poisoned, batch, sizes))
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, want)
    assert (got[[2, 4]] == 0).all()  # tokens without an adapter get exactly 0


def test_nan_adapter_in_a_slot_changes_no_request(engine):
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    want = [o.token_ids for o in engine.generate(prompts, GREEDY, ["a", None])]
    slot = engine.adapters.num_slots - 1  # 'a' takes slot 0 (the emptiest first)
    assert engine.adapters.occupant[slot] in (None, "b")
    engine.runner.load_lora(slot, _nan_adapter())  # as if it sat there (the pool is not told)
    try:
        got = [o.token_ids for o in engine.generate(prompts, GREEDY, ["a", None])]
    finally:
        engine.runner.load_lora(slot, None)
        engine.adapters.vacate(slot)
    assert got == want


# ---------------------------------------------------------------- finding 3: re-read fails in step
def test_adapter_unreadable_inside_step_fails_its_requests_and_the_engine_goes_on(tmp_path):
    paths = {n: str(_peft_dir(tmp_path, n, seed=i)) for i, n in enumerate("xy")}
    engine = Engine(_config(lora_paths=paths, max_loras_per_batch=1, max_loaded_loras=1))
    free = engine.pages.num_free
    assert [o.finish_reason for o in engine.generate([[3, 4, 5]], GREEDY, "x")] == ["length"]
    assert [o.finish_reason for o in engine.generate([[3, 4, 5]], GREEDY, "y")] == ["length"]
    assert "x" not in engine.adapters.host  # evicted from the host cache (y holds the slot)
    shutil.rmtree(paths["x"])
    bad = engine.add_request([1, 2, 3], GREEDY, "x")
    outs = _drain(engine)
    assert [(o.rid, o.finish_reason) for o in outs] == [(bad, "error")]
    assert "adapter 'x'" in outs[0].error and "is not a directory" in outs[0].error
    assert engine.requests[bad].status is Status.FINISHED
    assert engine.pages.num_free == free and engine.adapters.occupant == [None]
    assert not engine.scheduler.has_work()
    # The engine goes on: the other adapter and the base model serve; x fails again, cleanly.
    rids = [engine.add_request([7, 8], GREEDY, n) for n in ("y", None, "x", "y")]
    outs = {o.rid: o for o in _drain(engine)}
    assert sorted(outs) == rids
    assert [outs[r].finish_reason for r in rids] == ["length", "length", "error", "length"]
    assert engine.pages.num_free == free


# ---------------------------------------------------------------- findings 4, 5, 7: bad input
BAD_REQUESTS = [
    (dict(arrival_time="soon"), TypeError, "arrival_time='soon'"),
    (dict(arrival_time=float("nan")), ValueError, "arrival_time=nan must be finite"),
    (dict(arrival_time=True), TypeError, "arrival_time=True"),
    (dict(prompt_ids=[1.5, 2]), TypeError, "non-integer value 1.5 at index 0"),
    (dict(prompt_ids=[1, "a"]), TypeError, "non-integer value 'a' at index 1"),
    (dict(prompt_ids=[[1, 2], [3]]), TypeError, r"not a flat list of token ids \(got \[\[1, 2\],"),
    (dict(prompt_ids=[1, 2**70]), ValueError, f"token id {2**70} outside"),
    (dict(prompt_ids="abc"), TypeError, r"not text \(got 'abc'\)"),
    (dict(lora_name=["a"]), TypeError, r"lora_name=\['a'\] must be an adapter name"),
    (dict(lora_name=3), TypeError, "lora_name=3 must be an adapter name"),
    (dict(params={"max_new_tokens": 2}), TypeError, "params=.* must be SamplingParams"),
]


@pytest.mark.parametrize("kwargs, kind, needle", BAD_REQUESTS, ids=lambda v: str(v)[:30])
def test_bad_request_refused_naming_the_value_and_changes_nothing(engine, kwargs, kind, needle):
    args = dict(prompt_ids=[1, 2, 3], params=GREEDY)
    args.update(kwargs)
    before = _state(engine)
    with pytest.raises(kind, match=needle) as info:
        engine.add_request(**args)
    assert isinstance(info.value, ValueError)  # callers that refuse bad input catch ValueError
    assert _state(engine) == before
    # Not wedged: a good request still runs to completion.
    rid = engine.add_request([1, 2, 3], GREEDY)
    assert [o.rid for o in _drain(engine)] == [rid]


BAD_PARAMS = [
    (dict(seed="abc"), TypeError, "seed='abc' must be an integer"),
    (dict(seed=1.5), TypeError, "seed=1.5 must be an integer"),
    (dict(temperature="0.5"), TypeError, "temperature='0.5' must be a number"),
    (dict(temperature=float("inf")), ValueError, "temperature=inf must be finite"),
    (dict(temperature=float("nan")), ValueError, "temperature=nan"),
    (dict(top_p="1"), TypeError, "top_p='1' must be a number"),
    (dict(stop_token_ids=5), TypeError, "stop_token_ids=5 must be a list of token ids"),
    (dict(stop_token_ids=(1.5,)), TypeError, r"stop_token_ids=\(1.5,\) must be an integer"),
    (dict(stop_token_ids=(-1,)), ValueError, r"stop_token_ids=\(-1,\) must hold token ids"),
    (dict(max_new_tokens=True), TypeError, "max_new_tokens=True must be an integer"),
    (dict(max_new_tokens=2.0), TypeError, "max_new_tokens=2.0 must be an integer"),
    (dict(ignore_eos="yes"), TypeError, "ignore_eos='yes'"),
]


@pytest.mark.parametrize("kwargs, kind, needle", BAD_PARAMS, ids=lambda v: str(v)[:30])
def test_bad_sampling_params_refused_naming_the_value(kwargs, kind, needle):
    with pytest.raises(kind, match=needle):
        SamplingParams(**kwargs)


def test_numpy_numbers_are_taken_as_python_ones():
    p = SamplingParams(
        max_new_tokens=np.int64(4), temperature=np.float32(0.5), seed=np.int32(7),
        stop_token_ids=np.array([3, 4]),
    )  # fmt: skip
    assert (p.max_new_tokens, p.seed, p.stop_token_ids) == (4, 7, (3, 4))
    assert type(p.max_new_tokens) is int and type(p.temperature) is float


def test_abort_takes_only_request_ids(engine):
    rid = engine.add_request([1, 2, 3], GREEDY)
    with pytest.raises(TypeError, match=r"rid=1.0 must be a request id"):
        engine.abort(float(rid) if rid == 1 else 1.0)
    with pytest.raises(TypeError, match="rid=True"):
        engine.abort(True)
    assert engine.requests[rid].status is Status.WAITING
    assert engine.abort(np.int64(rid)).finish_reason == "abort"


def test_generate_checks_every_prompt_before_queueing_any(engine):
    before = _state(engine)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.generate([[1, 2], [3, 999]], GREEDY)
    with pytest.raises(TypeError, match="lora_name=5 must be one value or one per prompt"):
        engine.generate([[1, 2]], GREEDY, lora_name=5)
    assert _state(engine) == before


# ---------------------------------------------------------------- finding 6: adapter files
@pytest.mark.parametrize(
    "damage, needle",
    [
        ("truncate", r"adapter_model.safetensors='.*' cannot be read"),
        ("empty", r"adapter_model.safetensors='.*' cannot be read"),
        ("rank_regex", r"rank_pattern key='\(' is not a valid regex"),
        ("alpha_regex", r"alpha_pattern key='\[q' is not a valid regex"),
        ("latin1", r"adapter_config.json='.*' is not UTF-8"),
    ],
)
def test_damaged_adapter_files_refused_naming_adapter_and_path(tmp_path, damage, needle):
    path = _peft_dir(tmp_path, "d")
    weights, config = path / "adapter_model.safetensors", path / "adapter_config.json"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage in ("rank_regex", "alpha_regex"):
        cfg = json.loads(config.read_text())
        field, key = ("rank_pattern", "(") if damage == "rank_regex" else ("alpha_pattern", "[q")
        cfg[field] = {key: 4}
        config.write_text(json.dumps(cfg))
    else:
        config.write_bytes(json.dumps({"r": 4}).encode() + "\xe9".encode("latin-1"))
    with pytest.raises(AdapterError, match=f"adapter 'd': {needle}") as info:
        load_peft_adapter("d", path, TINY, 8)
    if "regex" not in damage:  # a file's damage names the file
        assert str(path) in str(info.value)


# ---------------------------------------------------------------- finding 8: generate and stream
@pytest.mark.parametrize("how", ["generate", "stream"])
def test_generate_and_stream_keep_other_requests_outputs(engine, how):
    long = SamplingParams(max_new_tokens=3, ignore_eos=True)
    others = [engine.add_request([4, 5, 6], long, "a"), engine.add_request([7, 8], long)]
    engine.step()  # they are admitted
    mine = SamplingParams(max_new_tokens=12, ignore_eos=True)
    if how == "generate":
        (out,) = engine.generate([[9, 9, 9]], mine, "b")
    else:
        out = [e for e in engine.stream([9, 9, 9], mine, "b")][-1].finished
    assert out.finish_reason == "length" and len(out.token_ids) == 12
    assert all(engine.requests[r].status is Status.FINISHED for r in others)
    returned = [o.rid for o in engine.step()] + [o.rid for o in _drain(engine)]
    assert sorted(returned) == sorted(others)  # each exactly once, and not the caller's own
    assert engine.step() == []


# ---------------------------------------------------------------- finding 10: --compare memory
def _live_bytes() -> int:
    gc.collect()
    return sum(a.nbytes for a in jax.live_arrays())


def test_compare_settings_share_one_runner_and_free_device_memory(monkeypatch):
    # A GPU's accounting on the CPU: the memory in use is the live arrays, the limit leaves room
    # for one KV cache of the size below and not for two (what failed on the H100).
    config = _config(lora_paths={"a": "dummy:4", "b": "dummy:4"}, max_loras_per_batch=1)
    config = dataclasses.replace(config, mem_fraction_static=0.5)
    base = _live_bytes()
    probe = Engine(dataclasses.replace(config, max_total_tokens=64))
    weights = _live_bytes() - base - probe.runner.kv.k.nbytes - probe.runner.kv.v.nbytes
    del probe
    kv = 100 * kv_bytes_per_page(TINY, config.page_size, np.float32)  # ~100 pages: not 2 caches
    limit = 2 * (base + weights + kv)  # base: what other tests keep alive
    monkeypatch.setattr(
        "jlora.build.device_memory",
        lambda: DeviceMemory(bytes_limit=limit, bytes_in_use=_live_bytes()),
    )
    settings = (
        "off",
        "sglang:lora_drain_wait_threshold=0.01,lora_drain_policy=sglang",
        "preempt:lora_drain_wait_threshold=0.01,lora_drain_policy=preempt",
        "fewer:max_running_requests=2",  # not scheduling only: a runner of its own
        "fifo:max_running_requests=2,lora_eviction_policy=fifo",
    )
    bench = BenchConfig(
        num_prompts=6, random_input_len=8, random_output_len=3, disable_tqdm=True, compare=settings
    )
    reused, pages, live_before = [], [], []
    make = cli.make_engine
    last = [lambda: None]  # a weak reference to the last runner built (holding it would keep it)

    def spy(cfg, b, runners=None):
        live_before.append(_live_bytes())
        engine = make(cfg, b, runners)
        reused.append(last[0]() is engine.runner)
        pages.append(engine.pages.capacity)
        last[0] = weakref.ref(engine.runner)
        return engine

    monkeypatch.setattr(cli, "make_engine", spy)
    out = cli.run_bench(config, bench, quiet=True)
    assert len(out["results"]) == 5
    assert reused == [False, True, True, False, True]
    assert len(set(pages)) == 1  # the shared KV cache is not sized again (nor a second made)
    one_runner = live_before[1] - base
    assert one_runner > 0
    # Before each setting: nothing but the runner it may take over (when a setting needs a runner
    # of its own, the old one is freed before the new one is built); after the comparison,
    # nothing at all.
    assert live_before[:4] == [base] + [base + one_runner] * 3
    assert live_before[4] - base == pytest.approx(one_runner, rel=0.01)
    assert last[0]() is None and _live_bytes() == base


# ---------------------------------------------------------------- finding 9: vocabulary under TP
def test_tp_pads_a_vocabulary_it_does_not_divide(tmp_path):
    (got,) = run_workers("odd_vocab", tmp_path)
    assert sorted(got) == ["ckpt/tp2", "dummy/tp1", "dummy/tp4"]
    ref = got["dummy/tp1"]
    assert ref["vocab"] == 257 and ref["adapter_effect"] > 0.1
    for key, res in got.items():
        tp = int(key[-1])
        assert res["vocab"] == 257, key  # the padded logits are never scored
        assert res["lm_head_local"] == [64, -(-257 // tp)], key  # 129 at tp 2, 65 at tp 4
        assert res["tokens"] == ref["tokens"], key  # greedy and seeded: the padding never sampled
        diff = max(
            float(np.abs(np.asarray(a) - np.asarray(b)).max())
            for a, b in zip(res["scores"], ref["scores"], strict=True)
        )
        assert diff < 1e-5, key
        assert res["added_token_logit"] == pytest.approx(ref["added_token_logit"], abs=1e-5)


def test_release_forgets_only_finished_requests(engine):
    rid = engine.add_request([1, 2, 3], GREEDY)
    with pytest.raises(ValueError, match=f"request {rid} is waiting: only a finished one"):
        engine.release(rid)
    (out,) = _drain(engine)
    assert out.rid == rid and rid in engine.requests
    engine.release(rid)
    assert rid not in engine.requests and rid not in engine._seeds
    with pytest.raises(ValueError, match=f"unknown request id {rid}"):
        engine.release(rid)
