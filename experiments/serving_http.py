"""The HTTP server's cost: the same workload in-process and through ``jlora serve`` over HTTP.

    python experiments/serving_http.py            # CPU, tiny model, a few minutes

For each workload (Poisson arrivals at ``--request-rate``; and 64 requests at once, 64 concurrent
streams), runs the in-process benchmark (``run_workload`` on an ``Engine``), then starts ``jlora
serve`` with the same engine flags in a subprocess and drives it with ``jlora bench --backend
http``'s driver (``run_http_workload``). Reported: completed requests, throughput, median TTFT
both ways; the HTTP overhead per request (the client's mean TTFT and E2E minus the server's own,
read from its ``/metrics``: the same requests timed at both ends); and the engine's step gaps (end
of one step to the start of the next while there is work) in-process and in the server. Writes the
raw figures as JSON (``--out``); the tables in ``experiments/results/serving_http.md`` are
rendered from it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from jlora.bench.driver import run_workload
from jlora.bench.http_driver import run_http_workload
from jlora.bench.metrics import compute_metrics
from jlora.bench.workload import make_random_workload
from jlora.config import EngineConfig
from jlora.engine import Engine

ROOT = Path(__file__).resolve().parent.parent
ENGINE = dict(
    model="tiny",
    dtype="float32",
    lora_paths={"a0": "dummy:8", "a1": "dummy:8", "a2": "dummy:16"},
    max_loras_per_batch=2,
    max_lora_rank=16,
    context_length=512,
    page_size=16,
    max_running_requests=64,
    max_prefill_tokens=1024,
)


def flags(engine: dict) -> list[str]:
    out = []
    for key, value in engine.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, dict):
            out += [flag, *(f"{k}={v}" for k, v in value.items())]
        else:
            out += [flag, str(value)]
    return out


def gap_stats(gaps: list[float]) -> dict:
    g = np.asarray(gaps)
    return {
        "count": int(g.size),
        "mean_ms": float(g.mean() * 1e3) if g.size else float("nan"),
        "over_1ms": float((g > 1e-3).mean()) if g.size else float("nan"),
        "over_5ms": float((g > 5e-3).mean()) if g.size else float("nan"),
    }


def in_process(workload) -> dict:
    engine = Engine(EngineConfig(**ENGINE))
    busy: list[bool] = []

    def observe(e, record) -> None:
        busy.append(e.has_unfinished())

    result = run_workload(engine, workload, observers=(observe,), progress=False)
    steps = result.steps
    # A gap counts only when the engine still had work after the step before it (no idle sleep).
    gaps = [b.start - a.end for a, b, w in zip(steps, steps[1:], busy, strict=False) if w]
    return {"metrics": compute_metrics(result.outputs, result.duration), "gaps": gap_stats(gaps)}


def _scrape(base_url: str) -> dict:
    text = httpx.get(base_url + "/metrics", timeout=30).text
    out: dict = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith(("_sum", "_count")) or s.name.endswith("_bucket"):
                key = s.name + ("" if "le" not in s.labels else f"[{s.labels['le']}]")
                out[key] = out.get(key, 0.0) + s.value
    return out


def over_http(workload) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "jlora.server", *flags(ENGINE), "--port", str(port)]
    cmd += ["--log-level", "warning"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(base + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("jlora serve did not start")
            time.sleep(0.5)
        # One request first: the HTTP path's own first-call costs (a connection, FastAPI's and
        # pydantic's first use), as the in-process engine is warm (compiled) too.
        run_http_workload(base, workload[:1], progress=False)
        before = _scrape(base)
        result = run_http_workload(base, workload, progress=False)
        after = _scrape(base)
    finally:
        proc.terminate()
        proc.wait(30)
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    metrics = compute_metrics(result.outputs, result.duration)
    n = d["jlora_time_to_first_token_seconds_count"]
    ok = [o for o in result.outputs if o.error is None]
    server = {
        "mean_ttft_ms": d["jlora_time_to_first_token_seconds_sum"] / n * 1e3,
        "mean_e2e_ms": d["jlora_e2e_request_latency_seconds_sum"] / n * 1e3,
        "requests": n,
    }
    client = {
        "mean_ttft_ms": float(np.mean([o.ttft for o in ok]) * 1e3),
        "mean_e2e_ms": float(np.mean([o.e2e for o in ok]) * 1e3),
    }
    gaps_n = d["jlora_engine_step_gap_seconds_count"]
    gaps = {
        "count": int(gaps_n),
        "mean_ms": d["jlora_engine_step_gap_seconds_sum"] / gaps_n * 1e3,
        "over_1ms": 1 - d["jlora_engine_step_gap_seconds_bucket[0.001]"] / gaps_n,
        "over_5ms": 1 - d["jlora_engine_step_gap_seconds_bucket[0.005]"] / gaps_n,
    }
    return {"metrics": metrics, "server": server, "client": client, "gaps": gaps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--request-rate", type=float, default=2.0)
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--out", default=str(ROOT / "experiments/results/serving_http.json"))
    args = p.parse_args()
    names = list(ENGINE["lora_paths"]) + [None]
    workloads = {
        f"poisson{args.request_rate:g}": make_random_workload(
            num_prompts=args.num_prompts,
            request_rate=args.request_rate,
            input_len=args.input_len,
            output_len=args.output_len,
            range_ratio=0.5,
            vocab_size=256,
            lora_names=names,
        ),
        "burst64": make_random_workload(
            num_prompts=64,
            request_rate=float("inf"),
            input_len=args.input_len,
            output_len=2 * args.output_len,
            range_ratio=1.0,
            vocab_size=256,
            lora_names=names,
        ),
    }
    out = {"args": vars(args), "engine": ENGINE, "load_average": os.getloadavg(), "runs": {}}
    for name, workload in workloads.items():
        local = in_process(workload)
        remote = over_http(workload)
        out["runs"][name] = {"in_process": local, "http": remote}
        lm, rm = local["metrics"], remote["metrics"]
        print(
            f"{name}: completed {lm['completed']} / {rm['completed']}; "
            f"req/s {lm['request_throughput']:.2f} / {rm['request_throughput']:.2f} "
            f"({rm['request_throughput'] / lm['request_throughput'] - 1:+.1%}); "
            f"median TTFT ms {lm['median_ttft_ms']:.1f} / {rm['median_ttft_ms']:.1f}; "
            f"HTTP overhead ms TTFT "
            f"{remote['client']['mean_ttft_ms'] - remote['server']['mean_ttft_ms']:.2f} E2E "
            f"{remote['client']['mean_e2e_ms'] - remote['server']['mean_e2e_ms']:.2f}; "
            f"gaps mean ms {local['gaps']['mean_ms']:.3f} / {remote['gaps']['mean_ms']:.3f}, "
            f">1ms {local['gaps']['over_1ms']:.1%} / {remote['gaps']['over_1ms']:.1%}"
        )
    out["load_average_after"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
