"""Printed reports: SGLang's ``bench_serving`` block, per-adapter TTFT, and the side-by-side table
of several settings with the % change column of the seed's table."""

from __future__ import annotations

_BLOCK = [
    ("Successful requests:", "completed", "d"),
    ("Failed requests:", "failed", "d"),
    ("Benchmark duration (s):", "duration", ".2f"),
    ("Total input tokens:", "total_input_tokens", "d"),
    ("Total generated tokens:", "total_output_tokens", "d"),
    ("Request throughput (req/s):", "request_throughput", ".2f"),
    ("Input token throughput (tok/s):", "input_throughput", ".2f"),
    ("Output token throughput (tok/s):", "output_throughput", ".2f"),
    ("Total token throughput (tok/s):", "total_throughput", ".2f"),
    ("Concurrency:", "concurrency", ".2f"),
    ("End-to-End Latency", None, None),
    ("Mean E2E Latency (ms):", "mean_e2e_latency_ms", ".2f"),
    ("Median E2E Latency (ms):", "median_e2e_latency_ms", ".2f"),
    ("P90 E2E Latency (ms):", "p90_e2e_latency_ms", ".2f"),
    ("P99 E2E Latency (ms):", "p99_e2e_latency_ms", ".2f"),
    ("Time to First Token", None, None),
    ("Mean TTFT (ms):", "mean_ttft_ms", ".2f"),
    ("Median TTFT (ms):", "median_ttft_ms", ".2f"),
    ("P99 TTFT (ms):", "p99_ttft_ms", ".2f"),
    ("Time per Output Token (excl. 1st token)", None, None),
    ("Mean TPOT (ms):", "mean_tpot_ms", ".2f"),
    ("Median TPOT (ms):", "median_tpot_ms", ".2f"),
    ("P99 TPOT (ms):", "p99_tpot_ms", ".2f"),
    ("Inter-Token Latency", None, None),
    ("Mean ITL (ms):", "mean_itl_ms", ".2f"),
    ("Median ITL (ms):", "median_itl_ms", ".2f"),
    ("P99 ITL (ms):", "p99_itl_ms", ".2f"),
]

# Rows of the seed's comparison table, in its order.
COMPARE_ROWS = [
    ("Mean E2E Latency ms", "mean_e2e_latency_ms"),
    ("Median E2E Latency ms", "median_e2e_latency_ms"),
    ("P90 E2E Latency ms", "p90_e2e_latency_ms"),
    ("P99 E2E Latency ms", "p99_e2e_latency_ms"),
    ("Mean TTFT ms", "mean_ttft_ms"),
    ("Median TTFT ms", "median_ttft_ms"),
    ("P99 TTFT ms", "p99_ttft_ms"),
    ("Mean TPOT ms", "mean_tpot_ms"),
    ("Output throughput tok/s", "output_throughput"),
]


def _fmt(value, spec: str) -> str:
    if spec == "d":
        return str(int(value))
    return format(value, spec)


def format_block(
    name: str, metrics: dict, request_rate: float, simulated: str | None = None
) -> str:
    """SGLang's result block; ``simulated``: the cost model's description, for a simulated run
    (its durations are virtual time, not this machine's)."""
    lines = [f"{' Serving Benchmark Result: ' + name + ' ':=^50}"]
    if simulated:
        lines.append(f"SIMULATED: times are virtual, from {simulated}")
    lines.append(f"{'Traffic request rate:':<40} {request_rate}")
    for label, key, spec in _BLOCK:
        if key is None:
            lines.append(f"{label:-^50}")
        else:
            lines.append(f"{label:<40} {_fmt(metrics[key], spec):>9}")
    lines.append("=" * 50)
    return "\n".join(lines)


def format_per_adapter(per_adapter: dict) -> str:
    lines = [
        "| adapter | requests | TTFT P50 (ms) | TTFT P99 (ms) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, v in per_adapter.items():
        lines.append(f"| {name} | {v['count']} | {v['p50_ttft_ms']:.1f} | {v['p99_ttft_ms']:.1f} |")
    return "\n".join(lines)


def format_host_cache(host_bytes: dict[str, int]) -> str:
    """One line: the host memory of the adapter cache, per adapter and in all (MiB)."""
    each = ", ".join(f"{name} {n / 2**20:.1f}" for name, n in host_bytes.items())
    total = sum(host_bytes.values()) / 2**20
    return f"host cache of adapters (MiB): {each or 'empty'}; total {total:.1f}"


def format_compare(results: dict[str, dict]) -> str:
    """Markdown table: one column per setting, and % change of each against the first."""
    names = list(results)
    header = (
        "| Metric | " + " | ".join(names) + " | " + " | ".join(f"% {n}" for n in names[1:]) + " |"
    )
    lines = [header, "| --- |" + " ---: |" * (2 * len(names) - 1)]
    for label, key in COMPARE_ROWS:
        base = results[names[0]][key]
        cells = [f"{results[n][key]:.2f}" for n in names]
        changes = [
            f"{100 * (results[n][key] / base - 1):+.1f}%" if base else "-" for n in names[1:]
        ]
        lines.append(f"| {label} | " + " | ".join(cells + changes) + " |")
    return "\n".join(lines)


def describe_cost_model(info: dict, calibrated_step: dict) -> str:
    """``the cost model of <model> on <device> (calibrated <date>[, with <settings>])``."""
    with_ = ", ".join(f"{k}={v!r}" for k, v in calibrated_step.items())
    return (
        f"the cost model of {info.get('model', '?')} on {info.get('device_kind', '?')} "
        f"(calibrated {info.get('date', '?')}{', with ' + with_ if with_ else ''})"
    )
