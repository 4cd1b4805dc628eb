"""Serving: continuous batching, chunked prefill, preemption and adapter swaps give the same greedy
tokens as each request alone; nothing compiles after warm-up; refusals are clear."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jlora.config import GRAPH_SCHEDULING, EngineConfig
from jlora.engine import Engine
from jlora.runner.model_runner import ModelRunner, graph_compiler_options, step_functions
from jlora.sampling_params import SamplingParams

ADAPTERS = {"a": "dummy:4", "b": "dummy:8", "c": "dummy:8", "d": "dummy:2"}


def _config(**overrides) -> EngineConfig:
    kwargs = dict(
        model="tiny",
        dtype="float32",
        lora_paths=ADAPTERS,
        max_loras_per_batch=2,
        max_lora_rank=8,
        context_length=128,
        page_size=4,
        max_running_requests=8,
        max_prefill_tokens=64,
        chunked_prefill_size=24,
        prefill_token_buckets=(16, 64),
        decode_batch_buckets=(4, 8),
        kv_len_buckets=(32, 128),
    )
    kwargs.update(overrides)
    return EngineConfig(**kwargs)


@pytest.fixture(scope="module")
def oracle() -> Engine:
    return Engine(_config(warmup=False))


def greedy_alone(engine: Engine, prompt, name, n) -> list[int]:
    """The foundation's reference: re-score the whole prefix each step, take the argmax."""
    tokens = list(prompt)
    for _ in range(n):
        tokens.append(int(engine.score([tokens], lora_name=name)[0][-1].argmax()))
    return tokens[len(prompt) :]


@pytest.mark.parametrize(
    "overlap, staged",
    [(False, True), (True, True), (True, False)],
    ids=["plain", "overlap", "overlap-unstaged"],
)
def test_continuous_batching_equals_each_request_alone(oracle, overlap, staged):
    # 24 pages of 4 tokens: seven requests of up to 46 tokens cannot all stay resident,
    # so decode must preempt; prompts longer than 24 tokens are chunked; 4 adapters share 2 slots.
    # staged: the steps read their host inputs from the runner's staging buffer, else straight
    # from each step's transfer (EngineConfig.stage_host_inputs).
    config = _config(max_total_tokens=4 * 24, overlap_schedule=overlap, stage_host_inputs=staged)
    engine = Engine(config)
    rng = np.random.default_rng(1)
    specs = [
        (rng.integers(3, 256, n).tolist(), name, m)
        for n, name, m in [
            (30, "a", 10),
            (5, None, 12),
            (11, "b", 9),
            (40, "c", 6),
            (7, "d", 14),
            (19, "a", 8),
            (3, "b", 11),
        ]
    ]
    rids = {}
    params = {m: SamplingParams(max_new_tokens=m, ignore_eos=True) for _, _, m in specs}
    for i, (prompt, name, m) in enumerate(specs):
        rids[i] = engine.add_request(prompt, params[m], lora_name=name)
        for _ in range(i % 3):  # arrivals land between steps of the running batch
            engine.step()
    while engine.has_unfinished():
        engine.step()
    outputs = {i: engine.requests[r] for i, r in rids.items()}
    assert sum(r.num_preemptions for r in outputs.values()) > 0, "no preemption was forced"
    assert engine.adapters.slot_loads > 2, "adapters never swapped"
    for i, (prompt, name, m) in enumerate(specs):
        req = outputs[i]
        assert req.finish_reason == "length" and len(req.output) == m
        assert req.output == greedy_alone(oracle, prompt, name, m), (i, name)
    assert engine.pages.num_free == engine.pages.capacity  # every page came back
    assert (engine.num_lookahead_steps > 0) == overlap


