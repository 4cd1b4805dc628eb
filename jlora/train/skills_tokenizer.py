"""The skills language's tokenizer, so that the skills model takes and gives text.

Built with ``tokenizers`` from :class:`~jlora.train.tasks.SkillLanguage`'s token layout, so that
its ids are those the model was trained on: ``<pad> <bos> <eos> <sep>`` are 0-3, the digits
``0``-``9`` are 4-13, the letters ``a``, ``b``, ... are 16 onwards (all 26 are in the vocabulary;
the model was trained on the first ``alphabet``). Id 14 is ``<unk>`` (any other character); the
rest of the model's vocabulary are unused special tokens. A text is one token per character
(whitespace is dropped), and BOS is added in front, so::

    "cabfa<sep>"  ->  <bos> c a b f a <sep>  ->  [1, 18, 16, 17, 21, 16, 3]

The chat template takes one user message (its symbols) and writes ``<bos> symbols <sep>``: the
prompt the model completes. Decoding leaves the special tokens out and joins the characters.

    python -m jlora.train.skills_tokenizer    # writes them into jlora/assets/skills/base
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from jlora.train.tasks import BOS, DIGIT0, EOS, LETTER0, PAD, SEP, SkillLanguage

UNK = 14
NAMES = {PAD: "<pad>", BOS: "<bos>", EOS: "<eos>", SEP: "<sep>", UNK: "<unk>"}

CHAT_TEMPLATE = (
    "{%- set users = messages | selectattr('role', 'equalto', 'user') | list -%}"
    "{%- if users | length != 1 -%}"
    "{{ raise_exception('the skills model takes one user message (its symbols), got ' "
    "~ (users | length)) }}"
    "{%- endif -%}"
    "{{ bos_token }}{{ users[0]['content'] }}{% if add_generation_prompt %}{{ sep_token }}"
    "{% endif %}"
)


def skills_vocab(vocab_size: int) -> dict[str, int]:
    """Token text -> id over the model's whole vocabulary (the trained layout first)."""
    vocab = {name: i for i, name in NAMES.items()}
    vocab.update({str(d): DIGIT0 + d for d in range(10)})
    vocab.update({chr(ord("a") + i): LETTER0 + i for i in range(26)})
    taken = set(vocab.values())
    vocab.update({f"<unused{i}>": i for i in range(vocab_size) if i not in taken})
    if len(vocab) != vocab_size or max(vocab.values()) != vocab_size - 1:
        raise ValueError(f"vocab_size={vocab_size} is too small for the skills language's layout")
    return vocab


def build_skills_tokenizer(vocab_size: int) -> Tokenizer:
    """The tokenizer of the skills language over a model vocabulary of ``vocab_size`` ids."""
    vocab = skills_vocab(vocab_size)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=NAMES[UNK]))
    # Whitespace separates nothing: every other character is one token.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), "isolated")]
    )
    tok.decoder = decoders.Fuse()
    specials = [name for name in vocab if name.startswith("<")]
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", BOS)]
    )
    return tok


def write_skills_tokenizer(model_dir: str | Path) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``generation_config.json`` into the
    skills base model's directory (its ``config.json`` gives the vocabulary size)."""
    model_dir = Path(model_dir)
    vocab_size = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    build_skills_tokenizer(vocab_size).save(str(model_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": NAMES[BOS],
        "eos_token": NAMES[EOS],
        "pad_token": NAMES[PAD],
        "sep_token": NAMES[SEP],
        "unk_token": NAMES[UNK],
        "chat_template": CHAT_TEMPLATE,
    }
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": BOS, "eos_token_id": EOS}
    (model_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def check_layout(lang: SkillLanguage, vocab: dict[str, int]) -> None:
    """Every token the language names has the id it was trained with (else ``ValueError``)."""
    for token_id, name in lang.token_names().items():
        if vocab.get(name) != token_id:
            raise ValueError(f"token {name!r} is id {vocab.get(name)}, trained as {token_id}")


if __name__ == "__main__":
    from jlora.train.assets import SKILLS_DIR, load_skills_assets

    assets = load_skills_assets(SKILLS_DIR)
    check_layout(assets.lang, skills_vocab(256))
    write_skills_tokenizer(assets.base_dir)
    print(f"wrote the tokenizer into {assets.base_dir}")
