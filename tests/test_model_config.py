"""config.json readers (transformers 4.x and 5.x layouts), presets and refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.config import ModelConfig, ModelConfigError, RopeConfig
from models.presets import PRESETS, get_preset
from tests.conftest import HF_FIXTURES

BASE = {
    "model_type": "llama",
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "eos_token_id": [2, 3],
}
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def test_transformers_4_and_5_layouts_read_the_same():
    v4 = ModelConfig.from_hf_dict(
        {**BASE, "rope_theta": 500000.0, "rope_scaling": LLAMA3, "torch_dtype": "bfloat16"}
    )
    v5 = ModelConfig.from_hf_dict(
        {**BASE, "rope_parameters": {**LLAMA3, "rope_theta": 500000.0}, "dtype": "bfloat16"}
    )
    assert v4 == v5
    assert v4.rope.rope_type == "llama3" and v4.rope.theta == 500000.0
    assert v4.head_dim == 16 and v4.torch_dtype == "bfloat16" and v4.eos_token_ids == (2, 3)


def test_4x_legacy_type_key_and_no_scaling():
    cfg = ModelConfig.from_hf_dict({**BASE, "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert cfg.rope == RopeConfig(theta=10000.0, rope_type="linear", factor=2.0)
    cfg = ModelConfig.from_hf_dict({**BASE, "rope_scaling": None, "rope_theta": 1e4})
    assert cfg.rope.rope_type == "default"


def test_fixture_config_written_by_transformers_5():
    raw = json.loads((HF_FIXTURES / "llama" / "config.json").read_text())
    assert "rope_parameters" in raw  # the 5.x layout is what the fixtures exercise
    cfg = ModelConfig.from_hf_dir(HF_FIXTURES / "llama")
    assert cfg.rope.original_max_position == 64 and not cfg.tie_word_embeddings
    qwen = ModelConfig.from_hf_dir(HF_FIXTURES / "qwen2")
    assert qwen.qkv_bias and not qwen.o_bias and qwen.tie_word_embeddings


def test_llama3_inv_freq_matches_transformers_formula():
    rope = RopeConfig(theta=500000.0, rope_type="llama3", factor=8.0, original_max_position=64)
    base = RopeConfig(theta=500000.0).inv_freq(16)
    scaled = rope.inv_freq(16)
    wavelen = 2 * np.pi / base
    # High frequencies (short wavelengths) are kept, low ones divided by the factor.
    np.testing.assert_allclose(scaled[wavelen < 64 / 4], base[wavelen < 64 / 4])
    np.testing.assert_allclose(scaled[wavelen > 64], base[wavelen > 64] / 8)


def test_sliding_window_caps_the_context():
    cfg = ModelConfig.from_hf_dict(
        {**BASE, "model_type": "mistral", "sliding_window": 128, "max_position_embeddings": 4096}
    )
    assert cfg.max_position_embeddings == 128
    cfg = ModelConfig.from_hf_dict({**BASE, "model_type": "mistral", "sliding_window": None})
    assert cfg.max_position_embeddings == 512


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"model_type": "gpt2"}, "model_type='gpt2'"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type='yarn'"),
        ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, "rope_type='dynamic'"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"hidden_size": "64"}, "hidden_size='64'"),
        ({"num_key_value_heads": 3}, "num_key_value_heads=3"),
    ],
)
def test_refusals_name_the_field(change, needle):
    with pytest.raises(ModelConfigError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        ModelConfig.from_hf_dict({**BASE, **change})


def test_missing_config_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        ModelConfig.from_hf_dir(tmp_path)


def test_presets():
    cfg = get_preset("llama-3.1-8b")
    assert (cfg.hidden_size, cfg.kv_size, cfg.intermediate_size) == (4096, 1024, 14336)
    assert 8.0e9 < cfg.num_params() < 8.1e9
    assert get_preset("llama-3.2-1b").tie_word_embeddings
    assert "tiny" in PRESETS
    with pytest.raises(ValueError, match="unknown model preset 'llama-9'"):
        get_preset("llama-9")