def test_overlap_gives_the_same_tokens_and_drops_what_follows_a_stop():
    """Overlap scheduling: decode step N+1 is dispatched before step N's tokens are read, so a
    request that stops at N has computed one token too many; it must be dropped, the pages must
    come back, and an abort while a step is in flight must lose nothing else."""
    prompts = [[9, 8, 7], [1, 2, 3, 4, 5], [6, 6], [11, 12, 13, 14]]
    names = ["a", None, "b", "a"]
    lengths = [12, 9, 14, 6]
    plain = Engine(_config(warmup=False))
    free = [
        plain.generate([p], SamplingParams(max_new_tokens=n, ignore_eos=True), name)[0].token_ids
        for p, name, n in zip(prompts, names, lengths, strict=True)
    ]
    # Request 0 stops at its 4th token (a stop token), 2 at its 6th; the others run to length.
    stops = [(free[0][3],), (), (free[2][5],), ()]
    params = [
        SamplingParams(max_new_tokens=n, stop_token_ids=s, ignore_eos=not s)
        for n, s in zip(lengths, stops, strict=True)
    ]
    engine = Engine(_config(warmup=False, overlap_schedule=True))
    outs = engine.generate(prompts, params, names)
    assert engine.num_lookahead_steps > 0
    eos = set(plain.model_config.eos_token_ids)
    for out, want, stop in zip(outs, free, stops, strict=True):
        end = next(i for i, t in enumerate(want) if t in eos or t in stop) if stop else len(want)
        expect = want[: end + 1] if stop else want
        assert out.token_ids == expect
        assert out.finish_reason == ("stop" if stop else "length")
        assert len(out.token_times) == len(out.token_ids)
    assert engine.pages.num_free == engine.pages.capacity

    # An abort while a step is in flight: the aborted request keeps what it had, the others go on.
    rids = [
        engine.add_request(p, SamplingParams(max_new_tokens=10, ignore_eos=True)) for p in prompts
    ]
    for _ in range(4):
        engine.step()
    assert engine._in_flight is not None
    cut = engine.abort(rids[1])
    while engine.has_unfinished():
        engine.step()
    assert cut.finish_reason == "abort" and len(cut.token_ids) < 10
    assert engine.requests[rids[1]].output == cut.token_ids
    for i in (0, 2, 3):
        assert len(engine.requests[rids[i]].output) == 10
    engine.step()  # reads back (and drops) what was still in flight
    assert engine._in_flight is None
    assert engine.pages.num_free == engine.pages.capacity


@pytest.mark.parametrize("mode", GRAPH_SCHEDULING)
def test_graph_scheduling_is_a_valid_xla_option(monkeypatch, mode):
    """On GPU each mode becomes an XLA compile option of the steps. XLA checks option names and
    values on any backend, so compiling with the GPU options here catches a misspelt one."""
    assert graph_compiler_options(mode) == {}  # CPU: nothing to set
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    options = graph_compiler_options(mode)
    assert options == {"xla_gpu_command_buffer_scheduling_mode": mode.upper()}
    assert int(jax.jit(lambda x: x + 1, compiler_options=options)(1)) == 2
    # runners with the same options share one set of jitted steps (and their compilations)
    assert step_functions(options) is step_functions(dict(options))
    assert step_functions(options) is not step_functions({})


@pytest.mark.parametrize("overlap", [False, True], ids=["plain", "overlap"])
def test_nothing_compiles_after_warmup(overlap):
    # overlap as a GPU runs it: host inputs staged (the staging copy compiles at warm-up too)
    engine = Engine(_config(overlap_schedule=overlap, stage_host_inputs=overlap))
    before = ModelRunner.compiled_count()
    rng = np.random.default_rng(2)
    names = [None, "a", "b", "c", "d"]
    for i in range(12):
        n = int(rng.integers(1, 60))
        engine.add_request(
            rng.integers(0, 256, n).tolist(),
            SamplingParams(max_new_tokens=int(rng.integers(1, 20)), temperature=float(i % 2)),
            lora_name=names[i % 5],
        )
        engine.step()
    while engine.has_unfinished():
        engine.step()
    assert ModelRunner.compiled_count() == before


