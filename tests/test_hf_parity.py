"""Our forward + LoRA against Hugging Face transformers + PEFT (fixtures made by
tests/fixtures/make_hf_reference.py), float32: max|ours - hf| <= 1e-4 * max|hf|."""

from __future__ import annotations

import numpy as np
import pytest

from jlora.config import EngineConfig
from jlora.engine import Engine
from tests.conftest import HF_FIXTURES

CASES = ["llama", "llama_sharded", "llama2", "qwen2", "mistral"]


def _engine(case: dict, **overrides) -> Engine:
    adapters = {name: str(HF_FIXTURES / path) for name, path in case["adapters"].items()}
    kwargs = dict(
        model=str(HF_FIXTURES / case["model_dir"]),
        dtype="float32",
        lora_paths=adapters,
        max_loras_per_batch=max(1, len(adapters)),
        max_lora_rank=16,
        warmup=False,  # score compiles only the shapes it uses
    )
    kwargs.update(overrides)
    return Engine(EngineConfig(**kwargs))


@pytest.mark.parametrize("case_name", CASES)
def test_mixed_batch_matches_hf_peft(case_name, hf_manifest, hf_reference):
    case = hf_manifest["cases"][case_name]
    prompts = [p["token_ids"] for p in case["prompts"]]
    names = [p["adapter"] for p in case["prompts"]]
    out = _engine(case).score(prompts, lora_name=names)
    for p, ours in zip(case["prompts"], out, strict=True):
        ref = hf_reference[p["npz_key"]]
        assert ours.shape == ref.shape and ours.dtype == np.float32
        err = np.abs(ours - ref).max()
        assert err <= 1e-4 * np.abs(ref).max(), (p["npz_key"], p["adapter"], err)


def test_adapters_change_the_logits(hf_manifest, hf_reference):
    # Guards the fixtures themselves: an adapter that changed nothing would make parity vacuous.
    case = hf_manifest["cases"]["llama"]
    engine = _engine(case)
    prompt = case["prompts"][0]["token_ids"]
    base = engine.score([prompt])[0]
    for name in case["adapters"]:
        adapted = engine.score([prompt], lora_name=name)[0]
        assert np.abs(adapted - base).max() > 0.05 * np.abs(base).max(), name


def test_one_slot_serves_every_adapter_in_turn(hf_manifest, hf_reference):
    # Three adapters through a single device slot: the engine must swap between steps.
    case = hf_manifest["cases"]["llama"]
    out = _engine(case, max_loras_per_batch=1).score(
        [p["token_ids"] for p in case["prompts"]], lora_name=[p["adapter"] for p in case["prompts"]]
    )
    for p, ours in zip(case["prompts"], out, strict=True):
        ref = hf_reference[p["npz_key"]]
        assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()


def test_bfloat16_close_to_float32(hf_manifest, hf_reference):
    case = hf_manifest["cases"]["llama"]
    prompts = [p["token_ids"] for p in case["prompts"]]
    names = [p["adapter"] for p in case["prompts"]]
    out = _engine(case, dtype="bfloat16").score(prompts, lora_name=names)
    for p, ours in zip(case["prompts"], out, strict=True):
        ref = hf_reference[p["npz_key"]]
        rel = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
        assert rel < 3e-2, (p["npz_key"], rel)
