"""The simulator: the real engine over a cost-model runner on a virtual clock.

Fidelity is checked against the real engine on this CPU, with a cost model calibrated in the same
process just before: both read the process's CPU time (:class:`~jlora.sim.fidelity.CpuClock`), so
other work on a shared machine does not count as the engine's. The workload is a burst (every
request at time 0): the scheduler's decisions then depend on its state alone, so the real engine
and the simulator run the same steps, which is checked, and the comparison measures the cost model
rather than how arrivals happened to fall between steps. (Under Poisson arrivals with slot
contention a one-percent change in a step time can change which adapter keeps a slot; two real
runs of the same workload then differ by more than the 15% bound in their P99 on this machine.)
The real workload runs twice and the faster run is compared: a stall caused by a neighbour on a
shared CPU only ever adds time.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

import jlora.sim as sim_mod
from jlora.adapters.peft import AdapterError
from jlora.bench.cli import run_bench
from jlora.bench.config import BenchConfig
from jlora.bench.driver import run_workload
from jlora.bench.workload import make_random_workload
from jlora.config import DRAIN_POLICIES, EngineConfig
from jlora.engine import Engine
from jlora.runner.base import DecodeSeq, PrefillSeq
from jlora.runner.buckets import ShapeBuckets
from jlora.sampling_params import SamplingParams
from jlora.scheduler.scheduler import Scheduler
from jlora.sim import (
    AdapterStub,
    CostModel,
    SimRunner,
    calibrated_setting,
    calibrated_step_settings,
    default_cost_model_path,
    make_sim_engine,
)
from jlora.sim.adapters import peft_rank, stub_loader
from jlora.sim.cost_model import FEATURES, StepLayout, fit_nonneg
from jlora.sim.fidelity import COMPARED, format_comparison
from tests.tp_worker import ROOT, child_env

SKILLS = "jlora/assets/skills"


def _config(**kw) -> EngineConfig:
    args = dict(
        model="tiny",
        dtype="float32",
        lora_paths={"a0": "dummy:4", "a1": "dummy:8", "a2": "dummy:8", "a3": "dummy:16"},
        max_loras_per_batch=2,
        max_lora_rank=16,
        context_length=512,
        max_total_tokens=8192,
        max_running_requests=32,
        max_prefill_tokens=512,
        prefill_token_buckets=(128, 512),
        decode_batch_buckets=(8, 32),
        kv_len_buckets=(128, 512),
    )
    return EngineConfig(**(args | kw))


def _workload(n=48, rate=float("inf"), seed=3, names=("a0", "a1", "a2", "a3", None), out=128):
    return make_random_workload(
        num_prompts=n,
        request_rate=rate,
        input_len=256,
        output_len=out,
        range_ratio=0.0,
        vocab_size=256,
        lora_names=list(names),
        seed=seed,
    )


def _schedule(result):
    return [(s.kind, s.batch, s.tokens, s.loads) for s in result.steps]


def test_simulator_matches_the_real_engine_on_cpu(tmp_path):
    """Calibrated on this CPU, the simulator gives the real engine's latencies within 15%
    (measured in a process of its own: :mod:`tests.sim_fidelity_worker`)."""
    out = tmp_path / "fidelity.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.sim_fidelity_worker", str(out)],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["same_steps"]  # the same engine: the same steps
    rows = result["rows"]
    print("\n" + "\n\n".join(format_comparison(r) for r in rows))
    # The same steps three times: other work on the machine can only have added time, so each
    # latency's smallest value over the runs is the best measure of the engine's own.
    for key in COMPARED:
        real_ms = min(r[key][0] for r in rows)
        sim_ms = rows[0][key][1]
        err = sim_ms / real_ms - 1
        assert abs(err) <= 0.15, f"{key}: real {real_ms:.1f} ms, simulated {sim_ms:.1f} ms"


def _sim_outputs(**kw):
    config = _config(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shipped model was calibrated at another setting
        engine = make_sim_engine(config)
    return run_workload(engine, _workload(n=120, rate=30.0, seed=5), progress=False)


@pytest.mark.parametrize(
    "drain",
    [{}] + [{"lora_drain_wait_threshold": 0.05, "lora_drain_policy": p} for p in DRAIN_POLICIES],
)
def test_the_same_seed_gives_the_same_times(drain):
    a, b = _sim_outputs(**drain), _sim_outputs(**drain)
    for x, y in zip(a.outputs, b.outputs, strict=True):
        assert x.token_times == y.token_times and x.token_ids == y.token_ids
    assert a.duration == b.duration
    assert _schedule(a) == _schedule(b)


def test_the_simulator_is_the_engine_with_another_runner_and_clock():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = make_sim_engine(_config())
    assert type(engine) is Engine and type(engine.scheduler) is Scheduler
    assert isinstance(engine.runner, SimRunner)
    assert engine.clock.now() == 0.0
    p = SamplingParams(max_new_tokens=3, ignore_eos=True)
    rid = engine.add_request([5] * 100, p, lora_name="a3")
    while engine.has_unfinished():
        engine.step()
    req = engine.requests[rid]
    runner = engine.runner
    # One slot load, one prefill (100 tokens -> the 128 bucket) that waits for the load to land
    # (if the cost model gives it a device part), two decode steps.
    waits = int(runner.cost.load_device_time(16) > 0)
    want = {"prefill": 1, "decode": 2, "load": 1, "load_wait": waits, "host_load": 0}
    assert runner.steps == want
    assert req.token_times[-1] == pytest.approx(sum(runner.busy.values()), abs=1e-12)
    first = runner.busy["load"] + runner.busy["load_wait"] + runner.busy["prefill"]
    assert req.token_times[0] == pytest.approx(first)
    with pytest.raises(NotImplementedError):
        engine.score([[1, 2, 3]])


def test_step_times_follow_the_padded_shape():
    buckets = ShapeBuckets(
        prefill_tokens=(128, 512),
        decode_batch=(8, 32),
        kv_pages=(8, 32),
        prefix_pages=32,
        prefill_rows=32,
    )
    coef = {"const": 1.0, "tokens": 0.01, "attention": 1e-5, "seqs": 0.1, "lora_tokens": 0.001}
    cost = CostModel(
        prefill=coef, decode=coef, load={"const": 0.5, "rank": 0.01}, decode_shapes={(8, 128): 0.25}
    )
    layout = StepLayout(buckets, 16, [4, 16])
    sp = SamplingParams()

    def pre(n, slot=-1):
        return PrefillSeq(0, np.zeros(n, np.int32), 0, (1,) * -(-n // 16), slot, True, sp, 0, 0)

    # 100 and 128 tokens pad to 128: T=128, C=512; the per-token rank term follows the actual.
    t = cost.prefill_time([pre(100)], layout)
    assert t == pytest.approx(1 + 0.01 * 128 + 1e-5 * 128 * (512 + 128) + 0.1)
    assert cost.prefill_time([pre(128)], layout) == pytest.approx(t)
    assert cost.prefill_time([pre(100, slot=1)], layout) == pytest.approx(t + 0.001 * 16 * 100)

    def dec(ctx, n):
        return [DecodeSeq(i, 1, ctx - 1, (1,) * -(-ctx // 16), -1, sp, 0, 1) for i in range(n)]

    # 3 rows of 100 tokens pad to (8 rows, 8 pages = 128 tokens), a measured shape.
    want = 1 + 0.01 * 8 + 1e-5 * 8 * 128 + 0.1 * 3 + 0.25
    assert cost.decode_time(dec(100, 3), layout) == pytest.approx(want)
    assert cost.load_time(16) == pytest.approx(0.66)


def test_cost_model_file_roundtrip_and_refusals(tmp_path):
    cost = CostModel.load_file(default_cost_model_path("tiny"))
    assert cost.info["device"] == "cpu" and cost.info["model"] == "tiny"
    again = CostModel.load_file(cost.save(tmp_path / "c.json"))
    assert again.to_json() == cost.to_json()
    bad = cost.to_json() | {"decode": {"const": 1.0, "flops": 2.0}}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="unknown features"):
        CostModel.load_file(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="does not exist"):
        CostModel.load_file(tmp_path / "none.json")
    with pytest.raises(ValueError, match=r"h100__llama-3.1-70b\.json.*--sim-cost-model"):
        make_sim_engine(EngineConfig(model="llama-3.1-70b"))


def test_fit_recovers_nonnegative_coefficients():
    rng = np.random.default_rng(0)
    x = np.column_stack([np.ones(200), rng.uniform(1, 100, 200), rng.uniform(0, 50, 200)])
    y = x @ np.array([2.0, 0.3, 0.0]) * rng.uniform(0.99, 1.01, 200)
    c = fit_nonneg(x, y)
    assert c[0] == pytest.approx(2.0, rel=0.05) and c[1] == pytest.approx(0.3, rel=0.02)
    assert 0 <= c[2] < 1e-3
    # A feature that would take a negative coefficient gets none.
    c = fit_nonneg(x, x @ np.array([2.0, 0.3, -0.01]))
    assert c[2] == 0.0 and (c >= 0).all()
    assert len(FEATURES) == len(set(FEATURES))


def test_adapters_need_no_weights():
    load = stub_loader(16)
    a = load("a", "dummy:8")
    assert isinstance(a, AdapterStub) and a.rank == 8 and a.modules == {} and a.nbytes() == 0
    assert load("count", f"{SKILLS}/count").rank == peft_rank("count", f"{SKILLS}/count") == 8
    with pytest.raises(ValueError, match="rank=32 is above max_lora_rank=16"):
        load("b", "dummy:32")
    with pytest.raises(AdapterError, match="is not a directory"):
        load("c", f"{SKILLS}/nope")


def test_kv_cache_sized_as_the_calibrated_device():
    cost = CostModel.load_file(default_cost_model_path("tiny"))
    gpu = dataclasses.replace(cost, memory={"bytes_limit": 80 * 2**30})
    config = _config(max_total_tokens=None, mem_fraction_static=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        on_gpu = make_sim_engine(config, cost=gpu)
        on_cpu = make_sim_engine(config, cost=cost)
    assert on_cpu.pages.num_pages == 64 * 512 // 16 + 1  # the CPU rule: 64 full contexts
    assert on_gpu.pages.num_pages > 40 * on_cpu.pages.num_pages


def test_bench_runs_the_simulator(tmp_path):
    config = EngineConfig(
        model="tiny",
        lora_paths={f"a{i}": f"dummy:{r}" for i, r in enumerate((8, 16, 16, 32, 64, 8))},
        max_loras_per_batch=3,
        max_lora_rank=64,
        dtype="float32",
        context_length=512,
        max_running_requests=32,
        max_prefill_tokens=512,
        decode_batch_buckets=(8, 32),
        prefill_token_buckets=(128, 512),
        kv_len_buckets=(128, 512),
    )
    bench = BenchConfig(
        backend="sim",
        num_prompts=200,
        request_rate=20.0,
        random_input_len=128,
        random_output_len=256,
        compare=("off", "sglang:lora_drain_wait_threshold=0.25,lora_drain_policy=sglang"),
        disable_tqdm=True,
        output_file=str(tmp_path / "out.jsonl"),
    )
    out = run_bench(config, bench, quiet=True)
    for name in ("off", "sglang"):
        assert out["metrics"][name]["completed"] == 200
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(x)["setting"] for x in lines] == ["off", "sglang"]


def test_overlap_needs_a_cost_model_that_calibrated_it():
    """A cost model without overlapped decode steps runs the plain loop, and says so when overlap
    was asked for; by default (a CPU model) it is off without a word."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        engine = make_sim_engine(_config(overlap_schedule=True))
    assert any("no overlapped decode steps" in str(w.message) for w in seen)
    assert not engine._overlap
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        engine = make_sim_engine(_config())
    assert not engine._overlap and not any("overlap" in str(w.message) for w in seen)