def test_stream_and_generate_agree(oracle):
    engine = Engine(_config(warmup=False))
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    events = list(engine.stream([5, 6, 7], params, lora_name="c"))
    assert [e.index for e in events] == list(range(6))
    assert events[-1].finished is not None and events[-1].finished.finish_reason == "length"
    assert all(e.finished is None for e in events[:-1])
    streamed = [e.token_id for e in events]
    assert streamed == engine.generate([[5, 6, 7]], params, lora_name="c")[0].token_ids
    assert streamed == greedy_alone(oracle, [5, 6, 7], "c", 6)


def test_outputs_carry_timestamps():
    engine = Engine(_config(warmup=False))
    out = engine.generate([[1, 2, 3]], SamplingParams(max_new_tokens=4, ignore_eos=True))[0]
    assert out.arrival_time <= out.first_token_time <= out.finish_time
    assert len(out.token_times) == 4 and out.token_times == sorted(out.token_times)
    assert out.first_token_time == out.token_times[0] and out.finish_time == out.token_times[-1]


def test_stop_tokens_and_eos():
    engine = Engine(_config(warmup=False))
    free = engine.generate([[9, 8, 7]], SamplingParams(max_new_tokens=8, ignore_eos=True))[0]
    stop = free.token_ids[2]
    out = engine.generate([[9, 8, 7]], SamplingParams(max_new_tokens=8, stop_token_ids=(stop,)))
    assert out[0].token_ids == free.token_ids[: free.token_ids.index(stop) + 1]
    assert out[0].finish_reason == "stop"


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    engine = Engine(_config(warmup=False))
    hot = SamplingParams(max_new_tokens=8, temperature=1.5, seed=7, ignore_eos=True)
    first = engine.generate([[4, 4, 4]], hot)[0].token_ids
    # Same seed, alone or in a batch with others: same tokens.
    batch = engine.generate([[1, 2], [4, 4, 4]], [SamplingParams(max_new_tokens=3), hot])
    assert batch[1].token_ids == first
    other = engine.generate(
        [[4, 4, 4]], SamplingParams(max_new_tokens=8, temperature=1.5, seed=8, ignore_eos=True)
    )
    assert other[0].token_ids != first
    greedy = engine.generate([[4, 4, 4]], SamplingParams(max_new_tokens=8, ignore_eos=True))
    top1 = engine.generate(
        [[4, 4, 4]],
        SamplingParams(max_new_tokens=8, temperature=2.0, top_k=1, seed=3, ignore_eos=True),
    )
    assert top1[0].token_ids == greedy[0].token_ids


def test_overlap_with_sampling_rows_gives_the_same_tokens():
    """Under overlap the next step reads the sampled tokens on the device (not the greedy ones)."""
    prompts = [[4, 4, 4], [1, 2], [7, 8, 9, 10]]
    params = [
        SamplingParams(max_new_tokens=9, temperature=1.5, seed=7, ignore_eos=True),
        SamplingParams(max_new_tokens=7, ignore_eos=True),
        SamplingParams(max_new_tokens=9, temperature=0.8, top_p=0.9, seed=1, ignore_eos=True),
    ]
    names = [None, "a", "b"]
    plain = Engine(_config(warmup=False)).generate(prompts, params, names)
    engine = Engine(_config(warmup=False, overlap_schedule=True))
    overlapped = engine.generate(prompts, params, names)
    assert engine.num_lookahead_steps > 0
    assert [o.token_ids for o in overlapped] == [o.token_ids for o in plain]


def test_lora_off_serves_the_base_model_and_refuses_adapters():
    bare = Engine(_config(warmup=False, lora_paths={}))
    assert bare.runner.slots is None  # no slot buffers, no LoRA ops in the steps
    with_lora = Engine(_config(warmup=False))
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    prompts = [[3, 1, 4, 1, 5], [9, 2, 6]]
    assert [o.token_ids for o in bare.generate(prompts, params)] == [
        o.token_ids for o in with_lora.generate(prompts, params)
    ]
    with pytest.raises(ValueError, match="adapter 'a' asked for, but LoRA is off"):
        bare.add_request([1, 2], lora_name="a")
    with pytest.raises(ValueError, match="cannot load adapter 'a': LoRA is off"):
        bare.load_lora_adapter("a", "dummy:4")
    with pytest.raises(ValueError, match=r"enable_lora=False but lora_paths names adapters \(a, b"):
        _config(enable_lora=False)
    runtime = Engine(_config(warmup=False, lora_paths={}, enable_lora=True))
    runtime.load_lora_adapter("late", "dummy:4")  # slots exist: adapters may come at run time
    assert runtime.generate([[1, 2, 3]], params, lora_name="late")[0].finish_reason == "length"


