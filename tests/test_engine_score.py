"""Engine.score: refusals, batch packing across slots, and batch invariance."""

from __future__ import annotations

import numpy as np
import pytest

from jlora.config import EngineConfig
from jlora.engine import Engine
from jlora.runner.buckets import ShapeBuckets, geometric


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(
        EngineConfig(
            model="tiny",
            dtype="float32",
            lora_paths={"r4": "dummy:4", "r8": "dummy:8", "r16": "dummy:16"},
            max_loras_per_batch=2,
            max_lora_rank=16,
            max_prefill_tokens=64,
            context_length=4096,
            warmup=False,
        )
    )


def test_batched_equals_one_at_a_time(engine):
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 256, n).tolist() for n in (5, 1, 17, 9, 30, 3)]
    names = ["r4", None, "r16", "r8", "r4", "r16"]  # 3 adapters through 2 slots
    together = engine.score(prompts, lora_name=names)
    for prompt, name, got in zip(prompts, names, together, strict=True):
        alone = engine.score([prompt], lora_name=name)[0]
        np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-5)
        assert got.shape == (len(prompt), 256)


def test_adapters_differ_from_each_other_and_from_base(engine):
    prompt = [[3, 1, 4, 1, 5, 9, 2, 6]]
    outs = {n: engine.score(prompt, lora_name=n)[0] for n in (None, "r4", "r8", "r16")}
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(outs[a] - outs[b]).max() > 1e-3, (a, b)


def test_single_lora_name_applies_to_all(engine):
    out = engine.score([[1, 2], [3]], lora_name="r8")
    each = engine.score([[1, 2], [3]], lora_name=["r8", "r8"])
    for a, b in zip(out, each, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "prompts, names, needle",
    [
        ([[1, 2]], ["nope"], "unknown adapter name 'nope'"),
        ([[]], None, "prompt 0 is empty"),
        ([[1], [256]], None, "prompt 1 has token id 256 outside the vocabulary"),
        ([[-1]], None, "token id -1"),
        ([[1, 2], [3]], ["r4"], "lora_name has 1 entries for 2 prompts"),
        ([], None, "non-empty list"),
        ("abc", None, "non-empty list"),
        ([[1.5]], None, "non-integer"),
        ([[1] * 5000], None, "prompt 0 has 5000 tokens, longer than the context 4096"),
    ],
)
def test_score_refusals(engine, prompts, names, needle):
    with pytest.raises(ValueError, match=needle):
        engine.score(prompts, lora_name=names)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"max_loras_per_batch": 0}, "max_loras_per_batch=0"),
        ({"lora_backend": "triton"}, "lora_backend='triton'"),
        ({"dtype": "float64"}, "dtype='float64'"),
        ({"load_format": "pt"}, "load_format='pt'"),
        ({"model": "no-such-model"}, "model='no-such-model' is neither"),
        ({"max_lora_rank": -8}, "max_lora_rank=-8"),
        ({"max_loaded_loras": 1, "max_loras_per_batch": 2}, "max_loaded_loras=1"),
        ({"lora_paths": {"a": ""}}, "lora_paths\\['a'\\]=''"),
        ({"graph_scheduling": "parallel"}, "graph_scheduling='parallel'"),
    ],
)
def test_config_refusals(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        EngineConfig(**{"model": "tiny", **kwargs})


def test_dummy_adapter_above_max_rank():
    with pytest.raises(ValueError, match="adapter 'big': rank=32 is above max_lora_rank=16"):
        Engine(EngineConfig(model="tiny", lora_paths={"big": "dummy:32"}, max_lora_rank=16))


def test_missing_adapter_dir_is_refused(tmp_path):
    with pytest.raises(ValueError, match="adapter 'gone': path=.* is not a directory"):
        Engine(EngineConfig(model="tiny", lora_paths={"gone": str(tmp_path / "gone")}))


def test_shape_buckets():
    assert geometric(64, 2048, 4) == (64, 256, 1024, 2048)
    b = ShapeBuckets(
        prefill_tokens=(64, 256),
        decode_batch=(8, 32),
        kv_pages=(4, 16),
        prefix_pages=16,
        prefill_rows=8,
    )
    assert b.prefill_bucket(1) == 64 and b.prefill_bucket(65) == 256
    assert b.decode_bucket(9, 4) == (32, 4)
    assert len(b.all_shapes()) == 2 + 2 * 2
    with pytest.raises(ValueError, match="prefill tokens=257 exceeds the largest bucket 256"):
        b.prefill_bucket(257)
    with pytest.raises(ValueError, match="decode_batch"):
        ShapeBuckets(
            prefill_tokens=(64,),
            decode_batch=(8, 8),
            kv_pages=(4,),
            prefix_pages=4,
            prefill_rows=8,
        )