def _overlap_cost(device_period: float, host: float) -> CostModel:
    """The shipped CPU model with overlapped decode steps of a constant period and host share."""
    cpu = CostModel.load_file(default_cost_model_path("tiny"))
    return dataclasses.replace(
        cpu, decode_overlap={"const": device_period}, decode_host={"const": host}
    )


@pytest.mark.parametrize("host", [0.0001, 0.5])
def test_overlapped_decode_steps_take_the_longer_of_host_and_device(host):
    """Under overlap a decode step that follows one in flight ends max(device period, host share)
    after it; the same requests get the same tokens as without overlap, and a decode-bound run
    ends sooner whenever the overlapped period is shorter than a whole step."""
    period = 0.0002  # well under a whole decode step of the CPU model (a few ms)
    cost = _overlap_cost(period, host)
    runs = {}
    for overlap in (False, True):
        engine = make_sim_engine(_config(overlap_schedule=overlap), cost=cost)
        assert engine._overlap == overlap
        params = SamplingParams(max_new_tokens=40, ignore_eos=True)
        rids = [engine.add_request([5] * 16, params, f"a{i % 2}") for i in range(8)]
        outputs = {}
        while engine.has_unfinished():
            for out in engine.step():
                outputs[out.rid] = out.token_ids
        runs[overlap] = ([outputs[r] for r in rids], engine.clock.now(), engine)
    assert runs[True][0] == runs[False][0]
    engine = runs[True][2]
    assert engine.num_lookahead_steps > 30  # nearly every decode step after the first
    whole = runs[False][1]
    overlapped = runs[True][1]
    if host < period:
        assert overlapped < whole
    else:
        assert overlapped > whole  # a host share longer than the step binds the period
    # Each lookahead step adds exactly the overlapped period to the run.
    expected = max(period, host) * engine.num_lookahead_steps
    assert engine.runner.busy["decode"] >= expected


