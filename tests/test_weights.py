"""The declarative weight table: shapes checked, missing/unexpected tensors refused, dummy init."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from models.config import ModelConfig
from models.presets import get_preset
from models.weights import (
    FIELD_SHAPES,
    LAYER_TABLE,
    TOP_TABLE,
    WeightError,
    init_dummy_weights,
    load_hf_weights,
)
from tests.conftest import HF_FIXTURES


def _copy_model(tmp_path, name="llama"):
    dst = tmp_path / name
    shutil.copytree(HF_FIXTURES / name, dst)
    return dst, ModelConfig.from_hf_dir(dst)


def _rewrite(model_dir, edit):
    tensors = load_file(model_dir / "model.safetensors")
    edit(tensors)
    save_file(tensors, str(model_dir / "model.safetensors"))


def test_table_covers_every_checkpoint_tensor():
    # Every tensor the fixture checkpoints hold is named by exactly one row of the table.
    for name in ("llama", "qwen2", "llama2"):
        cfg = ModelConfig.from_hf_dir(HF_FIXTURES / name)
        names = set(load_file(HF_FIXTURES / name / "model.safetensors"))
        rows = {r.hf_name for r in TOP_TABLE if r.present(cfg)} | {
            r.hf_name.format(i=i)
            for r in LAYER_TABLE
            if r.present(cfg)
            for i in range(cfg.num_layers)
        }
        assert names == rows, name


def test_fused_fields_are_filled_at_their_offsets():
    cfg = ModelConfig.from_hf_dir(HF_FIXTURES / "qwen2")
    params = load_hf_weights(HF_FIXTURES / "qwen2", cfg, "float32")
    raw = load_file(HF_FIXTURES / "qwen2" / "model.safetensors")
    lp = params.layers[1]
    k = raw["model.layers.1.self_attn.k_proj.weight"]
    np.testing.assert_array_equal(
        np.asarray(lp.w_qkv)[:, cfg.q_size : cfg.q_size + cfg.kv_size], k.T
    )
    vb = raw["model.layers.1.self_attn.v_proj.bias"]
    np.testing.assert_array_equal(np.asarray(lp.b_qkv)[cfg.q_size + cfg.kv_size :], vb)
    up = raw["model.layers.1.mlp.up_proj.weight"]
    np.testing.assert_array_equal(np.asarray(lp.w_gate_up)[:, cfg.intermediate_size :], up.T)
    assert params.lm_head is None  # tied


def test_sharded_equals_single_file():
    cfg = ModelConfig.from_hf_dir(HF_FIXTURES / "llama")
    single = load_hf_weights(HF_FIXTURES / "llama", cfg, "float32")
    sharded = load_hf_weights(HF_FIXTURES / "llama_sharded", cfg, "float32")
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_wrong_shape_is_refused_by_name(tmp_path):
    model_dir, cfg = _copy_model(tmp_path)
    name = "model.layers.2.mlp.down_proj.weight"
    _rewrite(model_dir, lambda t: t.__setitem__(name, np.zeros((64, 95), np.float32)))
    with pytest.raises(
        WeightError, match=r"down_proj.weight' has shape \(64, 95\), config expects \(64, 96\)"
    ):
        load_hf_weights(model_dir, cfg, "float32")


def test_missing_and_unexpected_tensors(tmp_path):
    model_dir, cfg = _copy_model(tmp_path)
    _rewrite(model_dir, lambda t: t.pop("model.layers.0.self_attn.v_proj.weight"))
    with pytest.raises(WeightError, match="lacks 1 tensors.*v_proj"):
        load_hf_weights(model_dir, cfg, "float32")
    model_dir, cfg = _copy_model(tmp_path / "second")
    _rewrite(model_dir, lambda t: t.__setitem__("model.layers.7.mlp.up_proj.weight", np.zeros(3)))
    with pytest.raises(WeightError, match="layers.7.mlp.up_proj"):
        load_hf_weights(model_dir, cfg, "float32")


def test_missing_files(tmp_path):
    model_dir, cfg = _copy_model(tmp_path)
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_hf_weights(model_dir, cfg, "float32")
    sharded = tmp_path / "sharded"
    shutil.copytree(HF_FIXTURES / "llama_sharded", sharded)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    next(sharded / f for f in set(index["weight_map"].values())).unlink()
    with pytest.raises(FileNotFoundError, match="shard"):
        load_hf_weights(sharded, cfg, "float32")


def test_dummy_weights_have_every_field_at_its_shape():
    cfg = get_preset("tiny")
    params = init_dummy_weights(cfg, "bfloat16", seed=3)
    assert params.embed.shape == FIELD_SHAPES["embed"](cfg) and params.embed.dtype == "bfloat16"
    assert len(params.layers) == cfg.num_layers
    lp = params.layers[0]
    assert lp.w_qkv.shape == (cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size)
    assert lp.w_gate_up.shape == (cfg.hidden_size, 2 * cfg.intermediate_size)
    assert float(np.asarray(lp.input_norm, np.float32).mean()) == 1.0
    std = float(np.asarray(lp.w_down, np.float32).std())
    assert 0.015 < std < 0.025
    # Layers differ (each its own key) and the seed matters.
    assert not np.array_equal(np.asarray(lp.w_o), np.asarray(params.layers[1].w_o))
    other = init_dummy_weights(cfg, "bfloat16", seed=4)
    assert not np.array_equal(np.asarray(lp.w_o), np.asarray(other.layers[0].w_o))
