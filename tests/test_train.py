"""Training: the shipped skills adapters work and route per request, resume is exact, export is
lossless (PEFT files, HF base directory), and the skills language is what it says."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jlora.adapters import load_peft_adapter
from jlora.config import EngineConfig
from jlora.engine import Engine
from jlora.train import (
    LoraPair,
    TrainConfig,
    adapter_to_lora,
    export_base_model,
    export_peft_adapter,
    init_lora_params,
    lora_slot_layers,
    train_lora,
)
from jlora.train.assets import load_skills_assets
from jlora.train.checkpoint import TrainCheckpointer
from jlora.train.evaluate import EngineGreedyGenerator, ScoreGreedyGenerator, evaluate_skills
from jlora.train.loop import sequence_logits
from jlora.train.tasks import EOS, LETTER0, SEP, SkillLanguage
from models.config import ModelConfig
from models.presets import get_preset
from models.save import save_hf_weights
from models.weights import init_dummy_weights, load_hf_weights

FIXTURES = Path(__file__).parent / "fixtures" / "hf"
TINY = get_preset("tiny")
LANG = SkillLanguage()


# ------------------------------------------------------------------ the shipped skills adapters
@pytest.fixture(scope="module")
def skills():
    return load_skills_assets()


@pytest.fixture(scope="module")
def skills_engine(skills):
    # Only the shapes the test uses get compiled, and short contexts keep them small.
    return Engine(EngineConfig(**skills.engine_kwargs(context_length=64, warmup=False)))


def test_adapters_have_their_skill_and_route_per_request_in_a_mixed_batch(skills, skills_engine):
    prompts = skills.lang.heldout_prompts(64, seed=99)
    rows = {"none": None, **{name: name for name in skills.adapters}}
    all_skills = [skills.base_skill, *skills.adapters]
    generate = ScoreGreedyGenerator(skills_engine)

    # Every (adapter, prompt) request in one call, interleaved so each step mixes all adapters.
    mixed = evaluate_skills(generate, skills.lang, prompts, rows, all_skills)
    print("\n" + mixed.table())
    assert mixed.rates["none"][skills.base_skill] >= 0.9
    for skill in skills.adapters:
        own = mixed.rates[skill][skill]
        assert own >= 0.9, (skill, mixed.rates[skill])
        assert own - mixed.rates["none"][skill] >= 0.8, (skill, mixed.rates["none"])
        # Not the others: near chance. (Some agreement is inherent: a short prompt in descending
        # order has the same reverse and sort, so those two rows share a few hits.)
        for other in all_skills:
            if other != skill:
                assert mixed.rates[skill][other] <= 0.2, (skill, other, mixed.rates[skill])

    # Each adapter served alone: the same tokens, hence the same exact-match rates.
    for label, name in rows.items():
        alone = generate(prompts, [name] * len(prompts), skills.lang.max_len + 1)
        assert alone == mixed.outputs[label], label

    # The serving path (scheduler, paged KV cache, slots) decodes the same mixed batch alike.
    served = evaluate_skills(
        EngineGreedyGenerator(skills_engine), skills.lang, prompts, rows, all_skills
    )
    assert served.outputs == mixed.outputs


def test_shipped_manifest_describes_the_files(skills):
    assert skills.base_dir.joinpath("config.json").is_file()
    assert set(skills.adapters) == {"reverse", "sort", "shift", "count"}
    cfg = ModelConfig.from_hf_dir(skills.base_dir)
    for name, path in skills.adapters.items():
        adapter = load_peft_adapter(name, path, cfg, max_lora_rank=64)
        assert adapter.rank == skills.manifest["adapters"][name]["rank"]
    example = skills.manifest["example"]
    symbols = skills.lang.symbols_of(example["prompt"])
    for skill, completion in example["completions"].items():
        assert skills.lang.completion(skill, symbols) == completion


# ------------------------------------------------------------------ resume
def _lora_run(tmp_path: Path, **changes) -> TrainConfig:
    return TrainConfig(
        rank=4,
        alpha=8.0,
        target_modules=("q_proj", "v_proj", "down_proj"),
        lr=1e-2,
        warmup_steps=2,
        total_steps=12,
        batch_size=8,
        seed=3,
        checkpoint_every=4,
        keep_last_n=2,
        progress=False,
        log_every=1,
    ).replace(**changes)


def _reverse_data(config: TrainConfig):
    return lambda i: LANG.batch("reverse", config.batch_size, config.seed, i)


def test_resume_from_checkpoint_gives_the_same_final_params(tmp_path):
    base = init_dummy_weights(TINY, "float32", seed=0)
    straight_cfg = _lora_run(tmp_path, log_dir=str(tmp_path / "tb"))
    straight = train_lora(base, TINY, _reverse_data(straight_cfg), straight_cfg)

    ckpt_dir = tmp_path / "ckpt"
    config = _lora_run(tmp_path, checkpoint_dir=str(ckpt_dir))
    # Interrupted after step 10: the last checkpoint is step 8, steps 9-10 are lost.
    train_lora(base, TINY, _reverse_data(config), config, stop_after=10)
    assert TrainCheckpointer(ckpt_dir, every=4, keep_last_n=2).all_steps() == [4, 8]
    resumed = train_lora(base, TINY, _reverse_data(config), config)
    assert TrainCheckpointer(ckpt_dir, every=4, keep_last_n=2).all_steps() == [8, 12]

    leaves_a, tree_a = jax.tree.flatten(straight)
    leaves_b, tree_b = jax.tree.flatten(resumed)
    assert tree_a == tree_b
    for a, b in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(np.abs(np.asarray(p.b)).max() > 0 for layer in resumed for p in layer.values())

    # A checkpoint of a different computation is refused, not silently resumed.
    with pytest.raises(ValueError, match="different run"):
        other = config.replace(lr=2e-2)
        train_lora(base, TINY, _reverse_data(other), other)

    # TensorBoard: one loss and learning-rate scalar per step; warm-up then decay; loss falls.
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    loss = [s.value for s in events.Scalars("train/loss")]
    lr = [s.value for s in events.Scalars("train/learning_rate")]
    assert len(loss) == len(lr) == 12
    assert lr[0] == 0.0 and max(lr) == pytest.approx(1e-2) and lr[-1] < max(lr)
    assert loss[-1] < loss[0]


# ------------------------------------------------------------------ export
def test_exported_adapter_and_base_load_back_with_the_same_logits(tmp_path):
    base = init_dummy_weights(TINY, "float32", seed=1)
    config = TrainConfig(rank=4, alpha=4.0, target_modules=("k_proj", "o_proj", "up_proj"))
    lora = init_lora_params(TINY, 4, config.target_modules, jax.random.key(0))
    # PEFT starts B at zero; give it values so the adapter changes the logits.
    lora = tuple(
        {
            m: LoraPair(a=p.a, b=0.3 * jax.random.normal(jax.random.key(7 * i + len(m)), p.b.shape))
            for m, p in layer.items()
        }
        for i, layer in enumerate(lora)
    )
    base_dir = export_base_model(base, TINY, tmp_path / "base")
    adapter_dir = export_peft_adapter(lora, config, tmp_path / "adapter", name="x")

    loaded = load_peft_adapter("x", adapter_dir, ModelConfig.from_hf_dir(base_dir), 64)
    assert jax.tree.all(jax.tree.map(np.array_equal, adapter_to_lora(loaded, TINY), lora))
    assert {m.scale for m in loaded.modules.values()} == {config.scale}

    tokens = LANG.prompt([1, 2, 3, 4, 5]) + [20, 21, EOS]
    ours = sequence_logits(
        base, TINY, jnp.asarray(tokens), lora_slot_layers(lora, TINY, config.scale), rank=4
    )
    ours_base = sequence_logits(base, TINY, jnp.asarray(tokens))
    engine = Engine(
        EngineConfig(
            model=str(base_dir),
            dtype="float32",
            lora_paths={"x": str(adapter_dir)},
            max_lora_rank=8,
            warmup=False,
        )
    )
    with_lora, without = engine.score([tokens, tokens], ["x", None])
    scale = float(np.abs(ours).max())
    assert np.abs(np.asarray(ours) - np.asarray(ours_base)).max() > 0.05 * scale
    np.testing.assert_allclose(with_lora, ours, atol=1e-5 * scale)
    np.testing.assert_allclose(without, ours_base, atol=1e-5 * scale)


@pytest.mark.parametrize("model", ["llama", "qwen2"])
def test_save_hf_weights_inverts_loading(tmp_path, model):
    cfg = ModelConfig.from_hf_dir(FIXTURES / model)
    params = load_hf_weights(FIXTURES / model, cfg, "float32")
    save_hf_weights(params, cfg, tmp_path)
    assert ModelConfig.from_hf_dir(tmp_path) == dataclasses.replace(cfg, torch_dtype="float32")
    original = load_file(FIXTURES / model / "model.safetensors")
    written = load_file(tmp_path / "model.safetensors")
    tied = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    assert set(written) == set(original) - tied
    for name, tensor in written.items():
        np.testing.assert_array_equal(tensor, original[name], err_msg=name)


# ------------------------------------------------------------------ the skills language
def test_skill_completions():
    lang = SkillLanguage(alphabet=8, shift=1, count_symbol=0)
    x = [0, 1, 2, 0]  # "abca"
    letters = {s: lang.decode(lang.completion(s, x)) for s in ("copy", "reverse", "sort", "shift")}
    assert letters == {
        "copy": "a b c a <eos>",
        "reverse": "a c b a <eos>",
        "sort": "a a b c <eos>",
        "shift": "b c d b <eos>",
    }
    assert lang.decode(lang.completion("count", x)) == "2 <eos>"
    assert lang.decode(lang.completion("shift", [7])) == "a <eos>"


def test_batches_mask_completions_and_never_hold_heldout_prompts():
    lang = SkillLanguage()
    heldout = {tuple(p) for p in lang.heldout_prompts(200)}
    assert all(lang.is_heldout(lang.symbols_of(p)) for p in heldout)
    for step in range(5):
        batch = lang.batch(("reverse", "count"), 32, seed=0, step=step)
        again = lang.batch(("reverse", "count"), 32, seed=0, step=step)
        np.testing.assert_array_equal(batch.tokens, again.tokens)
        for row, mask in zip(batch.tokens, batch.loss_mask, strict=True):
            sep = int(np.flatnonzero(row == SEP)[0])
            eos = int(np.flatnonzero(row == EOS)[0])
            assert tuple(row[: sep + 1]) not in heldout
            # Targets are the tokens after SEP up to EOS: mask positions sep .. eos - 1.
            np.testing.assert_array_equal(np.flatnonzero(mask), np.arange(sep, eos))

    pretrain = lang.pretrain_batch(64, seed=0, step=0, digit_fraction=0.5)
    prompts_and_answers = [row[1 : int(np.flatnonzero(row == EOS)[0])] for row in pretrain.tokens]
    for seq in prompts_and_answers:  # x SEP x: copy, over letters or over digits
        n = len(seq) // 2
        assert seq[n] == SEP and list(seq[:n]) == list(seq[n + 1 :])
    assert 10 < sum(int(seq[0]) < LETTER0 for seq in prompts_and_answers) < 54
