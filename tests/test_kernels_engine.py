"""Engine.score with ``lora_backend="pallas"`` (the kernels in interpret mode on the CPU) matches
``lora_backend="xla"``: the kernels as the model forward calls them, every layer and group."""

from __future__ import annotations

import numpy as np
import pytest

from jlora.config import EngineConfig
from jlora.engine import Engine


def _engine(backend: str) -> Engine:
    return Engine(
        EngineConfig(
            model="tiny",
            dtype="float32",
            lora_paths={"r4": "dummy:4", "r8": "dummy:8", "r16": "dummy:16"},
            max_loras_per_batch=3,
            max_lora_rank=16,
            max_prefill_tokens=64,
            context_length=4096,
            lora_backend=backend,
            warmup=False,
        )
    )


@pytest.fixture(scope="module")
def engines() -> dict[str, Engine]:
    return {backend: _engine(backend) for backend in ("xla", "pallas")}


def test_score_pallas_matches_xla(engines):
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 256, n).tolist() for n in (5, 17, 1, 9, 30)]
    names = ["r4", None, "r16", "r8", "r4"]  # mixed ranks, a prompt without an adapter
    want = engines["xla"].score(prompts, lora_name=names)
    got = engines["pallas"].score(prompts, lora_name=names)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
