"""The policy suite (issue #18): every drain policy at several thresholds against the drainer off,
in the simulator, over bursty and skewed workloads, and the targets a policy must meet checked by
code.

    .venv/bin/python experiments/policy_suite.py                     # the whole suite (minutes)
    .venv/bin/python experiments/policy_suite.py --policies fair --thresholds 1,3
    .venv/bin/python experiments/policy_suite.py --quick --cells 'seed-*,zipf*'

Cells (:data:`CELLS`, one table): a workload (:class:`~jlora.bench.config.BenchConfig` fields over
the seed's) and an engine (:class:`~jlora.config.EngineConfig` fields over the seed's). The seed
workload is SGLang's drainer benchmark (PR #17913): Llama-3.1-8B, six dummy adapters of ranks 8,
16, 16, 32, 64, 8, three slots (``max_loras_per_batch=3``, ``max_loaded_loras=6``), 200 prompts,
lengths uniform in [1, 512], Poisson arrivals, adapters uniform; the engine set as the cost model
was calibrated (:func:`jlora.sim.calibrated_setting`). The overload cell's rate is 1.2x the
capacity, measured first: the throughput of the drainer off with every request sent at once.

Settings: ``off`` (FCFS), then each of ``--policies`` at each of ``--thresholds`` seconds. The
targets compare each setting with ``off`` of the same cell, and with ``sglang`` at the same
threshold (run with ``fair`` when not asked for). Runs go over ``--jobs`` processes; each run's
metrics are one JSON line in ``--raw`` (a run replaces the lines of the same cell and setting,
so a partial run merges into the whole), from which ``policy_suite.md`` and the heat map are
rendered (``--render-only`` renders without running).

Hot and tail adapters: in each workload, sort the adapters by their number of requests (most
first, ties by name); the hot ones are the fewest that receive at least half of the requests, the
tail ones the rest. "Hot P99 TTFT" is the P99 TTFT of the hot adapters' requests together, "tail
P99 TTFT" that of the others'.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import fnmatch
import json
import math
import multiprocessing
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jlora.bench.results_file import REPO_ROOT as ROOT
from jlora.bench.results_file import command_line, git_commit, write_results_file
from jlora.bench.seed import SEED_RANKS

RESULTS = ROOT / "experiments/results"
MODEL = "llama-3.1-8b"
SEED_WORKLOAD = dict(
    num_prompts=200, random_input_len=512, random_output_len=512, random_range_ratio=0.0
)
SEED_ENGINE = dict(max_loras_per_batch=3)  # max_loaded_loras: every adapter of the cell
TRACE = ROOT / "jlora/bench/data/azure_synthetic_trace.csv"
OVERLOAD = 1.2  # the overload cell's rate, times the measured capacity
CAPACITY_PROMPTS = 1000  # requests of the capacity run: enough that the ramp and drain weigh little
STARVED_MS = 5000.0  # drainer-off P99 TTFT from which a cell starves someone


@dataclass(frozen=True)
class Cell:
    name: str
    workload: dict = field(default_factory=dict)
    """BenchConfig fields over :data:`SEED_WORKLOAD` (``request_rate="overload"``: 1.2x the
    measured capacity)."""
    engine: dict = field(default_factory=dict)
    """EngineConfig fields over :data:`SEED_ENGINE`."""
    ranks: tuple[int, ...] = SEED_RANKS
    """The adapters' ranks (adapter ``a{i}`` has rank ``ranks[i]``)."""
    group: str | None = None
    """Cells of one group (the seed workload's seeds at one rate) are also summarized."""


