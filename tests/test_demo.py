"""``make demo``: its simulated part gives the same verdict on every machine (checked here by its
direction, who wins what, not by its figures); its real part runs."""

from __future__ import annotations

import warnings

from jlora.demo import DemoConfig, main, run_part, winners


def test_the_simulated_part_shows_the_seed_story_and_fair_winning_the_tail(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a default simulated run has nothing to warn about
        part = run_part("sim", "sim", DemoConfig(out=str(tmp_path), real=False))
    m = {name: part.metrics[name] for name in ("off", "sglang", "fair")}
    # The drainer off starves the cold adapters: its tail TTFT is many times its median.
    assert m["off"]["p99_ttft_ms"] > 10 * m["off"]["median_ttft_ms"]
    # Both drainers cut the tail, fair the most, at the cost of some median TTFT; neither loses
    # throughput beyond 10%.
    assert m["fair"]["p99_ttft_ms"] < m["sglang"]["p99_ttft_ms"] < m["off"]["p99_ttft_ms"] / 2
    assert m["fair"]["mean_ttft_ms"] < m["sglang"]["mean_ttft_ms"] < m["off"]["mean_ttft_ms"]
    for name in ("sglang", "fair"):
        assert m[name]["p99_e2e_latency_ms"] < m["off"]["p99_e2e_latency_ms"]
        assert m[name]["output_throughput"] > 0.9 * m["off"]["output_throughput"]
        assert m[name]["completed"] == m["off"]["completed"] == 200
    best = winners(part.metrics)
    assert best["P99 TTFT"][0] == best["mean TTFT"][0] == ("fair",)
    # Every adapter's tail under fair is below the worst adapter's tail with the drainer off.
    worst_off = max(a["p99_ttft_ms"] for a in part.per_adapter["off"].values())
    assert all(a["p99_ttft_ms"] < worst_off / 2 for a in part.per_adapter["fair"].values())
    assert part.request_rate == 0.7 * part.capacity and part.kept_up
    assert (tmp_path / "sim" / "plots" / "ttft_cdf.png").is_file()


def test_the_demo_runs_end_to_end_with_its_real_part(tmp_path, capsys):
    main(["--out", str(tmp_path), "--num-prompts", "12", "--capacity-prompts", "8"])
    out = capsys.readouterr().out
    assert "1. SIMULATED (virtual time" in out and "2. REAL (the tiny model" in out
    assert "| P99 TTFT |" in out and "not run" not in out
    assert (tmp_path / "real" / "results.jsonl").read_text().count("\n") == 3
