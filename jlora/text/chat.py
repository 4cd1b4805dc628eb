"""Chat templates: a model's ``chat_template`` (Jinja) rendered as ``transformers`` renders it.

``transformers``' ``apply_chat_template`` compiles the template in jinja2's
``ImmutableSandboxedEnvironment`` (a template cannot reach Python objects' internals or change the
messages) with ``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension, a ``tojson``
filter that does not escape HTML, and the globals ``raise_exception`` and ``strftime_now``; it
renders with ``messages``, ``tools``, ``documents``, ``add_generation_prompt`` and the tokenizer's
special tokens (``bos_token``, ``eos_token``, ...), then tokenizes the text without adding special
tokens (the template writes them). :func:`render_chat` does the same, so that the token ids equal
``transformers``' on the same files (``tests/test_text.py`` checks against fixtures made with it).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """A chat request the template cannot render: malformed messages, or the template itself
    refused them (``raise_exception``) or failed."""


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # jinja2's own tojson escapes <, >, & for HTML; templates expect plain JSON.
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    """The compiled template (cached: a server renders the same one for every request)."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ChatTemplateError(f"the chat template does not parse: {e}") from e


def check_messages(messages) -> list[dict]:
    """``messages`` as a list of dicts, each with a string ``role``; else ``ChatTemplateError``
    naming the bad entry. ``content`` may be a string, None, or a list of parts (templates that
    take multimodal content read them); other keys pass through to the template."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence) or not messages:
        raise ChatTemplateError(f"messages must be a non-empty list of messages, got {messages!r}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ChatTemplateError(f"messages[{i}]={m!r} must be an object with role and content")
        if not isinstance(m.get("role"), str):
            raise ChatTemplateError(f"messages[{i}].role={m.get('role')!r} must be a string")
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise ChatTemplateError(
                f"messages[{i}].content={content!r} must be a string or a list of parts"
            )
        out.append(dict(m))
    return out


def render_chat(
    template: str,
    messages,
    *,
    special_tokens: Mapping[str, str],
    add_generation_prompt: bool = True,
    tools=None,
    documents=None,
    **template_kwargs,
) -> str:
    """The text of ``messages`` under ``template``, as ``apply_chat_template(messages,
    tokenize=False, add_generation_prompt=...)`` gives it. ``special_tokens``: the tokenizer's
    special tokens by name (``bos_token`` ...), passed to the template as transformers does."""
    compiled = compile_template(template)
    messages = check_messages(messages)
    try:
        return compiled.render(
            messages=messages,
            tools=tools,
            documents=documents,
            add_generation_prompt=add_generation_prompt,
            **{**special_tokens, **template_kwargs},
        )
    except jinja2.exceptions.TemplateError as e:
        raise ChatTemplateError(f"the chat template refused the messages: {e}") from e
    except (TypeError, KeyError, AttributeError, IndexError) as e:
        raise ChatTemplateError(f"the chat template failed on the messages: {e!r}") from e