SEEDS = (1, 2, 3, 4, 5)
CELLS: tuple[Cell, ...] = (
    *(
        Cell(f"seed-r{rate}-s{seed}", {"request_rate": rate, "seed": seed}, group=f"seed-r{rate}")
        for rate in (1, 2, 4, 8)
        for seed in SEEDS
    ),
    *(
        Cell(
            f"zipf{a:g}",
            {"request_rate": 4, "lora_request_distribution": "skewed", "lora_zipf_alpha": a},
        )
        for a in (0.6, 1.1, 1.5)
    ),
    Cell(
        "power0.5",
        {"request_rate": 4, "lora_request_distribution": "power", "lora_power_alpha": 0.5},
    ),
    Cell(
        "32on8",
        {"request_rate": 4},
        {"max_loras_per_batch": 8},
        ranks=SEED_RANKS * 5 + SEED_RANKS[:2],
    ),
    Cell(
        "32on8-zipf1.1",
        {"request_rate": 4, "lora_request_distribution": "skewed", "lora_zipf_alpha": 1.1},
        {"max_loras_per_batch": 8},
        ranks=SEED_RANKS * 5 + SEED_RANKS[:2],
    ),
    *(  # the slot counts of the retired sweep_policies.py
        Cell(f"slots{n}", {"request_rate": 4}, {"max_loras_per_batch": n}) for n in (2, 4)
    ),
    Cell("burst0.25", {"request_rate": 4, "burstiness": 0.25}),
    Cell("onoff", {"request_rate": 4, "lora_on_mean_s": 10.0, "lora_off_mean_s": 20.0}),
    Cell(
        "shift-zipf1.1",
        {
            "request_rate": 4,
            "lora_request_distribution": "skewed",
            "lora_zipf_alpha": 1.1,
            "lora_shift_at": 0.5,
        },
    ),
    Cell("overload1.2x", {"request_rate": "overload"}),
    Cell("trace", {"dataset_name": "trace", "dataset_path": str(TRACE)}),
)

METRIC_TARGETS = {  # the target of each metric that has one, for the heat map's marks
    "p99_ttft_ms": "starved P99 TTFT",
    "median_ttft_ms": "median TTFT",
    "median_e2e_latency_ms": "median E2E",
    "p99_e2e_latency_ms": "P99 E2E",
    "output_throughput": "throughput",
}
METRICS = (  # (key in a run's record, label, higher is better)
    ("p99_ttft_ms", "P99 TTFT", False),
    ("median_ttft_ms", "median TTFT", False),
    ("median_e2e_latency_ms", "median E2E", False),
    ("p99_e2e_latency_ms", "P99 E2E", False),
    ("output_throughput", "throughput", True),
    ("hot_p99_ttft_ms", "hot P99 TTFT", False),
    ("tail_p99_ttft_ms", "tail P99 TTFT", False),
)
TARGETS = (  # fair's targets (issue #18), in the order of the dominance table
    "completes",
    "starved P99 TTFT",
    "median TTFT",
    "median E2E",
    "P99 E2E",
    "throughput",
    "P99 TTFT <= sglang",
    "median TTFT <= sglang",
)
PREEMPT_TARGET = "throughput >= 0.9x"


# ----------------------------------------------------------------------------- running


def setting_name(policy: str | None, threshold: float) -> str:
    return "off" if policy is None else f"{policy}@{threshold:g}"


def parse_setting_name(name: str) -> tuple[str | None, float]:
    if name == "off":
        return None, 0.0
    policy, _, t = name.partition("@")
    return policy, float(t)


def hot_adapters(names: list[str | None]) -> set[str | None]:
    """The fewest adapters (most requested first, ties by name) with at least half the
    requests."""
    counts = sorted(Counter(names).items(), key=lambda kv: (-kv[1], str(kv[0])))
    hot, total = set(), 0
    for name, c in counts:
        if 2 * total >= len(names):
            break
        hot.add(name)
        total += c
    return hot


def _p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else float("nan")


_COST = {}


