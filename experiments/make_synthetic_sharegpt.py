"""Write ``jlora/bench/data/sharegpt_synthetic.json``: a small made-up dataset in the ShareGPT
format that SGLang's ``bench_serving`` reads (``[{"id", "conversations": [{"from", "value"}]}]``),
for tests and CPU benchmarks. Nothing is downloaded: the text is drawn here from a fixed word list.

Prompt and answer lengths are log-normal (medians 40 and 60 words), every tenth conversation has a
single turn (the reader must drop it, as SGLang does), and a few carry non-ASCII text.

    .venv/bin/python experiments/make_synthetic_sharegpt.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "jlora/bench/data/sharegpt_synthetic.json"
CONVERSATIONS, SEED = 120, 2024
WORDS = (
    "the a of to and in is that for it on with as was be by this are or from at which an have "
    "not they you but all can more one will their has been if there when would what so about "
    "model adapter serving request token batch cache memory device kernel slot queue latency "
    "throughput prompt answer question explain write code function list number table summary "
    "please help me how why where could should example first second last each every other "
    "quick brown fox jumps over lazy dog hello world paris france capital river mountain city"
).split()
ACCENTED = ["café", "naïve", "façade", "crème", "日本語", "🙂"]


def sentence(rng: np.random.Generator, words: int) -> str:
    picks = [str(w) for w in rng.choice(WORDS, size=words)]
    if rng.random() < 0.1:
        picks[int(rng.integers(len(picks)))] = str(rng.choice(ACCENTED))
    text = " ".join(picks)
    return text[0].upper() + text[1:] + rng.choice([".", "?", "!"])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=OUT, help="where to write (default: %(default)s)")
    args = p.parse_args(argv)
    rng = np.random.default_rng(SEED)
    data = []
    for i in range(CONVERSATIONS):
        ask = int(np.clip(rng.lognormal(np.log(40), 0.8), 3, 400))
        say = int(np.clip(rng.lognormal(np.log(60), 0.9), 2, 500))
        turns = [{"from": "human", "value": sentence(rng, ask)}]
        if i % 10 != 9:
            turns.append({"from": "gpt", "value": sentence(rng, say)})
        data.append({"id": f"synthetic-{i}", "conversations": turns})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out} ({len(data)} conversations)")


if __name__ == "__main__":
    main()
