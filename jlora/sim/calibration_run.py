"""Calibrating the simulator's cost model, as a command (``experiments/calibrate_costs.py`` runs
:func:`main`; ``experiments/sim_fidelity.py`` reuses the setting, engine and outputs): time the
real engine's steps and fit
:class:`~jlora.sim.cost_model.CostModel`, written as JSON (the file ``--backend sim`` reads) with a
markdown summary of the fit.

    JAX_PLATFORMS=cpu .venv/bin/python experiments/calibrate_costs.py --model tiny --clock cpu
    PYTHONPATH=. python experiments/calibrate_costs.py --model llama-3.1-8b     # on the H100

``--loads-only`` measures only the adapter loads and replaces the load terms (``load``,
``load_device``, ``host_load``) of the shipped cost model of this device and model, keeping its
step terms (minutes on the H100, no step is compiled)::

    PYTHONPATH=. python experiments/calibrate_costs.py --model llama-3.1-8b --loads-only

The engine is built with the setting of the model (``SETUPS``, any field overridable) and warmed
up; :func:`jlora.sim.calibrate.calibrate` times designed steps over every bucket, adapter loads,
and a burst of requests served end to end. Output: ``jlora/sim/cost_models/<device>__<model>.json``
and ``experiments/results/cost_model_<device>__<model>.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from jlora.bench.results_file import REPO_ROOT as ROOT
from jlora.bench.results_file import command_line, git_commit, write_results_file

# Per model: the engine setting calibrated (kept small enough to compile and run in minutes) and
# how much to measure. ``tiny`` is the setting of ``make demo``; the 8B one that of the seed.
SETUPS: dict[str, dict] = {
    "tiny": dict(
        dtype="float32",
        ranks=(8, 16, 16, 32, 64, 8),
        slots=3,
        max_lora_rank=64,
        context=512,
        max_running=32,
        max_prefill_tokens=512,
        prefill_buckets=(128, 512),
        decode_buckets=(8, 32),
        kv_buckets=(128, 512),
        reps=5,
        serving_requests=96,
        serving_max_len=128,
        load_reps=3,
    ),
    "llama-3.1-8b": dict(
        dtype="bfloat16",
        ranks=(8, 16, 16, 32, 64, 8),
        slots=3,
        max_lora_rank=64,
        context=1024,
        max_running=128,
        max_prefill_tokens=2048,
        prefill_buckets=(512, 2048),
        decode_buckets=(1, 16, 64, 128),
        kv_buckets=(256, 1024),
        reps=3,
        serving_requests=96,
        serving_max_len=256,
        load_reps=2,
    ),
}


def build_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="tiny", choices=sorted(SETUPS))
    p.add_argument("--dtype")
    p.add_argument("--lora-backend", default="auto", help="EngineConfig.lora_backend")
    p.add_argument(
        "--graph-scheduling",
        default="concurrent",
        help="EngineConfig.graph_scheduling (GPU); the H100 cost model shipped on 2026-11-24 was "
        "calibrated under serialize, XLA's default before the option existed",
    )
    p.add_argument("--ranks", type=int, nargs="+", help="ranks of the registered dummy adapters")
    p.add_argument("--slots", type=int, help="max_loras_per_batch")
    p.add_argument("--max-lora-rank", type=int)
    p.add_argument("--context", type=int)
    p.add_argument("--max-running", type=int)
    p.add_argument("--max-prefill-tokens", type=int)
    p.add_argument("--prefill-buckets", type=int, nargs="+")
    p.add_argument("--decode-buckets", type=int, nargs="+")
    p.add_argument("--kv-buckets", type=int, nargs="+")
    p.add_argument("--max-total-tokens", type=int, help="KV capacity (default: the engine's)")
    p.add_argument("--reps", type=int)
    p.add_argument("--serving-requests", type=int)
    p.add_argument("--serving-max-len", type=int)
    p.add_argument("--load-reps", type=int)
    p.add_argument(
        "--clock",
        default="wall",
        choices=("wall", "cpu"),
        help="wall: time.perf_counter (a GPU, a quiet CPU); cpu: this process's CPU time (a CPU "
        "shared with other work)",
    )
    p.add_argument(
        "--loads-only",
        action="store_true",
        help="measure only the adapter loads; replace the load terms of the existing cost model",
    )
    p.add_argument("--out", help="cost model JSON (default: jlora/sim/cost_models/...)")
    p.add_argument("--summary", help="markdown summary (default: experiments/results/...)")
    return p


def setup(args) -> dict:
    s = dict(SETUPS[args.model])
    for key in s:
        value = getattr(args, key, None)
        if value is not None:
            s[key] = tuple(value) if isinstance(value, list) else value
    return s


def engine_config(args, s: dict):
    from jlora.config import EngineConfig

    return EngineConfig(
        model=args.model,
        load_format="dummy",
        dtype=s["dtype"],
        lora_paths={f"a{i}": f"dummy:{r}" for i, r in enumerate(s["ranks"])},
        max_loras_per_batch=s["slots"],
        max_lora_rank=s["max_lora_rank"],
        lora_backend=args.lora_backend,
        graph_scheduling=args.graph_scheduling,
        context_length=s["context"],
        max_running_requests=s["max_running"],
        max_prefill_tokens=s["max_prefill_tokens"],
        prefill_token_buckets=s["prefill_buckets"],
        decode_batch_buckets=s["decode_buckets"],
        kv_len_buckets=s["kv_buckets"],
        max_total_tokens=args.max_total_tokens,
    )


def make_clock(args):
    from jlora.clock import RealClock
    from jlora.sim.fidelity import CpuClock

    return CpuClock() if args.clock == "cpu" else RealClock()


def build_engine(args, s: dict, clock):
    from jlora.engine import Engine

    t = time.perf_counter()
    engine = Engine(engine_config(args, s), clock=clock)
    shapes = len(engine.buckets.all_shapes())
    print(f"engine: {shapes} step shapes compiled in {time.perf_counter() - t:.0f} s", flush=True)
    return engine


def calibrate_engine(engine, args, s: dict, clock):
    from jlora.sim.calibrate import Design, calibrate

    design = Design(
        reps=s["reps"],
        load_ranks=tuple(sorted({8, 16, s["max_lora_rank"]})),
        load_reps=s["load_reps"],
        serving_requests=s["serving_requests"],
        serving_max_len=s["serving_max_len"],
    )
    return calibrate(engine, design, timer=clock.now, log=lambda m: print(m, flush=True))


def default_paths(cost) -> tuple[Path, Path]:
    name = f"{cost.info['device']}__{cost.info['model']}"
    return (
        ROOT / "jlora" / "sim" / "cost_models" / f"{name}.json",
        ROOT / "experiments" / "results" / f"cost_model_{name}.md",
    )


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.3f}"


def summary_markdown(cost, command: str, clock: str) -> str:
    """The fit's tables and setting (the body of the calibration's Log entry)."""
    info, fit = cost.info, cost.info["fit"]
    cal = info["calibrated_with"]
    lines = [
        f"- date: {info['date']}; device: {info['device_kind']}; jax {info['jax']}; clock: {clock}",
        f"- calibrated setting: {', '.join(f'{k}={v}' for k, v in cal.items())}",
        f"- calibration took {info['calibration_seconds']} s (after compiling)",
        f"- command: `{command}`",
        "",
        "Step time = sum of coefficient x feature (see `jlora/sim/cost_model.py`), plus the "
        "residual of the step's padded shape where it was measured. Device terms come from the "
        "runner's steps (designed and served), host terms (engine loop, scheduler, driver) from "
        "the time between two steps of the served burst.",
        "",
        "| feature | prefill device (us/unit) | prefill host | decode device | decode host |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    from jlora.sim.cost_model import FEATURES

    for f in FEATURES:
        vals = [
            fit[k][part].get(f, 0.0)
            for k in ("prefill", "decode")
            for part in ("device_coef", "host_coef")
        ]
        if any(vals):
            lines.append(f"| {f} | " + " | ".join(f"{1e6 * v:.4g}" for v in vals) + " |")
    lines += [
        "",
        "Relative error of the fit (`linear`: the linear form alone; the others with the shape "
        "residuals): `design` = the designed steps (medians of repetitions), `serving` = every "
        "step of the served burst, `host` = the host time between two steps.",
        "",
        "| kind | samples | linear median | linear max | median | p90 | max |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in ("prefill", "decode"):
        for part in ("design", "serving", "host"):
            e = fit[kind][part]
            if not e.get("samples"):
                continue
            lines.append(
                f"| {kind} {part} | {e['samples']} | {100 * e['linear_median_rel_err']:.1f}% | "
                f"{100 * e['linear_max_rel_err']:.1f}% | {100 * e['median_rel_err']:.1f}% | "
                f"{100 * e['p90_rel_err']:.1f}% | {100 * e['max_rel_err']:.1f}% |"
            )
    lines += [
        "",
        "Designed steps per padded shape (median over sizes inside the bucket and adapter mixes):",
        "",
        "| kind | shape (T, C) / (B, P) tokens | steps | measured (ms) | model (ms) |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    groups: dict[tuple, list] = {}
    for kind, a, b, measured, model in fit["design_samples"]:
        groups.setdefault((kind, a, b), []).append((measured, model))
    import statistics

    for (kind, a, b), rows in sorted(groups.items()):
        lines.append(
            f"| {kind} | ({a}, {b}) | {len(rows)} | "
            f"{_ms(statistics.median(r[0] for r in rows))} | "
            f"{_ms(statistics.median(r[1] for r in rows))} |"
        )
    lines += ["", *load_markdown(cost, heading="####"), ""]
    return "\n".join(lines)


def load_markdown(cost, heading: str = "##") -> list[str]:
    """The load terms, and which build measured them."""
    terms = cost.info.get("load_terms")
    if terms is None:
        built = (
            "measured by the build before issue #17 (blocking loads: the padded layout built on "
            "the host at every load; `load` is the whole load, the host read does not lay the "
            "adapter out). Measure them again with this build: `PYTHONPATH=. python "
            f"experiments/calibrate_costs.py --model {cost.info.get('model')} --loads-only`"
        )
    elif isinstance(terms, str):
        built = f"measured with the calibration above: {terms}"
    else:
        built = (
            f"measured on {terms['date']} at commit {terms['commit']} ({terms['device_kind']}, "
            f"jax {terms['jax']}): {terms['build']}; command: `{terms['command']}`"
        )
    device = cost.load_device
    return [
        f"{heading} Adapter loads",
        "",
        f"- slot load, host part (the host loop is held): {_ms(cost.load['const'])} ms + "
        f"{_ms(cost.load['rank'])} ms x rank",
        f"- slot load, until the slot is usable (after the host part): "
        f"{_ms(device.get('const', 0.0))} ms + {_ms(device.get('rank', 0.0))} ms x rank",
        f"- host read of a dummy adapter: "
        f"{_ms(cost.host_load['const'])} ms + {_ms(cost.host_load['rank'])} ms x rank",
        f"- {built}",
    ]


def write_outputs(cost, args, clock: str) -> tuple[Path, Path]:
    json_path, md_path = default_paths(cost)
    json_path = Path(args.out) if args.out else json_path
    md_path = Path(args.summary) if args.summary else md_path
    cost.save(json_path)
    write_summary(cost, md_path, json_path, clock, getattr(args, "loads_only", False))
    print(f"wrote {json_path} and {md_path}", flush=True)
    return json_path, md_path


def _summary_claim(cost) -> str:
    """The fit's median relative error per step kind over the served burst."""
    fit = cost.info["fit"]
    errs = [
        f"{kind} {100 * fit[kind]['serving']['median_rel_err']:.1f}%"
        for kind in ("prefill", "decode")
        if fit.get(kind, {}).get("serving", {}).get("samples")
    ]
    return (
        f"cost model of `{cost.info['model']}` on {cost.info['device_kind']}: median error of "
        "the served burst's steps " + (", ".join(errs) or "not measured")
    )


