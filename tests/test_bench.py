"""The benchmark harness: workload draws, SGLang metrics, flags from the config dataclasses,
--compare parsing, and the driver over a fake runner on a virtual clock."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from jlora.bench.cli import RunnerCache, build_parser, make_engine, parse_setting
from jlora.bench.config import BenchConfig
from jlora.bench.driver import run_workload
from jlora.bench.metrics import compute_metrics, per_adapter_ttft
from jlora.bench.report import format_compare
from jlora.bench.workload import make_random_workload
from jlora.clock import FakeClock
from jlora.config import EngineConfig
from jlora.config import EngineConfig as EC
from jlora.engine import Engine
from jlora.flags import dataclass_from_args, field_docs
from jlora.runner.fake import FakeRunner
from jlora.scheduler.request import RequestOutput


def _workload(**kw):
    args = dict(
        num_prompts=2000,
        request_rate=4.0,
        input_len=512,
        output_len=512,
        range_ratio=0.0,
        vocab_size=1000,
        lora_names=["a", "b", "c"],
        seed=0,
    )
    args.update(kw)
    return make_random_workload(**args)


def test_random_workload_matches_sglang_draws():
    w = _workload()
    lens = np.array([len(r.prompt) for r in w])
    assert lens.min() >= 1 and lens.max() <= 512 and 200 < lens.mean() < 310  # uniform [1, 512]
    gaps = np.diff([r.arrival for r in w])
    assert w[0].arrival == 0 and abs(gaps.mean() - 0.25) < 0.02  # Poisson at 4 req/s
    counts = {n: sum(r.lora_name == n for r in w) for n in "abc"}
    assert all(600 < c < 730 for c in counts.values())
    narrow = _workload(range_ratio=0.5, num_prompts=300)
    assert min(len(r.prompt) for r in narrow) >= 256
    assert all(r.arrival == 0 for r in _workload(request_rate=float("inf"), num_prompts=5))
    assert [r.lora_name for r in _workload(distribution="distinct", num_prompts=5)] == list("abcab")
    skew = _workload(distribution="skewed", zipf_alpha=1.5)
    share = [sum(r.lora_name == n for r in skew) / len(skew) for n in "abc"]
    want = np.array([1, 2**-1.5, 3**-1.5]) / sum([1, 2**-1.5, 3**-1.5])
    np.testing.assert_allclose(share, want, atol=0.04)
    assert _workload(seed=3)[7] == _workload(seed=3)[7]


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"request_rate": 0.0}, "request_rate=0.0"),
        ({"distribution": "zipf"}, "lora_request_distribution='zipf'"),
        ({"input_len": 0}, "random_input_len=0"),
        ({"range_ratio": 1.5}, "random_range_ratio=1.5"),
        ({"num_prompts": 0}, "num_prompts=0"),
    ],
)
def test_workload_refusals(kw, needle):
    with pytest.raises(ValueError, match=needle):
        _workload(**kw)


def _out(arrival, times, name="a", prompt=4):
    return RequestOutput(
        rid=0,
        lora_name=name,
        prompt_len=prompt,
        token_ids=[1] * len(times),
        finish_reason="length",
        error=None,
        arrival_time=arrival,
        first_token_time=times[0],
        token_times=times,
        finish_time=times[-1],
    )


def test_metrics_by_hand():
    outs = [_out(0.0, [0.1, 0.3, 0.5]), _out(1.0, [1.2]), _out(1.0, [1.4, 1.5], name=None)]
    m = compute_metrics(outs, duration=2.0)
    assert m["completed"] == 3 and m["total_output_tokens"] == 6 and m["total_input_tokens"] == 12
    assert m["mean_ttft_ms"] == pytest.approx((100 + 200 + 400) / 3)
    assert m["median_ttft_ms"] == pytest.approx(200)
    assert m["mean_tpot_ms"] == pytest.approx((200 + 100) / 2)  # (e2e - ttft) / (n - 1)
    assert m["mean_itl_ms"] == pytest.approx((200 + 200 + 100) / 3)
    assert m["mean_e2e_latency_ms"] == pytest.approx((500 + 200 + 500) / 3)
    assert m["concurrency"] == pytest.approx(1.2 / 2.0)
    assert m["output_throughput"] == pytest.approx(3.0)
    per = per_adapter_ttft(outs)
    assert per["base"]["p50_ttft_ms"] == pytest.approx(400) and per["a"]["count"] == 2
    table = format_compare({"off": m, "on": {**m, "p99_ttft_ms": m["p99_ttft_ms"] / 2}})
    assert "| P99 TTFT ms |" in table and "-50.0%" in table


def test_flags_are_derived_from_the_dataclasses():
    parser = build_parser()
    args = parser.parse_args(
        [
            "--model-path",
            "tiny",
            "--lora-paths",
            "a=dummy:8",
            "b=dummy:16",
            "--max-loras-per-batch",
            "3",
            "--request-rate",
            "inf",
            "--lora-name",
            "a",
            "b",
            "--decode-batch-buckets",
            "8",
            "4",
            "--no-warmup",
        ]
    )
    cfg = dataclass_from_args(EngineConfig, args)
    bench = dataclass_from_args(BenchConfig, args)
    assert cfg.lora_paths == {"a": "dummy:8", "b": "dummy:16"} and cfg.max_loras_per_batch == 3
    assert cfg.decode_batch_buckets == (4, 8) and cfg.warmup is False
    assert bench.request_rate == float("inf") and bench.lora_name == ("a", "b")
    assert bench.num_prompts == 1000  # untouched flags keep the dataclass default
    # Every field is a flag with its docstring as help: nothing declared twice.
    help_text = " ".join(parser.format_help().split())
    for name, doc in field_docs(EngineConfig).items():
        assert "--" + name.replace("_", "-") in help_text
        assert doc.split()[0] in help_text, name
    with pytest.raises(ValueError, match="--lora-paths takes NAME=VALUE items, got 'a'"):
        dataclass_from_args(
            EngineConfig, parser.parse_args(["--model", "tiny", "--lora-paths", "a"])
        )


def test_compare_settings_parse():
    assert parse_setting("off") == ("off", {})
    assert parse_setting("x:max_loras_per_batch=2,warmup=false,mem_fraction_static=0.5") == (
        "x",
        {"max_loras_per_batch": 2, "warmup": False, "mem_fraction_static": 0.5},
    )
    with pytest.raises(ValueError, match="'nope' is not a field of the engine"):
        parse_setting("x:nope=1")
    with pytest.raises(ValueError, match="'nope' is not field=value"):
        parse_setting("x:nope")


def _fake_engine() -> Engine:
    clock = FakeClock()
    runner = FakeRunner(clock, prefill_base=0.01, prefill_per_token=0.0, decode_base=0.02)
    config = EC(
        model="tiny",
        lora_paths={"a": "dummy:4"},
        max_lora_rank=4,
        context_length=64,
        max_total_tokens=256,
    )
    return Engine(config, runner=runner, clock=clock)


def test_driver_on_a_virtual_clock_is_exact_and_loses_nothing():
    workload = _workload(
        num_prompts=30,
        input_len=16,
        output_len=8,
        vocab_size=256,
        lora_names=["a", None],
        request_rate=10.0,
    )
    too_long = dataclasses.replace(workload[3], index=30, arrival=0.5, prompt=[1] * 80)
    result = run_workload(_fake_engine(), [*workload, too_long], progress=False)
    assert len(result.outputs) == 31
    assert result.outputs[-1].error.startswith("prompt has 80 tokens")
    for w, o in zip(workload, result.outputs, strict=False):
        assert o.error is None and len(o.token_ids) == w.output_len
        assert o.arrival_time == pytest.approx(w.arrival)
        assert o.first_token_time > o.arrival_time
    again = run_workload(_fake_engine(), workload, progress=False)
    # Deterministic on a virtual clock: same workload, same times to the microsecond.
    for a, b in zip(result.outputs, again.outputs, strict=False):
        assert a.token_times == pytest.approx(b.token_times, abs=1e-9)
    json.dumps(compute_metrics(result.outputs, result.duration))


def test_settings_differing_only_in_scheduling_share_the_device_runner():
    config = EngineConfig(
        model="tiny", lora_paths={"a": "dummy:4"}, max_lora_rank=8, context_length=64, warmup=False
    )
    bench = BenchConfig()
    runners = RunnerCache()
    first = make_engine(config, bench, runners)
    drained = dataclasses.replace(
        config, lora_drain_wait_threshold=0.5, lora_drain_policy="preempt"
    )
    second = make_engine(drained, bench, runners)
    assert second.runner is first.runner
    assert not second.adapters.occupant.count("a")  # its own pool: nothing seated yet
    other = make_engine(dataclasses.replace(drained, max_lora_rank=16), bench, runners)
    assert other.runner is not first.runner  # the slot buffers differ: a runner of its own
    runners.clear()
    assert make_engine(config, bench, runners).runner is not other.runner


def test_median_decode_step_time_leaves_the_engine_empty():
    from jlora.bench.decode_timing import median_decode_step_ms
    from jlora.config import EngineConfig
    from jlora.engine import Engine

    engine = Engine(
        EngineConfig(model="tiny", load_format="dummy", lora_paths={"a": "dummy:4"}, warmup=False)
    )
    ms = median_decode_step_ms(engine, ["a", None, "a"], steps=3, prompt_len=8)
    assert ms > 0
    assert not engine.has_unfinished()
    assert engine.num_steps >= 3 + 3  # prefill, warm-up and timed steps ran
