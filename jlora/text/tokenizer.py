"""A model directory's tokenizer: ``tokenizer.json`` through the ``tokenizers`` library, with the
special tokens and chat template of ``tokenizer_config.json`` and the EOS ids of
``generation_config.json``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import tokenizers

from jlora.text.chat import render_chat

TOKENIZER_FILE = "tokenizer.json"
# The special tokens transformers passes to a chat template (its ``special_tokens_map``).
SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


class Tokenizer:
    """Text to token ids and back for one model (see :func:`load_tokenizer`)."""

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        special_tokens: dict[str, str] | None = None,
        chat_template: str | None = None,
        eos_token_ids: Sequence[int] = (),
        path: str = "",
    ):
        self.tokenizer = tokenizer
        self.special_tokens: dict[str, str] = dict(special_tokens or {})
        """Special tokens by transformers' name (``bos_token``: ``"<s>"`` ...), for templates."""
        self.chat_template = chat_template
        """The Jinja chat template (None: the model has none; chat requests are refused)."""
        self.eos_token_ids: tuple[int, ...] = tuple(eos_token_ids)
        """Token ids that end generation: ``generation_config.json``'s ``eos_token_id`` (one or a
        list) and the id of ``tokenizer_config.json``'s ``eos_token``."""
        self.path = path
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        """One past the largest id the tokenizer can produce or read."""
        ids = [tokenizer.token_to_id(t) for t in tokenizer.get_vocab(with_added_tokens=True)]
        self.max_token_id = max(ids) if ids else -1

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` adds what the tokenizer's post-processor
        adds (e.g. BOS), as ``transformers``' ``tokenizer(text)`` does by default."""
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list]:
        """:meth:`encode` of many texts at once (in parallel, in Rust)."""
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [e.ids for e in encodings]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of ``ids`` (special tokens left out by default, as servers do)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self, messages, add_generation_prompt: bool = True, tokenize: bool = True, **kwargs
    ) -> list[int] | str:
        """The prompt of a conversation, as ``transformers``' method of the same name gives it:
        the template rendered (:func:`~jlora.text.chat.render_chat`) and tokenized without
        adding special tokens. No template: ``ValueError``."""
        if self.chat_template is None:
            raise ValueError(
                f"the tokenizer at {self.path!r} has no chat_template in tokenizer_config.json; "
                "send a plain prompt (completions) instead"
            )
        text = render_chat(
            self.chat_template,
            messages,
            special_tokens=self.special_tokens,
            add_generation_prompt=add_generation_prompt,
            **kwargs,
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def _token_text(value) -> str | None:
    """A special token as ``tokenizer_config.json`` writes it: a string, or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _chat_template(config: dict, directory: Path) -> str | None:
    """The default chat template: ``tokenizer_config.json``'s ``chat_template`` (a string, or a
    list of named templates of which ``default`` is taken, as transformers does), else
    ``chat_template.jinja`` beside it (transformers >= 4.43 writes it there)."""
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is None and (directory / "chat_template.jinja").is_file():
        template = (directory / "chat_template.jinja").read_text()
    if template is not None and not isinstance(template, str):
        raise ValueError(f"chat_template in {directory} must be a string, got {template!r}")
    return template


def load_tokenizer(directory: str | Path) -> Tokenizer | None:
    """The tokenizer of a model directory, or None when it has no ``tokenizer.json`` (a preset, or
    a directory of weights only: the engine then takes token ids only). A file that is there but
    cannot be read raises ``ValueError`` naming it."""
    directory = Path(directory)
    path = directory / TOKENIZER_FILE
    if not path.is_file():
        return None
    try:
        tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - the Rust library raises its own Exception type
        raise ValueError(f"{path} is not a tokenizers tokenizer.json: {e}") from e
    config = _read_json(directory / "tokenizer_config.json")
    special = {
        name: text
        for name in SPECIAL_TOKEN_NAMES
        if (text := _token_text(config.get(name))) is not None
    }
    extra = config.get("additional_special_tokens")
    if isinstance(extra, list):
        special["additional_special_tokens"] = [t for t in map(_token_text, extra) if t]
    eos: list[int] = []
    generation = _read_json(directory / "generation_config.json").get("eos_token_id")
    for value in generation if isinstance(generation, list) else [generation]:
        if isinstance(value, int) and not isinstance(value, bool):
            eos.append(value)
    eos_text = special.get("eos_token")
    if eos_text is not None and tok.token_to_id(eos_text) is not None:
        eos.append(tok.token_to_id(eos_text))
    return Tokenizer(
        tok,
        special_tokens=special,
        chat_template=_chat_template(config, directory),
        eos_token_ids=tuple(dict.fromkeys(eos)),
        path=str(directory),
    )