def run_one(job: dict) -> dict:
    """One cell under one setting, in the simulator: the run's record."""
    from jlora.bench.config import BenchConfig, build_workload
    from jlora.bench.driver import run_workload
    from jlora.bench.metrics import compute_metrics
    from jlora.config import EngineConfig
    from jlora.sim import calibrated_setting, load_cost_model, make_sim_engine

    cell: Cell = job["cell"]
    names = [f"a{i}" for i in range(len(cell.ranks))]
    engine_fields = {
        **SEED_ENGINE,
        "max_loaded_loras": len(names),
        **cell.engine,
    }
    config = EngineConfig(
        model=MODEL,
        lora_paths={n: f"dummy:{r}" for n, r in zip(names, cell.ranks, strict=True)},
        **engine_fields,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # slot counts other than the calibrated one
        key = job["cost_model"]
        if key not in _COST:
            _COST[key] = load_cost_model(config, key)
        cost = _COST[key]
        config = dataclasses.replace(config, **{**calibrated_setting(cost), **cell.engine})
        policy, threshold = parse_setting_name(job["setting"])
        if policy is not None:
            config = dataclasses.replace(
                config, lora_drain_wait_threshold=threshold, lora_drain_policy=policy
            )
        workload_fields = {**SEED_WORKLOAD, **cell.workload, "num_prompts": job["num_prompts"]}
        if workload_fields.get("request_rate") == "overload":
            workload_fields["request_rate"] = job["overload_rate"]
        bench = BenchConfig(backend="sim", **workload_fields)
        model = config.model_config()
        work = build_workload(
            bench,
            vocab_size=model.vocab_size,
            lora_names=names,
            context_length=config.resolved_context_length(model),
        )
        engine = make_sim_engine(config, cost=cost)
    t = time.perf_counter()
    result = run_workload(engine, work, progress=False)
    cpu = time.perf_counter() - t
    m = compute_metrics(result.outputs, result.duration)
    hot = hot_adapters([w.lora_name for w in work])
    ok = [o for o in result.outputs if o.error is None and o.first_token_time is not None]
    return {
        "cell": cell.name,
        "setting": job["setting"],
        "policy": policy or "off",
        "threshold": threshold,
        "num_prompts": len(work),
        "request_rate": bench.request_rate if bench.dataset_name == "random" else None,
        **{
            k: m[k]
            for k in (
                "completed",
                "failed",
                "duration",
                "request_throughput",
                "output_throughput",
                "mean_ttft_ms",
                "median_ttft_ms",
                "p99_ttft_ms",
                "median_e2e_latency_ms",
                "p99_e2e_latency_ms",
            )
        },
        "hot_adapters": sorted(hot),
        "hot_p99_ttft_ms": _p99([o.ttft * 1e3 for o in ok if o.lora_name in hot]),
        "tail_p99_ttft_ms": _p99([o.ttft * 1e3 for o in ok if o.lora_name not in hot]),
        "slot_loads": getattr(engine.adapters, "slot_loads", None),
        "pauses": sum(o.num_pauses for o in result.outputs),
        "cpu_s": cpu,
        "commit": job["commit"],
        "date": job["date"],
    }


def measure_capacity(cost_model: str | None, commit: str, date: str) -> float:
    """Requests/s of the drainer off on the seed workload (seed 1, :data:`CAPACITY_PROMPTS`
    requests) with every request sent at once."""
    rec = run_one(
        {
            "cell": Cell("capacity", {"request_rate": float("inf"), "seed": 1}),
            "setting": "off",
            "num_prompts": CAPACITY_PROMPTS,
            "cost_model": cost_model,
            "overload_rate": None,
            "commit": commit,
            "date": date,
        }
    )
    return rec["request_throughput"]


# ----------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class TargetCheck:
    target: str
    ok: bool | None  # None: does not apply in this cell
    figures: str


def check_targets(runs: dict[str, dict], setting: str) -> list[TargetCheck]:
    """Issue #18's targets of ``setting`` in one cell (``runs``: that cell's records by setting,
    with ``off`` and, for the comparisons with SGLang, ``sglang@<threshold>``): fair's targets
    (:data:`TARGETS`), then preempt's (:data:`PREEMPT_TARGET`)."""
    r, off = runs[setting], runs["off"]
    policy, threshold = parse_setting_name(setting)
    out = []

    def add(target: str, ok: bool | None, figures: str) -> None:
        out.append(TargetCheck(target, ok, figures))

    def ratio(key: str) -> float:
        return r[key] / off[key] if off[key] else float("inf")

    n = r["num_prompts"]
    add("completes", r["completed"] == n and r["failed"] == 0, f"{r['completed']:g}/{n}")
    if off["p99_ttft_ms"] >= STARVED_MS:
        bound = max(0.3 * off["p99_ttft_ms"], (threshold + 1.5) * 1e3)
        add(
            "starved P99 TTFT",
            r["p99_ttft_ms"] <= bound,
            f"{r['p99_ttft_ms'] / 1e3:.2f} s vs bound {bound / 1e3:.2f} s "
            f"(off {off['p99_ttft_ms'] / 1e3:.2f} s)",
        )
    else:
        add("starved P99 TTFT", None, f"off P99 TTFT {off['p99_ttft_ms'] / 1e3:.2f} s < 5 s")
    bound = max(1.5 * off["median_ttft_ms"], off["median_ttft_ms"] + 1000.0)
    add(
        "median TTFT",
        r["median_ttft_ms"] <= bound,
        f"{r['median_ttft_ms'] / 1e3:.2f} s vs bound {bound / 1e3:.2f} s",
    )
    add(
        "median E2E",
        ratio("median_e2e_latency_ms") <= 1.25,
        f"{ratio('median_e2e_latency_ms'):.2f}x",
    )
    add("P99 E2E", ratio("p99_e2e_latency_ms") <= 1.05, f"{ratio('p99_e2e_latency_ms'):.2f}x")
    thr = r["output_throughput"] / off["output_throughput"]
    add("throughput", thr >= 0.97, f"{thr:.3f}x")
    sg = runs.get(f"sglang@{threshold:g}")
    for key, target in (
        ("p99_ttft_ms", "P99 TTFT <= sglang"),
        ("median_ttft_ms", "median TTFT <= sglang"),
    ):
        if policy in (None, "sglang") or sg is None:
            add(target, None, "itself" if policy == "sglang" else "no sglang run")
        else:
            add(
                target,
                r[key] <= sg[key],
                f"{r[key] / 1e3:.2f} s vs sglang {sg[key] / 1e3:.2f} s",
            )
    add(PREEMPT_TARGET, thr >= 0.9, f"{thr:.3f}x")
    return out


def meets_all(checks: list[TargetCheck]) -> bool:
    return all(c.ok is not False for c in checks if c.target in TARGETS)


# ----------------------------------------------------------------------------- rendering


def load_runs(path: Path) -> dict[str, dict[str, dict]]:
    """cell -> setting -> record (the last line of each wins)."""
    runs: dict[str, dict[str, dict]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                runs.setdefault(rec["cell"], {})[rec["setting"]] = rec
    return runs


def save_runs(path: Path, new: list[dict]) -> None:
    old = load_runs(path)
    for rec in new:
        old.setdefault(rec["cell"], {})[rec["setting"]] = rec
    order = {c.name: i for i, c in enumerate(CELLS)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for cell in sorted(old, key=lambda c: (order.get(c, len(order)), c)):
            for setting in sorted(old[cell], key=setting_order):
                f.write(json.dumps(old[cell][setting]) + "\n")


def setting_order(name: str) -> tuple:
    policy, t = parse_setting_name(name)
    pols = ("sglang", "reserve", "preempt", "fair")
    return (policy is not None, pols.index(policy) if policy in pols else 9, policy or "", t)


def policy_settings(runs: dict[str, dict[str, dict]]) -> list[str]:
    found = {s for per in runs.values() for s in per if s != "off"}
    return sorted(found, key=setting_order)


def dominance(runs, settings, cells) -> list[str]:
    """The dominance table (markdown lines) and, per setting, the cells each target misses."""
    head = ["setting", "meets all (cells)", *TARGETS, PREEMPT_TARGET]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    misses: dict[str, dict[str, list[str]]] = {}
    for s in settings:
        cs = [c for c in cells if s in runs.get(c, {}) and "off" in runs[c]]
        if not cs:
            continue
        tally = {t: [0, 0] for t in (*TARGETS, PREEMPT_TARGET)}
        good = 0
        for c in cs:
            checks = check_targets(runs[c], s)
            good += meets_all(checks)
            for ch in checks:
                if ch.ok is not None:
                    tally[ch.target][1] += 1
                    tally[ch.target][0] += ch.ok
                if ch.ok is False:
                    misses.setdefault(s, {}).setdefault(ch.target, []).append(c)
        row = [f"**{s}**", f"**{good}/{len(cs)}**"]
        row += [f"{a}/{b}" if b else "n/a" for a, b in tally.values()]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Each target as `passed/cells where it applies` (`starved P99 TTFT` applies where the "
        f"drainer off has a P99 TTFT >= {STARVED_MS / 1e3:g} s; the comparisons with `sglang` "
        "where `sglang` ran at the same threshold, not to itself). `meets all`: every one of "
        f"fair's targets (all columns but `{PREEMPT_TARGET}`, which is preempt's).",
        "",
        "Misses (cells; the `seed-rR-sS` cells abridged to `seed-rR:S,S`):",
        "",
    ]
    for s, per in misses.items():
        parts = [f"{t}: {abridge(cs)}" for t, cs in per.items() if t in TARGETS]
        if per.get(PREEMPT_TARGET):
            parts.append(f"{PREEMPT_TARGET}: {abridge(per[PREEMPT_TARGET])}")
        lines.append(f"- **{s}**: " + "; ".join(parts))
    return lines


def abridge(cells: list[str]) -> str:
    groups: dict[str, list[str]] = {}
    out = []
    for c in cells:
        if c.startswith("seed-r") and "-s" in c[6:]:
            g, _, seed = c.rpartition("-s")
            if g not in groups:
                groups[g] = []
                out.append(g)
            groups[g].append(seed)
        else:
            out.append(c)
    return ", ".join(f"{c}:{','.join(groups[c])}" if c in groups else c for c in out)


def fmt_ms(v: float) -> str:
    return "nan" if v != v else (f"{v / 1e3:.2f} s" if v >= 1000 else f"{v:.0f} ms")


def ratio_tables(runs, settings, cells) -> list[str]:
    lines = []
    groups: dict[str, list[str]] = {}
    for cell in CELLS:
        if cell.group and cell.name in cells:
            groups.setdefault(cell.group, []).append(cell.name)
    for key, label, higher in METRICS:
        lines += [
            f"### {label}: ratio to off",
            "",
            "| cell | off | " + " | ".join(settings) + " |",
            "| --- | ---: |" + " ---: |" * len(settings),
        ]
        summarized = set()
        for c in cells:
            per = runs.get(c, {})
            if "off" not in per:
                continue
            offv = per["off"][key]
            off_txt = f"{offv:.0f} tok/s" if higher else fmt_ms(offv)
            row = [c, off_txt]
            for s in settings:
                row.append(f"{per[s][key] / offv:.2f}" if s in per and offv else "")
            lines.append("| " + " | ".join(row) + " |")
            group = next((g for g, cs in groups.items() if c == cs[-1]), None)
            if group and group not in summarized:
                summarized.add(group)
                lines.append(summary_row(runs, groups[group], group, key, settings, higher))
        lines.append("")
    return lines


def summary_row(runs, cells, group, key, settings, higher) -> str:
    def span(vals: list[float], as_ratio: bool) -> str:
        if not vals:
            return ""
        med, lo, hi = np.median(vals), min(vals), max(vals)
        if as_ratio:
            return f"{med:.2f} [{lo:.2f}-{hi:.2f}]"
        if higher:
            return f"{med:.0f} [{lo:.0f}-{hi:.0f}] tok/s"
        return f"{fmt_ms(med)} [{fmt_ms(lo)}-{fmt_ms(hi)}]"

    offs = [runs[c]["off"][key] for c in cells if "off" in runs.get(c, {})]
    row = [f"**{group} ({len(cells)} seeds): median [min-max]**", span(offs, False)]
    for s in settings:
        vals = [
            runs[c][s][key] / runs[c]["off"][key]
            for c in cells
            if s in runs.get(c, {}) and "off" in runs[c] and runs[c]["off"][key]
        ]
        row.append(span(vals, True))
    return "| " + " | ".join(row) + " |"


def group_of(cell: str) -> str:
    """The seed workload's rate for its cells, ``variants`` for the others."""
    return next((c.group for c in CELLS if c.name == cell and c.group), "variants")


def log_ratio(rec: dict, off: dict, key: str, higher: bool) -> float:
    """log10 of how much worse than off (positive: worse), for the heat map."""
    a, b = rec[key], off[key]
    if not (a > 0 and b > 0):
        return float("nan")
    return math.log10(b / a) if higher else math.log10(a / b)


def plot_heatmap(runs, settings, cells, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    policies = sorted(
        {parse_setting_name(s)[0] for s in settings}, key=lambda p: setting_order(f"{p}@0")
    )
    thresholds = sorted({parse_setting_name(s)[1] for s in settings})
    nr, nc = len(policies), len(thresholds)
    fig, axes = plt.subplots(
        nr, nc, figsize=(2.6 * nc + 2.4, 0.2 * len(cells) * nr + 1.6), squeeze=False
    )
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-1.0, vmax=1.0)
    image = None
    labels = [label for _, label, _ in METRICS]
    for i, p in enumerate(policies):
        for j, t in enumerate(thresholds):
            ax = axes[i][j]
            s = setting_name(p, t)
            grid = np.full((len(cells), len(METRICS)), np.nan)
            marks = []
            for r, c in enumerate(cells):
                per = runs.get(c, {})
                if s in per and "off" in per:
                    missed = {ch.target for ch in check_targets(per, s) if ch.ok is False}
                    for k, (key, _, higher) in enumerate(METRICS):
                        grid[r, k] = log_ratio(per[s], per["off"], key, higher)
                        if METRIC_TARGETS.get(key) in missed:
                            marks.append((k, r))
            image = ax.imshow(
                np.clip(grid, -1, 1),
                cmap="RdBu_r",
                norm=norm,
                aspect="auto",
                interpolation="nearest",
            )
            for k, r in marks:  # white on the dark cells, black on the light ones
                dark = abs(np.nan_to_num(grid[r, k])) > 0.6
                ax.plot(k, r, marker="x", markersize=3, color="white" if dark else "black")
            for r in range(1, len(cells)):  # a line between groups of cells
                if group_of(cells[r]) != group_of(cells[r - 1]):
                    ax.axhline(r - 0.5, color="black", linewidth=0.6)
            ax.set_title(s, fontsize=9)
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels if i == nr - 1 else [], rotation=60, ha="right", fontsize=7)
            ax.set_yticks(range(len(cells)))
            ax.set_yticklabels(cells if j == 0 else [], fontsize=6)
            ax.tick_params(length=0)
    fig.suptitle(
        "Each setting against the drainer off, per cell (rows) and metric (columns); "
        "x: the cell misses that metric's target of issue #18",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 0.9, 0.97))
    cax = fig.add_axes((0.92, 0.3, 0.015, 0.4))
    bar = fig.colorbar(image, cax=cax)
    ticks = [-1, -0.5, 0, 0.5, 1]
    bar.set_ticks(ticks)
    bar.set_ticklabels(["10x better", "3x better", "same as off", "3x worse", ">=10x worse"])
    bar.ax.tick_params(labelsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def heatmap_path(md: Path) -> Path:
    """The heat map beside the raw data, under ``results/<topic>/``."""
    return md.parent / md.stem / "heatmap.png"


def render(runs, raw: Path, md: Path, meta: dict) -> tuple[str, str]:
    """The results file's ``## Current`` (title included, with the dominance table: the claim) and
    the body of the run's Log entry (the misses, the hand-written notes, the cells and the ratio
    tables, headed two levels down)."""
    import jax

    cells = [c.name for c in CELLS if c.name in runs] + sorted(set(runs) - {c.name for c in CELLS})
    settings = policy_settings(runs)
    commits = sorted({r["commit"] for per in runs.values() for r in per.values()})
    dates = sorted({r["date"] for per in runs.values() for r in per.values()})
    n = sorted({r["num_prompts"] for per in runs.values() for r in per.values()})
    fair = [s for s in settings if s.startswith("fair@")]
    claim = (
        "`fair` meets every target in "
        + ", ".join(
            f"{sum(meets_all(check_targets(runs[c], s)) for c in cells if s in runs[c])}"
            f"/{sum(s in runs[c] for c in cells)} cells at {s.split('@')[1]} s"
            for s in fair
        )
        if fair
        else "no `fair` policy run yet (it is not in `DRAIN_POLICIES` at this commit): the table "
        "judges the existing policies against the targets set for `fair`"
    )
    lines = [
        "# The policy suite: drain policies against the drainer off, in the simulator",
        "",
        "## Current",
        "",
        f"- commit {', '.join(commits)}; date {', '.join(dates)}; jax {jax.__version__}",
        f"- device: the simulator on a CPU (not a GPU measurement), with the cost model "
        f"`{meta['cost_model']}` ({meta['cost_device']}, {MODEL}, calibrated {meta['cost_date']})",
        f"- claim (issue #18's targets): {claim}",
        f"- command: `{meta['command']}` ({meta['timing']})",
        f"- raw data: `{raw.relative_to(ROOT)}` (one JSON line per cell and setting); heat map: "
        f"`{heatmap_path(md).relative_to(md.parent).as_posix()}`",
        f"- cells: {len(cells)}, {', '.join(map(str, n))} requests each; capacity of the seed "
        f"setting (drainer off, {CAPACITY_PROMPTS} requests sent at once): "
        f"{meta.get('capacity', 'n/a')} req/s, so "
        f"the overload cell runs at {OVERLOAD:g}x that",
        "- the misses with their figures, the cells and the ratios to the drainer off: the "
        "newest Log entry",
        "",
    ]
    # The dominance table is the claim: it stays in Current; the misses behind it go to the Log.
    table = dominance(runs, settings, cells)
    split = next((i for i, x in enumerate(table) if x.startswith("Misses")), len(table))
    lines += [*table[:split]]
    current = "\n".join(lines).rstrip() + "\n\n"
    lines = [
        f"`{meta['command']}`; {meta['timing']}.",
        "",
        "## Misses",
        "",
        *table[split:],
        "",
        *_notes(raw),
        "## Cells",
        "",
        "The seed workload: Llama-3.1-8B (the simulator's H100 costs), six dummy adapters "
        f"`a0..a5` of ranks {', '.join(map(str, SEED_RANKS))}, 3 slots (`max_loras_per_batch=3`, "
        "`max_loaded_loras` = the adapters), 200 prompts, input and output lengths uniform in "
        "[1, 512], Poisson arrivals, adapters uniform. Each cell changes only what its row says.",
        "",
        "| cell | workload (BenchConfig) | engine (EngineConfig) | adapters |",
        "| --- | --- | --- | ---: |",
    ]
    for c in CELLS:
        wl = dict(c.workload)
        if wl.get("dataset_path"):
            wl["dataset_path"] = Path(wl["dataset_path"]).relative_to(ROOT).as_posix()
        w = ", ".join(f"{k}={v}" for k, v in wl.items())
        e = ", ".join(f"{k}={v}" for k, v in c.engine.items()) or "seed"
        lines.append(f"| {c.name} | {w} | {e} | {len(c.ranks)} |")
    lines += [
        "",
        "Hot and tail adapters: in each workload the adapters sorted by their number of "
        "requests (most first, ties by name); the hot ones are the fewest that receive at least "
        "half of the requests, the tail ones the rest. Their P99 TTFT is over all the requests "
        "of the hot (tail) adapters together.",
        "",
        "## Ratios to the drainer off, per cell",
        "",
        "Each figure is the setting's value over the drainer off's in the same cell (`off` shows "
        "the absolute value); below 1 is better except for throughput (output tokens/s). The "
        "seed workload's five seeds at each rate are listed, then summarized as median "
        "[min-max] over the seeds.",
        "",
        *ratio_tables(runs, settings, cells),
    ]
    # every heading two levels down, under the Log entry's own
    body = "\n".join("##" + x if x.startswith(("## ", "### ")) else x for x in lines)
    return current, body


def _notes(raw: Path) -> list[str]:
    """The hand-written analysis kept beside the raw data (``notes.md``), if any: why the misses
    happen, with figures read off the tables."""
    notes = raw.parent / "notes.md"
    return [notes.read_text().strip(), ""] if notes.is_file() else []


def print_targets(runs, settings, cells) -> None:
    """Every miss of every setting run, with its figures (for tuning a policy)."""
    for s in settings:
        for c in cells:
            if s not in runs.get(c, {}) or "off" not in runs[c]:
                continue
            bad = [ch for ch in check_targets(runs[c], s) if ch.ok is False]
            for ch in bad:
                print(f"MISS {s:12s} {c:16s} {ch.target}: {ch.figures}")


# ----------------------------------------------------------------------------- main


def main() -> None:
    from jlora.scheduler.policies import DRAIN_POLICIES

    default_policies = [p for p in ("sglang", "reserve", "preempt", "fair") if p in DRAIN_POLICIES]
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--policies",
        default=",".join(default_policies),
        help="comma-separated drain policies (default: %(default)s, fair only if it exists)",
    )
    p.add_argument("--thresholds", default="0.25,0.5,1,3", help="seconds (default: %(default)s)")
    p.add_argument("--cells", default="*", help="comma-separated names or globs of CELLS")
    p.add_argument("--quick", action="store_true", help="100 prompts, seed 1 only; own raw file")
    p.add_argument("--num-prompts", type=int, help="override every cell's number of requests")
    p.add_argument("--jobs", type=int, default=2, help="processes (default: %(default)s)")
    p.add_argument("--sim-cost-model", help="default: the shipped H100 one of llama-3.1-8b")
    p.add_argument("--raw", help="JSON lines of the runs (default: results/policy_suite/)")
    p.add_argument("--out", help="markdown (default: results/policy_suite.md; --quick: none)")
    p.add_argument("--render-only", action="store_true", help="no run: render --raw")
    p.add_argument(
        "--panels", default="*", help="comma-separated globs of the settings the heat map shows"
    )
    p.add_argument("--list-cells", action="store_true", help="print the cells and exit")
    args = p.parse_args()

    if args.list_cells:
        for c in CELLS:
            print(f"{c.name:16s} {c.workload} {c.engine} adapters={len(c.ranks)}")
        return
    policies = [x for x in args.policies.split(",") if x]
    for pol in policies:
        if pol not in DRAIN_POLICIES:
            raise SystemExit(f"--policies: {pol!r} is not one of {', '.join(DRAIN_POLICIES)}")
    thresholds = [float(x) for x in args.thresholds.split(",") if x]
    patterns = [x for x in args.cells.split(",") if x]
    cells = [c for c in CELLS if any(fnmatch.fnmatch(c.name, pat) for pat in patterns)]
    if args.quick:
        cells = [c for c in cells if not c.group or c.workload.get("seed") == 1]
    if not cells:
        raise SystemExit(
            f"--cells {args.cells!r} selects none of {', '.join(c.name for c in CELLS)}"
        )
    num_prompts = args.num_prompts or (100 if args.quick else SEED_WORKLOAD["num_prompts"])
    raw = Path(
        args.raw or RESULTS / "policy_suite" / ("quick.jsonl" if args.quick else "runs.jsonl")
    )
    md = Path(args.out) if args.out else (None if args.quick else RESULTS / "policy_suite.md")
    settings = ["off"] + [setting_name(pol, t) for pol in policies for t in thresholds]
    if "fair" in policies:  # its targets compare it with sglang at the same threshold
        settings += [setting_name("sglang", t) for t in thresholds if "sglang" not in policies]

    from jlora.sim import default_cost_model_path

    cost_path = args.sim_cost_model or str(default_cost_model_path(MODEL))
    cost_info = json.loads(Path(cost_path).read_text())
    commit, date = git_commit(mark_dirty=True), datetime.date.today().isoformat()
    command = command_line()
    meta = {
        "cost_model": Path(cost_path).relative_to(ROOT).as_posix()
        if Path(cost_path).is_relative_to(ROOT)
        else cost_path,
        "cost_device": cost_info.get("device_kind", cost_info.get("device")),
        "cost_date": cost_info.get("date"),
        "command": command,
    }
    capacity_file = raw.with_name(raw.stem + "_capacity.json")
    if not args.render_only:
        t0 = time.perf_counter()
        capacity = measure_capacity(cost_path, commit, date)
        capacity_file.parent.mkdir(parents=True, exist_ok=True)
        capacity_file.write_text(
            json.dumps(
                {"capacity_req_s": capacity, "num_prompts": CAPACITY_PROMPTS, "commit": commit}
            )
            + "\n"
        )
        print(f"capacity (drainer off, all at once): {capacity:.2f} req/s", flush=True)
        jobs = [
            {
                "cell": c,
                "setting": s,
                "num_prompts": num_prompts,
                "cost_model": cost_path,
                "overload_rate": OVERLOAD * capacity,
                "commit": commit,
                "date": date,
            }
            for c in cells
            for s in settings
        ]
        records = []
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(args.jobs) as pool:
            for i, rec in enumerate(pool.imap_unordered(run_one, jobs), 1):
                records.append(rec)
                print(
                    f"[{i}/{len(jobs)}] {rec['cell']:16s} {rec['setting']:12s} "
                    f"TTFT P99 {fmt_ms(rec['p99_ttft_ms']):>9s} median "
                    f"{fmt_ms(rec['median_ttft_ms']):>9s} ({rec['cpu_s']:.1f} s)",
                    flush=True,
                )
        wall = time.perf_counter() - t0
        cpu = sum(r["cpu_s"] for r in records)
        save_runs(raw, records)
        meta["timing"] = (
            f"{len(jobs)} runs in {wall:.0f} s of wall time on {args.jobs} processes, "
            f"{cpu:.0f} s of CPU in the runs"
        )
        print(f"{len(jobs)} runs in {wall:.0f} s ({cpu:.0f} s of CPU in the runs); raw: {raw}")
    else:
        meta["timing"] = "rendered from the raw data"
    if capacity_file.is_file():
        meta["capacity"] = f"{json.loads(capacity_file.read_text())['capacity_req_s']:.2f}"
    runs = load_runs(raw)
    run_cells = [c.name for c in cells if c.name in runs]
    asked = [s for s in settings if s != "off"]
    print()
    print("\n".join(dominance(runs, asked, run_cells)))
    print()
    print_targets(runs, asked, run_cells)
    if md is not None:
        all_cells = [c.name for c in CELLS if c.name in runs]
        all_settings = policy_settings(runs)
        good = {
            s: sum(meets_all(check_targets(runs[c], s)) for c in all_cells if s in runs[c])
            for s in all_settings
        }
        best = ", ".join(f"{s} {v}" for s, v in good.items())
        verdict = f"cells meeting every target: {best}"
        current, body = render(runs, raw, md, meta)
        heading = f"### {date} {git_commit()}: {verdict}"
        if md.is_file() and heading in md.read_text():
            verdict = None  # rendered again at the same commit: the entry is there
        write_results_file(md, current, verdict, body=body)
        panels = [
            x for x in all_settings if any(fnmatch.fnmatch(x, g) for g in args.panels.split(","))
        ]
        plot_heatmap(runs, panels, all_cells, heatmap_path(md))
        print(f"wrote {md} and {heatmap_path(md)}")


if __name__ == "__main__":
    main()
