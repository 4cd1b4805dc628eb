"""The ShareGPT dataset as SGLang's ``bench_serving`` reads it (``--dataset-name sharegpt``).

The file is a JSON list of conversations, each ``{"conversations": [{"from": ..., "value":
...}, ...]}`` (``conversation`` is taken too). As SGLang does: conversations of fewer than two
turns are dropped; the first turn is the prompt and the second the completion; the list is
shuffled with the seed; each prompt and completion is tokenized with the model's tokenizer (the
prompt with its special tokens, e.g. BOS), the output length is the completion's token count (or
``--sharegpt-output-len``); pairs whose prompt or output is shorter than 2 tokens, or whose prompt
plus output exceeds the context, are skipped; the first ``num_prompts`` that remain are the
workload (:func:`jlora.bench.workload.make_sharegpt_workload`). Arrivals and adapters are drawn as
for the random dataset.
"""

from __future__ import annotations

import json
from pathlib import Path

SHIPPED_SHAREGPT = Path(__file__).resolve().parent / "data" / "sharegpt_synthetic.json"


def read_sharegpt(path: str | Path) -> list[tuple[str, str]]:
    """(prompt, completion) of every conversation of two turns or more, in file order."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"dataset_path={str(path)!r} is not a file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"dataset_path={str(path)!r} is not ShareGPT JSON: {e}") from None
    if not isinstance(data, list):
        raise ValueError(f"dataset_path={str(path)!r} must hold a JSON list of conversations")
    pairs = []
    for i, item in enumerate(data):
        turns = (
            item.get("conversations", item.get("conversation", []))
            if isinstance(item, dict)
            else None
        )
        if not isinstance(turns, list):
            raise ValueError(f"dataset_path={str(path)!r}: entry {i} has no conversations list")
        if len(turns) < 2:
            continue
        try:
            prompt, completion = turns[0]["value"], turns[1]["value"]
        except (KeyError, TypeError):
            raise ValueError(
                f"dataset_path={str(path)!r}: entry {i}'s first turns need a 'value'"
            ) from None
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise ValueError(f"dataset_path={str(path)!r}: entry {i}'s values must be text")
        pairs.append((prompt, completion))
    return pairs
