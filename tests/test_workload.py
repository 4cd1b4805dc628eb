"""The workload suite's features (issue #18): gamma arrivals (``--burstiness``), S-LoRA's power
law, on/off bursts per adapter, a popularity shift, and trace replay; each one's statistics, its
refusals naming the field, determinism per seed, and an end-to-end run of a trace in the
simulator."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from jlora.bench.cli import build_parser, main
from jlora.bench.config import BenchConfig, build_workload
from jlora.bench.workload import (
    AdapterMix,
    lora_weights,
    make_random_workload,
    make_trace_workload,
    on_periods,
    read_trace,
)

SHIPPED_TRACE = Path(__file__).resolve().parents[1] / "jlora/bench/data/azure_synthetic_trace.csv"
NAMES = ["a0", "a1", "a2", "a3", "a4", "a5"]


def _build(**kw):
    bench = BenchConfig(
        **({"num_prompts": 2000, "request_rate": 4.0, "random_input_len": 8} | kw),
        random_output_len=8,
    )
    return build_workload(bench, vocab_size=100, lora_names=NAMES, context_length=64)


def _shares(work, names=NAMES):
    return np.array([sum(r.lora_name == n for r in work) for n in names]) / len(work)


def test_gamma_arrivals_have_the_burstiness_cv():
    for shape in (0.25, 1.0, 4.0):
        gaps = np.diff([r.arrival for r in _build(burstiness=shape, num_prompts=8000)])
        assert gaps.mean() == pytest.approx(0.25, rel=0.06)  # the rate stays 4 req/s
        assert gaps.std() / gaps.mean() == pytest.approx(1 / np.sqrt(shape), rel=0.08)
    # Poisson (1.0) draws exactly as before the option existed.
    assert _build(burstiness=1.0) == _build()


def test_power_law_popularity_is_s_loras():
    share = _shares(_build(lora_request_distribution="power", lora_power_alpha=0.3, seed=4))
    rng = np.random.default_rng(0)
    s_lora = np.bincount((rng.power(0.3, 200_000) * 6).astype(int), minlength=6) / 200_000
    np.testing.assert_allclose(share, s_lora, atol=0.03)
    np.testing.assert_allclose(lora_weights(6, "power", power_alpha=0.3), s_lora, atol=0.005)
    assert share[0] > 0.5 and share[0] > 5 * share[-1]  # skewed toward the first adapter
    np.testing.assert_allclose(lora_weights(6, "power", power_alpha=1.0), np.full(6, 1 / 6))


def test_on_off_bursts_send_requests_only_to_adapters_that_are_on():
    kw = dict(lora_on_mean_s=5.0, lora_off_mean_s=20.0, num_prompts=3000, seed=7)
    work = _build(**kw)
    arrivals = np.array([r.arrival for r in work])
    periods = on_periods(np.random.default_rng([7, 1]), 6, float(arrivals[-1]), 5.0, 20.0)
    for r in work:
        on = [bool(((p[:, 0] <= r.arrival) & (r.arrival < p[:, 1])).any()) for p in periods]
        if any(on):
            assert on[int(r.lora_name[1])], r
        else:  # nobody on: the adapter whose next on period begins first
            starts = [p[p[:, 0] > r.arrival, 0].min(initial=np.inf) for p in periods]
            assert int(r.lora_name[1]) == int(np.argmin(starts)), r
    on_share = np.mean([(p[:, 1] - p[:, 0]).sum() for p in periods]) / arrivals[-1]
    assert 0.12 < on_share < 0.28  # on 5 s of every 25 s on average
    # Per adapter, requests come in bursts: long off gaps between runs of short ones.
    for name in NAMES:
        gaps = np.diff([r.arrival for r in work if r.lora_name == name])
        assert gaps.std() / gaps.mean() > 1.5
        assert gaps.max() > 10.0
    plain = _build(num_prompts=3000, seed=7)
    plain_gaps = np.diff([r.arrival for r in plain if r.lora_name == "a0"])
    assert plain_gaps.std() / plain_gaps.mean() < 1.2  # Poisson thinned: CV about 1


def test_popularity_shift_reverses_the_order():
    work = _build(lora_request_distribution="skewed", lora_zipf_alpha=1.5, lora_shift_at=0.5)
    before, after = _shares(work[:1000]), _shares(work[1000:])
    assert np.argmax(before) == 0 and np.argmax(after) == 5
    np.testing.assert_allclose(before, lora_weights(6, "skewed", 1.5), atol=0.04)
    np.testing.assert_allclose(after, lora_weights(6, "skewed", 1.5)[::-1], atol=0.04)
    # No shift (1.0) draws exactly as the plain Zipf workload.
    assert _build(lora_request_distribution="skewed", lora_shift_at=1.0) == _build(
        lora_request_distribution="skewed"
    )


def test_every_feature_is_deterministic_per_seed():
    kw = dict(
        burstiness=0.5,
        lora_request_distribution="power",
        lora_on_mean_s=3.0,
        lora_off_mean_s=6.0,
        lora_shift_at=0.3,
        num_prompts=300,
    )
    assert _build(seed=2, **kw) == _build(seed=2, **kw)
    assert _build(seed=2, **kw) != _build(seed=3, **kw)
    trace = dict(dataset_name="trace", dataset_path=str(SHIPPED_TRACE), num_prompts=100)
    assert _build(seed=5, **trace) == _build(seed=5, **trace)
    assert _build(seed=5, **trace) != _build(seed=6, **trace)


def test_the_shipped_azure_format_trace_is_read():
    rows = read_trace(SHIPPED_TRACE)
    assert len(rows) == 300
    arrivals = [r.arrival for r in rows]
    assert arrivals[0] == 0.0 and arrivals == sorted(arrivals)
    # 2023-11-16 18:15:46.0038767 -> .0102805: the ISO times keep their sub-microsecond digits.
    assert rows[1].arrival == pytest.approx(0.0064038, abs=1e-7)
    assert rows[1].input_len == 481 and rows[1].output_len == 232 and rows[1].adapter is None
    assert 40 < rows[-1].arrival < 120  # about 4 req/s


def test_trace_with_and_without_adapters(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(
        "arrival_s,input_len,output_len,adapter,ignored\n"
        "10.5,100,20,a1,x\n"
        "10.0,3000,50,,x\n"  # out of order; the adapter drawn; lengths clipped
        "12.0,5,0,a3,x\n"
    )
    work = make_trace_workload(
        path,
        num_prompts=10,
        time_scale=0.5,
        vocab_size=50,
        lora_names=NAMES,
        context_length=1024,
        seed=1,
    )
    assert [r.arrival for r in work] == [0.0, 0.25, 1.0]  # relative to the first, halved
    assert [len(r.prompt) for r in work] == [1023, 100, 5]
    assert [r.output_len for r in work] == [1, 20, 1]
    assert work[1].lora_name == "a1" and work[2].lora_name == "a3" and work[0].lora_name in NAMES
    azure = tmp_path / "azure.csv"
    azure.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n0,10,10\n1.5,10,10\n3,10,10\n")
    drawn = make_trace_workload(
        azure,
        num_prompts=2,
        time_scale=1.0,
        vocab_size=50,
        lora_names=["x"],
        context_length=64,
        mix=AdapterMix(distribution="distinct"),
    )
    assert [(r.arrival, r.lora_name) for r in drawn] == [(0.0, "x"), (1.5, "x")]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("adapter,input_len,output_len\na0,1,1\n", "no arrival column"),
        ("arrival_s,input_len,output_len\nsoon,1,1\n", "neither seconds nor ISO"),
        ("arrival_s,input_len,output_len\n0,x,1\n", "line 2"),
        ("arrival_s,input_len,output_len,adapter\n0,1,1,zz\n", "adapter 'zz'"),
        ("arrival_s,input_len,output_len\n", "has no rows"),
    ],
)
def test_bad_traces_are_refused(tmp_path, text, needle):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=needle):
        make_trace_workload(
            path, num_prompts=5, time_scale=1.0, vocab_size=5, lora_names=NAMES, context_length=64
        )


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"burstiness": 0.0}, "burstiness=0.0"),
        ({"burstiness": float("inf")}, "burstiness=inf"),
        ({"lora_request_distribution": "zipf"}, "lora_request_distribution='zipf'"),
        ({"lora_request_distribution": "power", "lora_power_alpha": -1.0}, "lora_power_alpha=-1"),
        ({"lora_on_mean_s": -1.0}, "lora_on_mean_s=-1"),
        ({"lora_on_mean_s": 2.0}, "lora_off_mean_s=0.0"),
        ({"lora_shift_at": 1.5}, "lora_shift_at=1.5"),
        ({"lora_request_distribution": "distinct", "lora_shift_at": 0.5}, "distinct"),
        ({"dataset_name": "sharegpt"}, "dataset_name='sharegpt'"),
        ({"dataset_name": "trace"}, "dataset_path=None"),
        ({"dataset_path": "x.csv"}, "dataset_path='x.csv'"),
        ({"trace_time_scale": 0.0}, "trace_time_scale=0.0"),
        ({"request_rate": -1.0}, "request_rate=-1.0"),
        ({"num_prompts": 0}, "num_prompts=0"),
    ],
)
def test_bad_values_are_refused_by_name(kw, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        BenchConfig(**kw)


def test_a_missing_trace_file_is_named():
    with pytest.raises(ValueError, match="dataset_path='nope.csv' is not a file"):
        _build(dataset_name="trace", dataset_path="nope.csv")


def test_the_flags_are_in_bench_help():
    help_text = " ".join(build_parser().format_help().split())
    for flag in (
        "--burstiness",
        "--dataset-name",
        "--dataset-path",
        "--trace-time-scale",
        "--lora-power-alpha",
        "--lora-on-mean-s",
        "--lora-off-mean-s",
        "--lora-shift-at",
    ):
        assert flag in help_text
    assert "power" in help_text.split("--lora-request-distribution", 1)[1][:400]


def test_make_random_workload_keeps_its_signature():
    a = make_random_workload(
        num_prompts=50,
        request_rate=2.0,
        input_len=16,
        output_len=16,
        range_ratio=0.0,
        vocab_size=10,
        lora_names=["a", "b"],
        distribution="skewed",
        zipf_alpha=1.1,
        seed=9,
    )
    b = make_random_workload(
        num_prompts=50,
        request_rate=2.0,
        input_len=16,
        output_len=16,
        range_ratio=0.0,
        vocab_size=10,
        lora_names=["a", "b"],
        seed=9,
        mix=AdapterMix(distribution="skewed", zipf_alpha=1.1),
    )
    assert a == b


def test_a_trace_replays_in_the_simulator_end_to_end(tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cost model's calibrated setting differs
        main(
            [
                "--backend",
                "sim",
                "--model",
                "tiny",
                "--dtype",
                "float32",
                "--lora-paths",
                "a0=dummy:4",
                "a1=dummy:8",
                "a2=dummy:8",
                "--max-loras-per-batch",
                "2",
                "--max-lora-rank",
                "16",
                "--context-length",
                "512",
                "--max-running-requests",
                "32",
                "--max-prefill-tokens",
                "512",
                "--prefill-token-buckets",
                "128",
                "512",
                "--decode-batch-buckets",
                "8",
                "32",
                "--kv-len-buckets",
                "128",
                "512",
                "--dataset-name",
                "trace",
                "--dataset-path",
                str(SHIPPED_TRACE),
                "--trace-time-scale",
                "0.5",
                "--lora-request-distribution",
                "power",
                "--num-prompts",
                "40",
                "--disable-tqdm",
                "--output-file",
                str(out),
            ]
        )
    line = json.loads(out.read_text())
    assert line["completed"] == 40 and line["failed"] == 0
    assert line["bench_config"]["dataset_name"] == "trace"
    assert sum(v["count"] for v in line["per_adapter"].values()) == 40
    assert "Serving Benchmark Result: run" in capsys.readouterr().out


def _policy_suite():
    """``experiments/policy_suite.py`` as a module (an experiment, not a package)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "experiments/policy_suite.py"
    spec = importlib.util.spec_from_file_location("policy_suite", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("policy_suite", module)  # its dataclasses look their module up
    spec.loader.exec_module(sys.modules["policy_suite"])
    return sys.modules["policy_suite"]


def test_policy_suite_cells_hot_adapters_and_targets():
    suite = _policy_suite()
    names = [c.name for c in suite.CELLS]
    assert len(names) >= 30 and len(set(names)) == len(names)
    assert suite.hot_adapters(["a"] * 5 + ["b"] * 3 + ["c"] * 2) == {"a"}
    assert suite.hot_adapters(["a", "b", "c", "d"]) == {"a", "b"}  # ties by name
    off = {
        "num_prompts": 10,
        "completed": 10,
        "failed": 0,
        "p99_ttft_ms": 20_000.0,
        "median_ttft_ms": 200.0,
        "median_e2e_latency_ms": 5000.0,
        "p99_e2e_latency_ms": 30_000.0,
        "output_throughput": 1000.0,
    }
    sglang = off | {"p99_ttft_ms": 10_000.0, "median_ttft_ms": 2000.0}
    good = off | {"p99_ttft_ms": 2400.0, "median_ttft_ms": 1100.0, "output_throughput": 980.0}
    runs = {"off": off, "sglang@1": sglang, "fair@1": good}
    checks = {c.target: c for c in suite.check_targets(runs, "fair@1")}
    assert [t for t, c in checks.items() if c.ok is False] == []
    assert suite.meets_all(list(checks.values()))
    # The starved bound is max(0.3 x 20 s, 1 s + 1.5 s) = 6 s: 7 s misses it.
    slow = runs | {"fair@1": good | {"p99_ttft_ms": 7000.0, "output_throughput": 950.0}}
    missed = {c.target for c in suite.check_targets(slow, "fair@1") if c.ok is False}
    assert missed == {"starved P99 TTFT", "throughput"}
    calm = {k: r | {"p99_ttft_ms": 1000.0} for k, r in runs.items()}  # nobody starves
    assert {c.target: c.ok for c in suite.check_targets(calm, "fair@1")}["starved P99 TTFT"] is None
