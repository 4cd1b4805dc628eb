"""The OpenAI API's request bodies (the fields jlora serves) and its error shape.

Bodies are checked strictly: a string where a number goes is refused, not converted. Fields of the
API that the engine cannot honour (``n`` > 1, ``logprobs``, penalties, ``echo``) are refused with
400 naming them rather than ignored; fields it has no use for (``user``, ...) are ignored.
Extensions, as vLLM and SGLang take them: ``top_k``, ``ignore_eos``, ``stop_token_ids``, and
``lora_path`` (SGLang's name for the adapter).
"""

from __future__ import annotations

import re

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}
ERROR_TYPES[503] = "ServiceUnavailableError"


class APIError(Exception):
    """An error answered as OpenAI answers it: ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.param)


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "APIError"),
            "param": param,
            "code": status,
        }
    }
    return JSONResponse(body, status_code=status)


# The engine names the SamplingParams field; the API names it as OpenAI does.
_API_NAMES = {
    "max_new_tokens": "max_tokens",
    "prompt": "prompt",
    "stop_token_ids": "stop_token_ids",
}


def param_of(message: str) -> str | None:
    """The request field an engine refusal names: the first ``field=value`` of a sampling field
    in it (``prompt of 9 tokens plus max_new_tokens=300 ...`` is fixed by lowering max_tokens),
    else ``prompt`` when it is about the prompt."""
    for match in re.finditer(r"\b(\w+)=", message):
        name = _API_NAMES.get(match.group(1), match.group(1))
        if name in _SAMPLING_FIELDS:
            return name
    return "prompt" if message.startswith("prompt") else None


_SAMPLING_FIELDS = {"temperature", "top_p", "top_k", "seed", "stop", "stop_token_ids", "max_tokens"}
NO_LOGPROBS = "logprobs: the engine does not return log-probabilities"


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class _Sampling(BaseModel):
    """What completions and chat completions share."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    lora_path: str | None = None

    def refuse_unsupported(self) -> None:
        if self.n != 1:
            raise APIError(400, f"n={self.n}: only n=1 is served (one choice per request)", "n")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0:
                raise APIError(400, f"{name}={getattr(self, name)}: penalties are not served", name)


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for completions
    logprobs: int | None = None
    echo: bool = False

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.logprobs is not None:
            raise APIError(
                400, "logprobs: the engine does not return log-probabilities", "logprobs"
            )
        if self.echo:
            raise APIError(400, "echo=true is not served", "echo")

    def single_prompt(self) -> str | list[int]:
        """The one prompt (a list of one prompt is taken too; a batch is refused)."""
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], str | list):
            if len(p) != 1:
                raise APIError(
                    400,
                    f"prompt holds {len(p)} prompts: one prompt per request is served",
                    "prompt",
                )
            p = p[0]
        if not p:
            raise APIError(400, "prompt is empty", "prompt")
        return p


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    role: str
    content: str | list[dict] | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = None
    add_generation_prompt: bool = True

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.logprobs or self.top_logprobs:
            raise APIError(
                400, "logprobs: the engine does not return log-probabilities", "logprobs"
            )

    def message_dicts(self) -> list[dict]:
        """The messages as a template reads them; text parts of a content list are joined."""
        out = []
        for i, m in enumerate(self.messages):
            d = m.model_dump(exclude_none=False)
            if isinstance(m.content, list):
                texts = []
                for part in m.content:
                    if part.get("type") != "text" or not isinstance(part.get("text"), str):
                        raise APIError(
                            400,
                            f"messages[{i}].content: only text parts are served, got {part!r}",
                            "messages",
                        )
                    texts.append(part["text"])
                d["content"] = "\n".join(texts)
            out.append(d)
        return out


class LoadLoraRequest(BaseModel):
    """SGLang's ``/load_lora_adapter`` body."""

    model_config = ConfigDict(strict=True, extra="ignore")
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)
    pinned: bool = False


class UnloadLoraRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    lora_name: str = Field(min_length=1)