def test_a_gpu_cost_model_names_its_step_settings():
    """A GPU cost model records the step settings its engine ran with (``graph_scheduling``,
    ``stage_host_inputs``; one from before a setting existed ran the setting before it): a
    simulated engine set otherwise is told, and a setting built from the cost model runs as it
    was calibrated. A CPU cost model that does not record them has no such settings."""
    h100 = CostModel.load_file(default_cost_model_path("llama-3.1-8b"))
    assert calibrated_step_settings(h100) == {
        "graph_scheduling": "concurrent",
        "stage_host_inputs": True,
    }
    # A model from before both settings existed (the H100 model shipped on 2026-11-24).
    before = dataclasses.replace(h100, info=h100.info | {"calibrated_with": {}})
    for cost, mode, staged, warned in (
        (h100, "concurrent", True, False),
        (h100, "serialize", False, True),
        (before, "concurrent", True, True),
        (before, "serialize", False, False),
    ):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            config = _config(graph_scheduling=mode, stage_host_inputs=staged)
            sim_mod._warn_if_other_setting(config, cost, "h100")
        text = " ".join(str(w.message) for w in seen)
        assert ("graph_scheduling=" in text) == warned, (mode, text)
        assert ("stage_host_inputs=" in text) == warned
    setting = calibrated_setting(before)
    assert setting["graph_scheduling"] == "serialize" and setting["stage_host_inputs"] is False
    cpu = CostModel.load_file(default_cost_model_path("tiny"))
    assert not {"graph_scheduling", "stage_host_inputs"} & set(calibrated_setting(cpu))


