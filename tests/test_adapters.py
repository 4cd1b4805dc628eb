"""PEFT adapter loading: per-module rank/scale as PEFT applies them, and every refusal."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jlora.adapters import AdapterError, load_peft_adapter, random_adapter, save_peft_adapter
from jlora.adapters.slots import SlotBuffers, adapter_to_groups
from jlora.kernels.types import TARGET_MODULES
from jlora.tools.make_adapters import main as make_adapters_main
from models.config import ModelConfig
from models.presets import get_preset
from tests.conftest import HF_FIXTURES

LLAMA = ModelConfig.from_hf_dir(HF_FIXTURES / "llama")
ADAPTERS = HF_FIXTURES / "adapters" / "llama"


@pytest.mark.parametrize("name", ["a", "b", "c"])
def test_rank_and_scale_per_module_match_peft(name, hf_manifest):
    adapter = load_peft_adapter(name, ADAPTERS / name, LLAMA, max_lora_rank=64)
    details = hf_manifest["lora_details"][f"llama/{name}"]
    found = {
        f"model.layers.{layer}.{'self_attn' if m in TARGET_MODULES[:4] else 'mlp'}.{m}": lm
        for (layer, m), lm in adapter.modules.items()
    }
    assert set(found) == set(details)
    for path, want in details.items():
        assert found[path].rank == want["r"], path
        assert found[path].scale == pytest.approx(want["scaling"]), path


def test_regex_target_string_and_layers_to_transform():
    c = load_peft_adapter("c", ADAPTERS / "c", LLAMA, 64)
    assert c.target_modules == ("k_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    b = load_peft_adapter("b", ADAPTERS / "b", LLAMA, 64)
    assert {layer for layer, _ in b.modules} == {0, 2} and b.rank == 4


def _copy(tmp_path, name="a"):
    dst = tmp_path / name
    shutil.copytree(ADAPTERS / name, dst)
    return dst


def _edit_config(path, **changes):
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg.update(changes)
    (path / "adapter_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"use_dora": True}, "use_dora=True"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save=\\['lm_head'\\]"),
        ({"lora_bias": True}, "lora_bias=True"),
        ({"bias": "all"}, "bias='all'"),
        ({"r": 0}, "r=0"),
        ({"r": "8"}, "r='8'"),
        ({"lora_alpha": -1}, "lora_alpha=-1"),
        ({"peft_type": "IA3"}, "peft_type='IA3'"),
        ({"target_modules": ["q_proj", "embed_tokens"]}, "target_modules='embed_tokens'"),
        ({"target_modules": ["lm_head"]}, "target_modules='lm_head'"),
        ({"target_modules": 7}, "target_modules=7"),
        ({"target_modules": "(unclosed"}, "target_modules='\\(unclosed'"),
        ({"rank_pattern": {"q_proj": 0}}, "rank_pattern\\['q_proj'\\]=0"),
        ({"rank_pattern": {"q_proj": 4}}, "rank=8 differs from the config's r=4"),
        ({"layers_to_transform": [1]}, "layers_to_transform=\\[1\\] excludes layer 0"),
        ({"use_rslora": "yes"}, "use_rslora='yes'"),
    ],
)
def test_config_refusals_name_adapter_field_value(tmp_path, changes, needle):
    path = _copy(tmp_path)
    _edit_config(path, **changes)
    with pytest.raises(AdapterError, match=f"adapter 'a': .*{needle}"):
        load_peft_adapter("a", path, LLAMA, 64)


def test_rank_above_max_lora_rank():
    with pytest.raises(AdapterError, match="adapter 'c': r=16 is above max_lora_rank=8"):
        load_peft_adapter("c", ADAPTERS / "c", LLAMA, max_lora_rank=8)


def test_shape_mismatch_with_the_base_model():
    # A base whose MLP is wider than the one the adapter was trained on: down_proj's A must not fit.
    wider = ModelConfig(**{**LLAMA.__dict__, "intermediate_size": 128})
    with pytest.raises(AdapterError, match="adapter 'c': layer 0 down_proj shape=.*does not fit"):
        load_peft_adapter("c", ADAPTERS / "c", wider, 64)


@pytest.mark.parametrize(
    "what, needle",
    [
        ("no_dir", "path=.* is not a directory"),
        ("no_config", "has no adapter_config.json"),
        ("no_weights", "has no adapter_model.safetensors"),
        ("bad_json", "is not valid JSON"),
        ("embedding", "targets the embedding"),
        ("lm_head", "targets lm_head"),
        ("dora", "is a DoRA magnitude"),
        ("orphan_a", "has lora_A without lora_B"),
        ("past_layers", "is past the model's 3 layers"),
    ],
)
def test_file_refusals(tmp_path, what, needle):
    path = _copy(tmp_path)
    weights = path / "adapter_model.safetensors"
    tensors = load_file(weights)
    extra = {
        "embedding": "base_model.model.model.embed_tokens.lora_embedding_A",
        "lm_head": "base_model.model.lm_head.lora_A.weight",
        "dora": "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
        "past_layers": "base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight",
    }
    if what == "no_dir":
        shutil.rmtree(path)
    elif what == "no_config":
        (path / "adapter_config.json").unlink()
    elif what == "no_weights":
        weights.unlink()
    elif what == "bad_json":
        (path / "adapter_config.json").write_text("{not json")
    elif what == "orphan_a":
        tensors.pop("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight")
        save_file(tensors, str(weights))
    else:
        tensors[extra[what]] = np.zeros((8, 64), np.float32)
        save_file(tensors, str(weights))
    with pytest.raises(AdapterError, match=needle):
        load_peft_adapter("a", path, LLAMA, 64)


def test_save_and_load_round_trip(tmp_path):
    cfg = get_preset("tiny")
    adapter = random_adapter("x", cfg, rank=6, seed=1)
    loaded = load_peft_adapter("x", save_peft_adapter(adapter, tmp_path / "x"), cfg, 64)
    assert loaded.modules.keys() == adapter.modules.keys()
    for key, lm in adapter.modules.items():
        np.testing.assert_array_equal(loaded.modules[key].a, lm.a)
        np.testing.assert_array_equal(loaded.modules[key].b, lm.b)
        assert loaded.modules[key].scale == pytest.approx(lm.scale)
    assert np.abs(lm.b).max() > 0  # B is non-zero, unlike PEFT's init


def test_make_adapters_tool(tmp_path, capsys):
    make_adapters_main(["--model", "tiny", "--ranks", "4,8,8", "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r4", "r8", "r8_2"]
    cfg = get_preset("tiny")
    r8 = load_peft_adapter("r8", tmp_path / "r8", cfg, 64)
    assert r8.rank == 8 and r8.target_modules == TARGET_MODULES
    assert len(r8.modules) == 7 * cfg.num_layers
    with pytest.raises(ValueError, match="--ranks='8,x'"):
        make_adapters_main(["--model", "tiny", "--ranks", "8,x", "--out", str(tmp_path)])


def test_slot_put_writes_only_its_slot():
    cfg = get_preset("tiny")
    slots = SlotBuffers(cfg, num_slots=3, max_rank=8, dtype="float32")
    first, second = random_adapter("p", cfg, 4, seed=1), random_adapter("q", cfg, 8, seed=2)
    slots.put(0, first)
    slots.put(2, second)
    want = adapter_to_groups(second, cfg, 8, "float32")
    for g, buf in slots.layers.items():  # a [L, S, ...]
        for layer in range(cfg.num_layers):
            a, b, scale = want[layer][g]
            np.testing.assert_array_equal(np.asarray(buf.a[layer, 2]), a)
            np.testing.assert_array_equal(np.asarray(buf.b[layer, 2]), b)
            np.testing.assert_array_equal(np.asarray(buf.scale[layer, 2]), scale)
        assert not np.asarray(buf.a[:, 1]).any()  # untouched slot stays empty
    assert list(slots.slot_rank) == [4, 0, 8] and slots.occupant == ["p", None, "q"]
    slots.put(0, None)
    assert not np.asarray(slots.layers["qkv"].a[:, 0]).any() and slots.slot_rank[0] == 0
