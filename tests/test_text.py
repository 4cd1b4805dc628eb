"""Text in, text out: tokenizers and chat templates equal transformers' on the same files
(fixtures made once by ``tests/fixtures/text/make_text_fixtures.py``); streamed text never breaks
a character and joins to the output's text; stop strings; the engine takes text prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jlora.config import EngineConfig
from jlora.engine import Engine
from jlora.sampling_params import ArgumentTypeError, SamplingParams
from jlora.text import ChatTemplateError, IncrementalDetokenizer, load_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "text"
REFERENCE = json.loads((FIXTURES / "reference.json").read_text())["models"]
MODELS = sorted(REFERENCE)


@pytest.mark.parametrize("name", MODELS)
def test_chat_template_and_encoding_equal_transformers(name):
    tok = load_tokenizer(FIXTURES / name)
    ref = REFERENCE[name]
    assert len(ref["chat"]) == 6 and len(ref["encode"]) == 4
    for case in ref["chat"]:
        args = dict(add_generation_prompt=case["add_generation_prompt"])
        if case["error"] is not None:
            with pytest.raises(ChatTemplateError):
                tok.apply_chat_template(case["messages"], **args)
            continue
        assert tok.apply_chat_template(case["messages"], tokenize=False, **args) == case["text"]
        assert tok.apply_chat_template(case["messages"], **args) == case["ids"]
    for case in ref["encode"]:
        assert tok.encode(case["text"]) == case["ids"]
    for case in ref["decode"]:
        assert tok.decode(case["ids"]) == case["text"]


def test_special_tokens_and_eos_come_from_the_config_files():
    llama3 = load_tokenizer(FIXTURES / "llama3")
    generation = json.loads((FIXTURES / "llama3" / "generation_config.json").read_text())
    assert llama3.eos_token_ids == tuple(generation["eos_token_id"])  # two ids, eot among them
    assert llama3.special_tokens["bos_token"] == "<|begin_of_text|>"
    llama2 = load_tokenizer(FIXTURES / "llama2")  # AddedToken dicts in tokenizer_config.json
    assert llama2.special_tokens["eos_token"] == "</s>" and llama2.eos_token_ids == (2,)
    assert load_tokenizer(FIXTURES) is None  # no tokenizer.json: token ids only


def test_chat_template_refusals_name_the_problem():
    llama2 = load_tokenizer(FIXTURES / "llama2")
    roles_out_of_order = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        llama2.apply_chat_template(roles_out_of_order)
    with pytest.raises(ChatTemplateError, match=r"messages\[0\].role=None"):
        llama2.apply_chat_template([{"content": "hi"}])
    with pytest.raises(ChatTemplateError, match="non-empty list"):
        llama2.apply_chat_template("hi")
    # The sandbox: a template cannot reach Python internals.
    llama2.chat_template = "{{ messages.__class__.__mro__ }}"
    with pytest.raises(ChatTemplateError):
        llama2.apply_chat_template([{"role": "user", "content": "x"}])


def _stream_text(tok, prompt_ids, output_ids, stop=()):
    det = IncrementalDetokenizer(tok, prompt_ids, stop)
    pieces, hit = [], None
    for i, t in enumerate(output_ids):
        hit = det.add(t)
        pieces.append(det.take_piece(finished=hit is not None or i == len(output_ids) - 1))
        if hit is not None:
            break
    return det, pieces, hit


@pytest.mark.parametrize("name", MODELS)
def test_streamed_pieces_never_break_a_character_and_join_to_the_text(name):
    tok = load_tokenizer(FIXTURES / name)
    prompt = tok.encode("Hello world!")
    text = " café 🙂 日本語, naïve ✓ — 3.14\n\tdone"
    output = tok.encode(text, add_special_tokens=False)
    det, pieces, _ = _stream_text(tok, prompt, output)
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == det.text
    # In context: what the output adds to the prompt's text (a leading space kept).
    assert det.text == tok.decode(prompt + output)[len(tok.decode(prompt)) :]
    assert sum(1 for p in pieces if p) > 5  # it streams, not all at the end


@pytest.mark.parametrize("name", MODELS)
def test_stop_string_cuts_the_text_and_is_never_streamed(name):
    tok = load_tokenizer(FIXTURES / name)
    output = tok.encode(" The quick brown fox jumps over the lazy dog.", add_special_tokens=False)
    prompt = tok.encode("Hi")
    whole = tok.decode(prompt + output)[len(tok.decode(prompt)) :]
    det, pieces, hit = _stream_text(tok, prompt, output, stop=("lazy", "fox j"))
    assert hit == "fox j" and det.stop_string == "fox j"  # the first in the text, not in the list
    assert det.text == whole[: whole.index("fox j")] and det.text.endswith(" quick brown ")
    assert "".join(pieces) == det.text
    det, _, hit = _stream_text(tok, prompt, output, stop=("cat",))
    assert hit is None and det.text == whole


# ---------------------------------------------------------------- the engine
def _engine(model: str, **overrides) -> Engine:
    kwargs = dict(
        model=model,
        load_format="dummy",
        dtype="float32",
        context_length=64,
        page_size=4,
        max_running_requests=4,
        max_prefill_tokens=64,
        prefill_token_buckets=(64,),
        decode_batch_buckets=(4,),
        kv_len_buckets=(64,),
        warmup=False,
    )
    kwargs.update(overrides)
    return Engine(EngineConfig(**kwargs))


@pytest.fixture(scope="module")
def engine() -> Engine:
    return _engine(str(FIXTURES / "llama3"))


def test_engine_takes_text_and_gives_text(engine):
    tok = engine.tokenizer
    assert engine.eos_token_ids >= set(tok.eos_token_ids)
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    [by_text] = engine.generate("Hello world!", params)
    [by_ids] = engine.generate([tok.encode("Hello world!")], params)
    assert by_text.token_ids == by_ids.token_ids and by_text.prompt_len == by_ids.prompt_len
    assert by_text.text == tok.decode(by_text.token_ids)  # byte-level: no context needed
    pieces = [e.text for e in engine.stream("Hello world!", params)]
    assert "".join(pieces) == by_text.text
    off = engine.generate(["Hello world!"], SamplingParams(max_new_tokens=4, detokenize=False))
    assert off[0].text is None


def test_engine_stop_string_ends_the_request_where_the_text_has_it(engine):
    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    [full] = engine.generate(["The quick brown fox"], params)
    # A stop string from the middle of the greedy text: the same tokens up to it, then stop.
    # (Random weights: pick two characters that the text has after its first third.)
    text = full.text
    at = next(i for i in range(len(text) // 3, len(text) - 1) if text[i : i + 2].strip())
    stop = text[at : at + 2]
    first = text.find(stop)
    params = SamplingParams(max_new_tokens=24, ignore_eos=True, stop=[stop])
    [stopped] = engine.generate(["The quick brown fox"], params)
    assert stopped.finish_reason == "stop" and stopped.text == text[:first]
    assert stopped.token_ids == full.token_ids[: len(stopped.token_ids)]
    events = list(engine.stream("The quick brown fox", params))
    assert "".join(e.text for e in events) == stopped.text
    assert all(stop not in e.text for e in events)


def test_engine_eos_from_generation_config(engine):
    eot = engine.tokenizer.tokenizer.token_to_id("<|eot_id|>")
    assert eot in engine.eos_token_ids and eot not in engine.model_config.eos_token_ids


def test_text_without_a_tokenizer_is_refused_naming_the_problem():
    tiny = _engine("tiny", load_format="auto")
    with pytest.raises(ArgumentTypeError, match="'tiny' has no tokenizer"):
        tiny.add_request("Hello", SamplingParams())
    with pytest.raises(ValueError, match="stop strings need a tokenizer"):
        tiny.add_request([1, 2], SamplingParams(stop=["x"]))
    with pytest.raises(ValueError, match="holds no tokenizer.json"):
        Engine(EngineConfig(model="tiny", tokenizer_path=str(FIXTURES), warmup=False))
    assert not tiny.has_unfinished()


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(stop="x"), r"stop='x' must be a list of strings"),
        (dict(stop=[3]), "must hold strings, not int"),
        (dict(stop=[""]), "empty string"),
        (dict(stop=["a"], detokenize=False), "needs detokenize=True"),
    ],
)
def test_bad_stop_strings_are_refused(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        SamplingParams(**kwargs)


# ---------------------------------------------------------------- the skills model
def test_skills_tokenizer_has_the_trained_ids_and_each_adapter_shows_its_skill():
    from jlora.train.assets import load_skills_assets
    from jlora.train.skills_tokenizer import build_skills_tokenizer, check_layout, skills_vocab

    assets = load_skills_assets()
    check_layout(assets.lang, skills_vocab(256))
    shipped = json.loads((assets.base_dir / "tokenizer.json").read_text())
    assert shipped == json.loads(build_skills_tokenizer(256).to_str())  # the file is the builder's
    engine = Engine(EngineConfig(**assets.engine_kwargs(warmup=False, context_length=64)))
    tok = engine.tokenizer
    example = assets.manifest["example"]
    assert tok.encode("cafba<sep>") == example["prompt"]
    chat = tok.apply_chat_template([{"role": "user", "content": "c a f b a"}])
    assert chat == example["prompt"]
    names = [None, *assets.adapters]
    outs = engine.generate([chat] * len(names), SamplingParams(max_new_tokens=12), names)
    for name, out in zip(names, outs, strict=True):
        skill = assets.base_skill if name is None else name
        expected = example["completions"][skill]
        assert out.token_ids == expected and out.finish_reason == "stop"
        assert out.text == tok.decode(expected) and out.text.isalnum()
    assert [o.text for o in outs[:3]] == ["cafba", "abfac", "aabcf"]
