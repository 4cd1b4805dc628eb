"""Text in, text out: the model's tokenizer, incremental detokenization, stop strings and chat
templates.

:class:`Tokenizer` reads a Hugging Face model directory's ``tokenizer.json`` (with the Rust
``tokenizers`` library; ``transformers`` is not needed), ``tokenizer_config.json`` (special tokens,
the chat template) and ``generation_config.json`` (EOS ids). :class:`IncrementalDetokenizer` turns
a request's tokens into text one token at a time, holding back what is not text yet (a partial
UTF-8 character, a possible start of a stop string). :func:`render_chat` renders a chat template as
``transformers``' ``apply_chat_template`` does.
"""

from jlora.text.chat import ChatTemplateError, render_chat
from jlora.text.detokenizer import IncrementalDetokenizer
from jlora.text.tokenizer import Tokenizer, load_tokenizer

__all__ = [
    "ChatTemplateError",
    "IncrementalDetokenizer",
    "Tokenizer",
    "load_tokenizer",
    "render_chat",
]