def write_summary(cost, md_path: Path, json_path: Path, clock: str, loads_only: bool) -> None:
    """Write the cost model's results file ``md_path`` through ``write_results_file``: its
    ``## Current`` rewritten (with ``loads_only``, the old one kept but for its load-terms line),
    and a Log entry on top of its Log, which is kept: the whole fit, or the load terms alone."""
    info = cost.info
    command = command_line()
    commit, date = git_commit(), time.strftime("%Y-%m-%d")
    shown = json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT) else json_path
    old = md_path.read_text() if md_path.is_file() else ""
    if loads_only and "## Log" in old:
        kept = [
            line
            for line in old.split("## Log", 1)[0].rstrip("\n").splitlines()
            if not line.startswith("- load terms re-measured:")
        ]
        current = "\n".join(kept) + "\n"
        current += f"- load terms re-measured: commit `{commit}`, {date} (the newest Log entry)\n\n"
        verdict = f"load terms of `{info['model']}` on {info['device_kind']} re-measured"
        body = "\n".join([f"- command: `{command}`", "", *load_markdown(cost, heading="####")])
    else:
        claim = _summary_claim(cost)
        current = "\n".join(
            [
                f"# Cost model: {info['device']} / {info['model']}",
                "",
                "## Current",
                "",
                f"- commit `{commit}`, {date}; device: {info['device_kind']}; jax {info['jax']}; "
                f"clock: {clock}",
                f"- command: `{command}`",
                f"- claim: {claim} (the fit's tables: the newest Log entry)",
                f"- raw data: `{shown}` (the cost model)",
                "",
            ]
        )
        current += "\n"
        verdict = claim
        body = summary_markdown(cost, command, clock)
    write_results_file(md_path, current, verdict, body=body)


