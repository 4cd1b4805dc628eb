"""PNG plots of benchmark runs, made to read at a glance: TTFT CDF per setting (with the drain
thresholds and each setting's P50 / P99 marked), TTFT per adapter (P50 and P99 bars on a linear
axis, adapters labelled with their rank), and which adapter held which device slot over time
(rebuilt from the per-step slot table), with the waiting requests and the swaps below it.

Legends sit outside the axes, so they cover no data; every axis says its unit and scale; the slot
timelines of several settings share one x range.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from jlora.bench.driver import RunResult  # noqa: E402
from jlora.bench.trace import SlotTimeline  # noqa: E402


def _save(fig: Figure, path: Path | None) -> Figure:
    """Lay ``fig`` out and write it to ``path`` (if given); the figure is returned either way, and
    closed once written (a notebook displays a closed figure all the same)."""
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def _label(adapter: str, ranks: dict[str, int] | None) -> str:
    rank = (ranks or {}).get(adapter)
    return adapter if rank is None else f"{adapter} (r{rank})"


def _ttfts(r: RunResult) -> np.ndarray:
    return np.sort([o.ttft for o in r.outputs if o.ttft is not None])


def plot_ttft_cdf(
    results: dict[str, RunResult],
    path: Path | None = None,
    thresholds: dict[str, float] | None = None,
    title: str = "Time to first token: CDF per setting",
) -> Figure:
    """One CDF per setting on a linear time axis, its P50 and P99 marked and labelled; a dashed
    vertical line at each setting's drain threshold (``thresholds``, seconds; 0 or absent: none)."""
    fig, ax = plt.subplots(figsize=(9, 5.6))
    for k, (name, r) in enumerate(results.items()):
        ttft = _ttfts(r)
        if not len(ttft):
            continue
        p50, p99 = (float(np.percentile(ttft, q)) for q in (50, 99))
        color = f"C{k}"
        label = f"{name}: P50 {p50:.2f} s (o), P99 {p99:.2f} s (^)"
        ax.plot(ttft, np.arange(1, len(ttft) + 1) / len(ttft), color=color, label=label)
        ax.plot([p50], [0.5], "o", color=color, markersize=7)
        ax.plot([p99], [0.99], "^", color=color, markersize=8)
    # One dashed line per distinct threshold, named by the settings that use it.
    by_value: dict[float, list[str]] = {}
    for name, t in (thresholds or {}).items():
        if t and name in results:
            by_value.setdefault(t, []).append(name)
    for t, names in by_value.items():
        ax.axvline(t, color="0.4", linestyle="--", linewidth=1)
        ax.plot([], [], "--", color="0.4", label=f"drain threshold {t:g} s ({', '.join(names)})")
    ax.set_xlim(left=0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("TTFT (s, linear)")
    ax.set_ylabel("fraction of requests with TTFT <= x")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.14), fontsize=8, ncol=2, frameon=False)
    return _save(fig, path)


def plot_ttft_per_adapter(
    results: dict[str, RunResult],
    path: Path | None = None,
    ranks: dict[str, int] | None = None,
    title: str = "TTFT per adapter: P50 (solid) and P99 (light) per setting",
) -> Figure:
    """Grouped bars on a linear axis from 0: per adapter (labelled with its rank), one pair per
    setting, P50 solid in front of P99 light, the P99 value written on top."""
    names = sorted({o.lora_name or "base" for r in results.values() for o in r.outputs})
    fig, ax = plt.subplots(figsize=(max(8, 1.5 * len(names) + 2.5), 4.8))
    width = 0.8 / len(results)
    for k, (setting, r) in enumerate(results.items()):
        p50, p99 = [], []
        for n in names:
            v = [o.ttft for o in r.outputs if (o.lora_name or "base") == n and o.ttft is not None]
            p50.append(np.percentile(v, 50) if v else 0.0)
            p99.append(np.percentile(v, 99) if v else 0.0)
        x = np.arange(len(names)) + (k - (len(results) - 1) / 2) * width
        ax.bar(x, p99, width, alpha=0.35, color=f"C{k}", label=f"{setting} P99")
        ax.bar(x, p50, width, color=f"C{k}", label=f"{setting} P50")
        for xi, v in zip(x, p99, strict=True):
            ax.annotate(f"{v:.1f}", (xi, v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(np.arange(len(names)), [_label(n, ranks) for n in names])
    ax.set_ylim(bottom=0)
    ax.set_ylabel("TTFT (s, linear from 0)")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _save(fig, path)


def plot_slot_timeline(
    timeline: SlotTimeline,
    title: str,
    path: Path | None = None,
    *,
    ranks: dict[str, int] | None = None,
    x_max: float | None = None,
) -> Figure | None:
    """Top: which adapter held each device slot over time, one lane per slot. Bottom: requests
    waiting over time and a tick at each swap (an adapter replacing another in a slot). ``x_max``
    (seconds): the right end of the x axis, the same for every setting compared."""
    points = timeline.points
    if not points:
        return None
    adapters = sorted({a for _, slots in points for a in slots if a is not None})
    color = {a: f"C{i % 10}" for i, a in enumerate(adapters)}
    num_slots = len(points[0][1])
    fig, (lanes, queue) = plt.subplots(
        2,
        1,
        sharex=True,
        figsize=(10, 0.55 * num_slots + 3.2),
        gridspec_kw={"height_ratios": [max(num_slots, 2), 2]},
    )
    ends = [t for t, _ in points[1:]] + [points[-1][0]]
    for s in range(num_slots):
        for a in adapters:
            spans = [
                (t, t_end - t)
                for (t, slots), t_end in zip(points, ends, strict=True)
                if slots[s] == a and t_end > t
            ]
            if spans:
                lanes.broken_barh(spans, (s - 0.4, 0.8), color=color[a])
    lanes.set_yticks(range(num_slots), [f"slot {s}" for s in range(num_slots)])
    lanes.set_ylim(-0.6, num_slots - 0.4)
    swaps = timeline.swaps()
    lanes.set_title(f"{title}: {len(swaps)} swaps")
    handles = [plt.Rectangle((0, 0), 1, 1, color=color[a]) for a in adapters]
    lanes.legend(
        handles,
        [_label(a, ranks) for a in adapters],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        title="adapter",
    )
    if timeline.waiting:
        t, n = zip(*timeline.waiting, strict=True)
        queue.step(t, n, where="post", color="k", linewidth=1, label="waiting (and paused)")
    if swaps:
        queue.plot(swaps, [0] * len(swaps), "|", color="C3", markersize=10, label="swap")
    queue.set_ylim(bottom=-0.5)
    queue.set_ylabel("requests")
    queue.set_xlabel("time since the run's start (s)")
    queue.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    queue.set_xlim(0, x_max if x_max is not None else points[-1][0])
    return _save(fig, path)