def test_calibration_fits_overlapped_decode_steps():
    """An engine that overlaps has its decode steps also timed back to back as overlap runs
    them: the cost model gets ``decode_overlap`` and ``decode_host`` terms, and a simulated engine
    on that model overlaps. (Timings on a CPU: the terms are checked for presence, not size.)"""
    from jlora.sim.calibrate import Design, calibrate

    engine = Engine(
        _config(
            lora_paths={"a0": "dummy:8"},
            max_loras_per_batch=1,
            max_running_requests=8,
            max_prefill_tokens=128,
            prefill_token_buckets=(128,),
            decode_batch_buckets=(8,),
            kv_len_buckets=(128,),
            context_length=128,
            overlap_schedule=True,
        )
    )
    assert engine._overlap
    design = Design(
        reps=1,
        warm=0,
        fills=(1.0,),
        mixes=("none",),
        load_ranks=(8,),
        load_reps=1,
        serving_requests=16,
        serving_max_len=32,
        overlap_steps=2,
    )
    cost = calibrate(engine, design, log=lambda m: None)
    assert cost.models_overlap and cost.decode_overlap["const"] > 0
    assert cost.info["fit"]["decode_overlap"]["samples"] >= 1
    assert cost.info["calibrated_with"]["overlap_schedule"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny test model against its own setting
        sim = make_sim_engine(_config(overlap_schedule=True), cost=cost)
    assert sim._overlap
