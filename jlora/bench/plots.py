"""PNG plots of benchmark runs: TTFT CDF per setting, TTFT per adapter, and which adapter held
which device slot over time (rebuilt from the per-step slot table)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jlora.bench.driver import RunResult  # noqa: E402


def plot_ttft_cdf(results: dict[str, RunResult], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results.items():
        ttft = np.sort([o.ttft for o in r.outputs if o.ttft is not None])
        ax.plot(ttft, np.arange(1, len(ttft) + 1) / len(ttft), label=name)
    ax.set_xscale("log")
    ax.set_xlabel("TTFT (s, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("Time to first token, CDF")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_ttft_per_adapter(results: dict[str, RunResult], path: Path) -> None:
    names = sorted({o.lora_name or "base" for r in results.values() for o in r.outputs})
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names) * len(results) / 2), 4.5))
    width = 0.8 / len(results)
    for k, (setting, r) in enumerate(results.items()):
        p50, p99 = [], []
        for n in names:
            v = [o.ttft for o in r.outputs if (o.lora_name or "base") == n and o.ttft is not None]
            p50.append(np.percentile(v, 50) if v else 0.0)
            p99.append(np.percentile(v, 99) if v else 0.0)
        x = np.arange(len(names)) + k * width
        ax.bar(x, p99, width, alpha=0.35, color=f"C{k}")
        ax.bar(x, p50, width, color=f"C{k}", label=f"{setting} (P50 solid, P99 light)")
    ax.set_xticks(np.arange(len(names)) + width * (len(results) - 1) / 2, names)
    ax.set_yscale("log")
    ax.set_ylabel("TTFT (s, log scale)")
    ax.set_title("TTFT per adapter")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_slot_timeline(
    timeline: list[tuple[float, tuple[str | None, ...]]], title: str, path: Path
) -> None:
    """``timeline``: (time, adapter per slot) after each step."""
    if not timeline:
        return
    adapters = sorted({a for _, slots in timeline for a in slots if a is not None})
    color = {a: f"C{i % 10}" for i, a in enumerate(adapters)}
    num_slots = len(timeline[0][1])
    fig, ax = plt.subplots(figsize=(9, 0.6 * num_slots + 1.5))
    ends = [t for t, _ in timeline[1:]] + [timeline[-1][0]]
    for (t, slots), t_end in zip(timeline, ends, strict=True):
        for s, a in enumerate(slots):
            if a is not None and t_end > t:
                ax.barh(s, t_end - t, left=t, color=color[a], height=0.8)
    ax.set_yticks(range(num_slots), [f"slot {s}" for s in range(num_slots)])
    ax.set_xlabel("time (s)")
    ax.set_title(title)
    handles = [plt.Rectangle((0, 0), 1, 1, color=color[a]) for a in adapters]
    ax.legend(handles, adapters, ncol=min(6, len(adapters)), fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
