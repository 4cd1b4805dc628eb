"""The benchmark's TensorBoard runs: a fresh directory per invocation, the settings as text and
hparams, per-request TPOT / ITL, histograms, and an x axis of seconds since the run's start."""

from __future__ import annotations

import dataclasses

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util.tensor_util import make_ndarray

from jlora.bench.cli import run_bench
from jlora.bench.config import BenchConfig
from jlora.demo import demo_engine_config


def test_each_invocation_writes_fresh_runs_with_settings_histograms_and_a_time_axis(tmp_path):
    engine = demo_engine_config()
    bench = BenchConfig(
        backend="sim",
        num_prompts=40,
        request_rate=20.0,
        random_input_len=64,
        random_output_len=64,
        compare=("off", "fair:lora_drain_wait_threshold=1,lora_drain_policy=fair"),
        tensorboard_dir=str(tmp_path),
        disable_tqdm=True,
    )
    run_bench(engine, bench, quiet=True)
    run_bench(engine, dataclasses.replace(bench, compare=("off",)), quiet=True)
    stamps = sorted(p.name for p in tmp_path.iterdir())
    assert len(stamps) == 2  # the second run did not append to the first's
    assert sorted(p.name for p in (tmp_path / stamps[0]).iterdir()) == ["fair", "off"]

    events = EventAccumulator(str(tmp_path / stamps[0] / "fair"), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("step/time_ms", "queue/waiting", "waiting/adapter3", "request/ttft_ms"):
        assert tag in tags["scalars"], tag
    for tag in ("request/tpot_ms", "request/itl_mean_ms", "request/itl_max_ms"):
        assert len(events.Scalars(tag)) == 40, tag  # every request has over one token here
    # Histograms as TensorBoard 2 writes them: tensors of (left, right, count) buckets.
    assert {"hist/ttft_ms", "hist/itl_ms", "hist_ttft_ms/adapter0"} <= set(tags["tensors"])
    buckets = make_ndarray(events.Tensors("hist/ttft_ms")[0].tensor_proto)
    assert buckets[:, 2].sum() == 40
    settings = events.Tensors("settings")[0].tensor_proto.string_val[0].decode()
    assert "| lora_drain_policy | `'fair'` |" in settings and "| backend | `'sim'` |" in settings
    # Wall time = start + run time: RELATIVE reads the step's milliseconds as seconds.
    points = events.Scalars("step/time_ms")
    t0 = points[0].wall_time - points[0].step / 1e3
    for p in points:
        assert p.wall_time - t0 == pytest.approx(p.step / 1e3, abs=2e-3)
    assert points[-1].step / 1e3 > 1.0  # a run of seconds, in virtual time
