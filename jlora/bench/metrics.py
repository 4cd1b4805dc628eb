"""SGLang's serving metrics from finished requests (same names and keys as ``bench_serving``).

TTFT: arrival to the first token available to the caller. TPOT: ``(e2e - ttft) / (n - 1)`` over
requests of more than one token. ITL: every gap between two tokens of a request. E2E: arrival to the
last token. Concurrency: the sum of E2E over the run's duration (mean requests in flight).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from jlora.scheduler.request import RequestOutput


def _stats(prefix: str, values_s: list[float], which: tuple[str, ...]) -> dict[str, float]:
    ms = np.asarray(values_s, np.float64) * 1e3
    out = {}
    for w in which:
        key = f"{w}_{prefix}_ms"
        if ms.size == 0:
            out[key] = float("nan")
        elif w == "mean":
            out[key] = float(ms.mean())
        elif w == "median":
            out[key] = float(np.median(ms))
        elif w == "std":
            out[key] = float(ms.std())
        else:  # p90, p99
            out[key] = float(np.percentile(ms, int(w[1:])))
    return out


def compute_metrics(outputs: list[RequestOutput], duration: float) -> dict[str, float]:
    ok = [o for o in outputs if o.error is None and o.first_token_time is not None]
    ttft = [o.ttft for o in ok]
    e2e = [o.e2e for o in ok]
    tpot = [(o.e2e - o.ttft) / (len(o.token_ids) - 1) for o in ok if len(o.token_ids) > 1]
    itl = [b - a for o in ok for a, b in zip(o.token_times, o.token_times[1:], strict=False)]
    total_in = sum(o.prompt_len for o in ok)
    total_out = sum(len(o.token_ids) for o in ok)
    m: dict[str, float] = {
        "completed": len(ok),
        "failed": len(outputs) - len(ok),
        "duration": duration,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration,
        "input_throughput": total_in / duration,
        "output_throughput": total_out / duration,
        "total_throughput": (total_in + total_out) / duration,
        "concurrency": sum(e2e) / duration,
    }
    m |= _stats("e2e_latency", e2e, ("mean", "median", "std", "p90", "p99"))
    m |= _stats("ttft", ttft, ("mean", "median", "std", "p99"))
    m |= _stats("tpot", tpot, ("mean", "median", "std", "p99"))
    m |= _stats("itl", itl, ("mean", "median", "std", "p99"))
    return m


def per_adapter_ttft(outputs: list[RequestOutput]) -> dict[str, dict[str, float]]:
    """TTFT P50 / P99 (ms) and count per adapter ("base" for no adapter)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for o in outputs:
        if o.error is None and o.first_token_time is not None:
            groups[o.lora_name or "base"].append(o.ttft * 1e3)
    return {
        name: {
            "count": len(v),
            "p50_ttft_ms": float(np.percentile(v, 50)),
            "p99_ttft_ms": float(np.percentile(v, 99)),
        }
        for name, v in sorted(groups.items())
    }
