"""Exact-match evaluation of skills adapters through any greedy generator.

A generator is a function ``generate_fn(prompts, lora_names, max_new_tokens) -> outputs``: one
request per prompt, each with its own adapter name (``None``: the base model), and the generated
token ids of each, up to and including the first stop token. :class:`ScoreGreedyGenerator` is one
built on :meth:`Engine.score` (re-scoring the whole prefix at each step: slow but plainly correct
for short sequences, the oracle); :class:`EngineGreedyGenerator` is the serving path,
:meth:`Engine.generate`.

:func:`evaluate_skills` sends every (adapter, prompt) request in ONE call, interleaved so that each
step mixes all adapters, and measures each adapter's exact-match rate against every skill's answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from jlora.train.tasks import EOS, SkillLanguage

GenerateFn = Callable[[Sequence[Sequence[int]], Sequence[str | None], int], list[list[int]]]


class ScoreGreedyGenerator:
    """Greedy decoding with :meth:`Engine.score`: each step scores every unfinished sequence.

    ``engine`` is anything with ``score(prompts, lora_name) -> list of [len, V] logits``.
    """

    def __init__(self, engine, stop_token_ids: Sequence[int] = (EOS,)):
        self.engine = engine
        self.stop_token_ids = frozenset(int(t) for t in stop_token_ids)

    def __call__(
        self,
        prompts: Sequence[Sequence[int]],
        lora_names: Sequence[str | None],
        max_new_tokens: int,
    ) -> list[list[int]]:
        if len(lora_names) != len(prompts):
            raise ValueError(f"{len(lora_names)} lora_names for {len(prompts)} prompts")
        seqs = [list(map(int, p)) for p in prompts]
        outs: list[list[int]] = [[] for _ in prompts]
        active = list(range(len(prompts)))
        for _ in range(max_new_tokens):
            if not active:
                break
            logits = self.engine.score([seqs[i] for i in active], [lora_names[i] for i in active])
            still = []
            for i, row in zip(active, logits, strict=True):
                token = int(np.argmax(row[-1]))
                seqs[i].append(token)
                outs[i].append(token)
                if token not in self.stop_token_ids:
                    still.append(i)
            active = still
        return outs


class EngineGreedyGenerator:
    """Greedy decoding through the serving path: :meth:`Engine.generate` (scheduler, paged KV
    cache, adapter slots), ``temperature=0``, stopping at the model's EOS or ``stop_token_ids``."""

    def __init__(self, engine, stop_token_ids: Sequence[int] = (EOS,)):
        self.engine = engine
        self.stop_token_ids = tuple(int(t) for t in stop_token_ids)

    def __call__(
        self,
        prompts: Sequence[Sequence[int]],
        lora_names: Sequence[str | None],
        max_new_tokens: int,
    ) -> list[list[int]]:
        from jlora.sampling_params import SamplingParams

        params = SamplingParams(
            max_new_tokens=max_new_tokens, temperature=0.0, stop_token_ids=self.stop_token_ids
        )
        outputs = self.engine.generate([list(p) for p in prompts], params, list(lora_names))
        return [list(map(int, out.token_ids)) for out in outputs]


def exact_match_rate(outputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> float:
    """Fraction of outputs equal to their target token for token (targets end with EOS)."""
    if len(outputs) != len(targets) or not targets:
        raise ValueError(f"{len(outputs)} outputs for {len(targets)} targets")
    hits = sum(
        list(map(int, o)) == list(map(int, t)) for o, t in zip(outputs, targets, strict=True)
    )
    return hits / len(targets)


@dataclass(frozen=True)
class SkillsEvaluation:
    """Exact-match rates by row (an adapter name, or ``"none"`` for the base) and skill."""

    rates: dict[str, dict[str, float]]
    """``rates[row][skill]``: fraction of prompts where the row's output is the skill's answer."""
    outputs: dict[str, list[list[int]]]
    """Generated tokens of each row, in prompt order."""
    num_prompts: int

    def table(self, digits: int = 2) -> str:
        """The rates as a Markdown table (rows: adapter, columns: skill)."""
        skills = list(next(iter(self.rates.values())))
        lines = [
            "| adapter | " + " | ".join(skills) + " |",
            "| --- | " + " | ".join("---:" for _ in skills) + " |",
        ]
        for row, by_skill in self.rates.items():
            cells = " | ".join(f"{by_skill[s]:.{digits}f}" for s in skills)
            lines.append(f"| {row} | {cells} |")
        return "\n".join(lines)


def evaluate_skills(
    generate_fn: GenerateFn,
    lang: SkillLanguage,
    prompts: Sequence[Sequence[int]],
    rows: dict[str, str | None],
    skills: Sequence[str],
) -> SkillsEvaluation:
    """Run every ``(row, prompt)`` request in one ``generate_fn`` call and score each skill.

    ``rows`` maps a row label to the adapter name it serves with (``None``: the base model).
    Requests are interleaved prompt by prompt, so any contiguous part of the batch mixes adapters.
    """
    labels = list(rows)
    req_prompts, req_names = [], []
    for prompt in prompts:
        for label in labels:
            req_prompts.append(prompt)
            req_names.append(rows[label])
    outs = generate_fn(req_prompts, req_names, lang.max_len + 1)
    outputs = {label: outs[r :: len(labels)] for r, label in enumerate(labels)}
    targets = {
        skill: [lang.completion(skill, lang.symbols_of(p)) for p in prompts] for skill in skills
    }
    rates = {
        label: {skill: exact_match_rate(outputs[label], targets[skill]) for skill in skills}
        for label in labels
    }
    return SkillsEvaluation(rates=rates, outputs=outputs, num_prompts=len(prompts))