def test_refusals():
    engine = Engine(_config(warmup=False, max_total_tokens=64))
    with pytest.raises(ValueError, match="beyond the context length 128"):
        engine.add_request([1] * 100, SamplingParams(max_new_tokens=29))
    with pytest.raises(ValueError, match="max_new_tokens=0 must be at least 1"):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(ValueError, match="unknown adapter name 'zz'"):
        engine.add_request([1, 2], lora_name="zz")
    with pytest.raises(ValueError, match="needs 20 KV pages but the cache holds 16"):
        engine.add_request([1] * 70, SamplingParams(max_new_tokens=10))
    with pytest.raises(ValueError, match="token id 300 outside"):
        engine.add_request([300])
    with pytest.raises(ValueError, match="empty"):
        engine.add_request([])
    assert not engine.has_unfinished()  # nothing refused was queued


def test_load_unload_at_run_time(tmp_path):
    engine = Engine(_config(warmup=False))
    rid = engine.add_request([1, 2, 3], SamplingParams(max_new_tokens=5), lora_name="a")
    engine.step()
    with pytest.raises(ValueError, match="adapter 'a' is in use by 1 unfinished requests"):
        engine.unload_lora_adapter("a")
    while engine.has_unfinished():
        engine.step()
    assert engine.requests[rid].finish_reason is not None
    engine.unload_lora_adapter("a")
    with pytest.raises(ValueError, match="unknown adapter name 'a'"):
        engine.add_request([1], lora_name="a")
    with pytest.raises(ValueError, match="unknown adapter name 'a'"):
        engine.unload_lora_adapter("a")
    engine.load_lora_adapter("e", "dummy:8", pinned=True)
    assert engine.adapters.slot_of("e") is not None
    with pytest.raises(ValueError, match="cannot pin adapter 'f'"):
        engine.load_lora_adapter("f", "dummy:4", pinned=True)
    with pytest.raises(ValueError, match="already loaded"):
        engine.load_lora_adapter("e", "dummy:4")
    with pytest.raises(ValueError, match="is not a directory"):
        engine.load_lora_adapter("g", str(tmp_path / "missing"))
    # The pinned adapter keeps its slot while the others take turns in the remaining one.
    pinned_slot = engine.adapters.slot_of("e")
    engine.generate([[1], [2], [3]], SamplingParams(max_new_tokens=2), lora_name=["b", "c", "e"])
    assert engine.adapters.slot_of("e") == pinned_slot


def test_host_cache_reloads_evicted_adapters(tmp_path):
    from jlora.tools.make_adapters import make_adapters

    dirs = make_adapters("tiny", [4, 4, 4], tmp_path)
    paths = {d.name: str(d) for d in dirs}
    engine = Engine(
        _config(warmup=False, lora_paths=paths, max_loras_per_batch=1, max_loaded_loras=1)
    )
    names = list(paths)
    outs = engine.generate([[1, 2]] * 3, SamplingParams(max_new_tokens=2), lora_name=names)
    assert all(o.finish_reason == "length" for o in outs)
    assert engine.adapters.host_loads > 3  # read from disk again after eviction
    assert len(engine.adapters.host) <= 1 + 1  # the cache plus the one in the slot


def test_score_equals_the_reference_path(oracle):
    engine = Engine(_config(warmup=False))
    prompts = [[1, 2, 3, 4, 5], [7, 7], [9]]
    names = ["a", None, "d"]
    got = engine.score(prompts, lora_name=names)
    for p, n, g in zip(prompts, names, got, strict=True):
        np.testing.assert_allclose(g, oracle.score([p], lora_name=n)[0], rtol=1e-5, atol=1e-5)
