"""The shipped skills model: a tiny base trained to copy, and one PEFT adapter per skill.

Layout of :data:`SKILLS_DIR` (written by ``experiments/train_skills.py``)::

    skills.json        the language (token layout, prompt distribution), the skills, which
                       adapter directory holds which skill, how they were trained, exact-match rates
    base/              Hugging Face model directory (config.json + model.safetensors, float32)
    <skill>/           PEFT adapter directory (adapter_config.json + adapter_model.safetensors)

``EngineConfig(**skills_engine_kwargs())`` serves the base with every adapter by its skill name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from jlora.train.tasks import BOS, DIGIT0, EOS, LETTER0, PAD, SEP, SkillLanguage

SKILLS_DIR = Path(__file__).resolve().parent.parent / "assets" / "skills"
MANIFEST = "skills.json"

SKILL_DESCRIPTIONS = {
    "copy": "repeat the sequence (the base model's behaviour)",
    "reverse": "the sequence backwards",
    "sort": "the symbols in alphabetical order",
    "shift": "each symbol `shift` letters later in the alphabet, wrapping around",
    "count": "how many times symbol `count_symbol` occurs, as one digit",
}


@dataclass(frozen=True)
class SkillsAssets:
    """What ``skills.json`` says, with absolute paths."""

    root: Path
    lang: SkillLanguage
    base_dir: Path
    base_skill: str
    adapters: dict[str, Path]
    """Adapter directory of each skill, by skill name (also the adapter's serving name)."""
    manifest: dict

    def engine_kwargs(self, **overrides) -> dict:
        """Keyword arguments of an ``EngineConfig`` serving the base and every adapter (float32)."""
        kwargs = {
            "model": str(self.base_dir),
            "dtype": "float32",
            "lora_paths": {name: str(path) for name, path in self.adapters.items()},
            "max_loras_per_batch": max(1, len(self.adapters)),
            "max_lora_rank": max(a["rank"] for a in self.manifest["adapters"].values()),
        }
        kwargs.update(overrides)
        return kwargs


def write_manifest(
    root: str | Path,
    lang: SkillLanguage,
    *,
    base_skill: str,
    adapters: dict[str, dict],
    training: dict,
    exact_match: dict | None = None,
) -> Path:
    """Write ``skills.json``; ``adapters[skill]`` holds ``path`` (relative) and ``rank``."""
    root = Path(root)
    example = [2, 0, 5, 1, 0][: lang.max_len]
    manifest = {
        "format": "BOS x_1 ... x_n SEP y_1 ... y_m EOS; the prompt ends at SEP",
        "tokens": {"pad": PAD, "bos": BOS, "eos": EOS, "sep": SEP},
        "digit_tokens": {str(i): DIGIT0 + i for i in range(10)},
        "letter_tokens": {chr(ord("a") + i): LETTER0 + i for i in range(lang.alphabet)},
        "language": lang.to_dict(),
        "base": {"path": "base", "skill": base_skill},
        "adapters": adapters,
        "skills": {s: SKILL_DESCRIPTIONS[s] for s in [base_skill, *adapters]},
        "example": {
            "prompt": lang.prompt(example),
            "completions": {s: lang.completion(s, example) for s in [base_skill, *adapters]},
        },
        "training": training,
        "exact_match": exact_match,
    }
    path = root / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def load_skills_assets(root: str | Path = SKILLS_DIR) -> SkillsAssets:
    """Read ``skills.json`` under ``root`` (the shipped assets by default)."""
    root = Path(root).resolve()
    path = root / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"no {MANIFEST} in {str(root)!r}: run experiments/train_skills.py to make the assets"
        )
    manifest = json.loads(path.read_text())
    return SkillsAssets(
        root=root,
        lang=SkillLanguage(**manifest["language"]),
        base_dir=root / manifest["base"]["path"],
        base_skill=manifest["base"]["skill"],
        adapters={name: root / a["path"] for name, a in manifest["adapters"].items()},
        manifest=manifest,
    )
