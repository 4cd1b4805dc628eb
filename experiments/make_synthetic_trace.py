"""Write ``jlora/bench/data/azure_synthetic_trace.csv``: a small made-up trace in the Azure LLM
inference trace's format (``TIMESTAMP,ContextTokens,GeneratedTokens``), for tests and the policy
suite's trace cell. Nothing is downloaded: every figure is drawn here.

Arrivals are bursty (gamma gaps of shape 0.5 at 4 req/s on average), lengths log-normal (context
median 300 tokens, outputs median 120), so that most requests fit a 1024-token context; the
timestamps are ISO date-times with seven decimals, as the Azure trace writes them.

    PYTHONPATH=. python experiments/make_synthetic_trace.py
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "jlora/bench/data/azure_synthetic_trace.csv"
ROWS, RATE, SHAPE, SEED = 300, 4.0, 0.5, 2023


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(OUT), help="the CSV to write")
    out = Path(p.parse_args().out)
    rng = np.random.default_rng(SEED)
    gaps = rng.gamma(SHAPE, 1.0 / (RATE * SHAPE), ROWS)
    start = np.datetime64("2023-11-16T18:15:46", "ns")
    stamps = start + (np.cumsum(gaps) * 1e9).astype("timedelta64[ns]")
    context = np.clip(rng.lognormal(np.log(300), 0.8, ROWS), 8, 2000).astype(int)
    generated = np.clip(rng.lognormal(np.log(120), 0.9, ROWS), 1, 800).astype(int)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["TIMESTAMP", "ContextTokens", "GeneratedTokens"])
        for t, c, g in zip(stamps, context, generated, strict=True):
            text = str(t).replace("T", " ")[:27]  # 2023-11-16 18:15:46.6805900
            w.writerow([text, int(c), int(g)])
    print(f"wrote {ROWS} rows to {out}")


if __name__ == "__main__":
    main()