def recalibrate_loads(args, s: dict, clock):
    """The existing cost model of this device and model with its load terms measured again
    (an engine without warm-up: no step is compiled, only the slot writes)."""
    import dataclasses
    import datetime

    import jax

    from jlora.engine import Engine
    from jlora.sim.calibrate import (
        LOAD_BUILD,
        Design,
        device_tag,
        load_fit,
        load_terms,
        measure_loads,
    )
    from jlora.sim.cost_model import CostModel

    name = f"{device_tag()}__{args.model}"
    path = Path(args.out) if args.out else ROOT / "jlora" / "sim" / "cost_models" / f"{name}.json"
    cost = CostModel.load_file(path)
    config = dataclasses.replace(engine_config(args, s), warmup=False)
    t = time.perf_counter()
    engine = Engine(config, clock=clock)
    print(f"engine built in {time.perf_counter() - t:.0f} s", flush=True)
    design = Design(load_ranks=tuple(sorted({8, 16, s["max_lora_rank"]})), load_reps=3)
    t = time.perf_counter()
    loads = measure_loads(engine, design, clock.now)
    print(f"loads timed in {time.perf_counter() - t:.0f} s", flush=True)
    when = {
        "build": LOAD_BUILD,
        "commit": git_commit(),
        "date": datetime.date.today().isoformat(),
        "jax": jax.__version__,
        "device_kind": jax.devices()[0].device_kind,
        "command": command_line(),
    }
    fit = dict(cost.info.get("fit") or {}) | load_fit(loads)
    info = dict(cost.info) | {"fit": fit, "load_terms": when}
    return dataclasses.replace(cost, **load_terms(loads), info=info)


def main(argv: list[str] | None = None) -> None:
    args = build_parser(__doc__.split("\n\n")[0]).parse_args(argv)
    s = setup(args)
    clock = make_clock(args)
    if args.loads_only:
        cost = recalibrate_loads(args, s, clock)
    else:
        engine = build_engine(args, s, clock)
        cost = calibrate_engine(engine, args, s, clock)
    write_outputs(cost, args, args.clock)
