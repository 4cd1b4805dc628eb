"""The HTTP side: FastAPI routes of the OpenAI API, SGLang's adapter endpoints, health, metrics.

Routes never call the engine: they check the body, resolve the adapter from the served names,
tokenize (and render the chat template) here, and hand the token ids to the engine thread
(:class:`~jlora.server.loop.EngineLoop`). Errors are OpenAI's JSON shape: 400 for a malformed
body or a bad parameter (named in ``param`` and the message), 404 for an unknown model or adapter,
503 until the engine is built and warmed up.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from jlora.config import EngineConfig
from jlora.engine import Engine
from jlora.sampling_params import SamplingParams
from jlora.scheduler.request import RequestOutput
from jlora.server.config import ServerConfig
from jlora.server.loop import EngineLoop, RequestStream, ServerError
from jlora.server.metrics import ServerMetrics
from jlora.server.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    LoadLoraRequest,
    UnloadLoraRequest,
    error_response,
    param_of,
)
from jlora.text import ChatTemplateError

# The engine's finish reasons as OpenAI's (an abort reaches no client: it went away).
FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "abort", "error": "error"}


class Server:
    """The state the routes share: the engine loop, the served names, the metrics."""

    def __init__(self, engine_config: EngineConfig, config: ServerConfig, make_engine=None):
        self.engine_config = engine_config
        self.config = config
        self.model_name = config.served_model_name or engine_config.model
        self.metrics = ServerMetrics()
        self.loop = EngineLoop(
            make_engine or (lambda: Engine(engine_config)),
            on_finish=self.metrics.on_finish,
            on_step=self.metrics.on_step,
        )
        self.adapters: dict[str, str] = dict(engine_config.lora_paths)
        """Served adapters by name (kept here, updated after each load and unload)."""
        self.tokenizer = None
        self.context_length = 0

    # ------------------------------------------------------------------ readiness
    def check_ready(self) -> None:
        if not self.loop.ready.is_set():
            raise APIError(503, "the engine is starting (compiling its steps); retry shortly")
        if self.loop.error is not None:
            raise APIError(503, self.loop.error)
        if self.tokenizer is None and self.loop.engine is not None:
            self.tokenizer = self.loop.engine.tokenizer
            self.context_length = self.loop.engine.context_length

    # ------------------------------------------------------------------ requests
    def adapter_of(self, body) -> str | None:
        """The adapter a request asks for: SGLang's ``lora_path``, else vLLM's ``model`` naming
        an adapter; the base model's name (or path) asks for none. 404 for any other name."""
        if body.lora_path is not None:
            if body.lora_path not in self.adapters:
                raise APIError(
                    404, f"unknown adapter {body.lora_path!r}{self._known()}", "lora_path"
                )
            return body.lora_path
        if body.model in (self.model_name, self.engine_config.model):
            return None
        if body.model in self.adapters:
            return body.model
        raise APIError(404, f"the model {body.model!r} does not exist{self._known()}", "model")

    def _known(self) -> str:
        names = ", ".join([self.model_name, *sorted(self.adapters)])
        return f" (served: {names})"

    def sampling_params(self, body, prompt_len: int, max_tokens: int | None) -> SamplingParams:
        if max_tokens is None:  # as vLLM: the rest of the context
            max_tokens = self.context_length - prompt_len
            if max_tokens < 1:
                raise APIError(
                    400,
                    f"the prompt has {prompt_len} tokens, the whole context "
                    f"({self.context_length}): no room to generate",
                    "messages" if isinstance(body, ChatCompletionRequest) else "prompt",
                )
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or ())
        try:
            return SamplingParams(
                max_new_tokens=max_tokens,
                temperature=body.temperature,
                top_p=body.top_p,
                top_k=body.top_k,
                seed=body.seed,
                stop_token_ids=tuple(body.stop_token_ids or ()),
                ignore_eos=body.ignore_eos,
                stop=tuple(stop),
                detokenize=self.tokenizer is not None,
            )
        except ValueError as e:
            message = str(e).replace("max_new_tokens", "max_tokens")
            raise APIError(400, message, param_of(str(e))) from e

    def completion_prompt(self, body: CompletionRequest) -> list[int]:
        prompt = body.single_prompt()
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise APIError(
                    400,
                    f"prompt is text but the model {self.model_name!r} has no tokenizer "
                    "(no tokenizer.json): send token ids",
                    "prompt",
                )
            return self.tokenizer.encode(prompt)
        return prompt

    def chat_prompt(self, body: ChatCompletionRequest) -> list[int]:
        if self.tokenizer is None:
            raise APIError(
                400,
                f"the model {self.model_name!r} has no tokenizer (no tokenizer.json): chat needs "
                "one; use /v1/completions with token ids",
                "messages",
            )
        try:
            return self.tokenizer.apply_chat_template(
                body.message_dicts(), add_generation_prompt=body.add_generation_prompt
            )
        except (ChatTemplateError, ValueError) as e:
            raise APIError(400, str(e), "messages") from e

    async def start(self, body, prompt_ids: list[int], max_tokens) -> RequestStream:
        """Hand a checked request to the engine; a refusal (prompt over the context, a token id
        outside the vocabulary, ...) is a 400 naming it."""
        lora = self.adapter_of(body)
        params = self.sampling_params(body, len(prompt_ids), max_tokens)
        stream = self.loop.submit(prompt_ids, params, lora, time.perf_counter())
        first = await stream.queue.get()
        if isinstance(first, ServerError):
            raise APIError(503, str(first))
        if isinstance(first, Exception):
            message = str(first).replace("max_new_tokens", "max_tokens")
            raise APIError(400, message, param_of(str(first)) or "prompt")
        return stream  # ``first`` was the engine's acceptance (the rid)


async def _events(server: Server, stream: RequestStream) -> AsyncIterator[tuple[str, object]]:
    """``("delta", text)`` for each step's tokens (the text may be empty: a partial character, a
    special token; one chunk per token lets a client time every token), then ``("end",
    RequestOutput)``. When the consumer stops early (its client went away) the request is
    aborted."""
    try:
        while True:
            item = await stream.queue.get()
            if isinstance(item, RequestOutput):
                yield "end", item
                return
            if any(event.token_id is not None for event in item):
                yield "delta", "".join(event.text for event in item)
            if item[-1].finished is not None:
                yield "end", item[-1].finished
                return
    finally:
        if stream.output is None:
            server.loop.abort(stream)


async def _gather(server: Server, stream: RequestStream) -> tuple[str, RequestOutput]:
    """A request that is not streamed: its pieces of text joined, and its output."""
    pieces, out = [], None
    async for kind, value in _events(server, stream):
        if kind == "delta":
            pieces.append(value)
        else:
            out = value
    return "".join(pieces), out


def _usage(prompt_len: int, out: RequestOutput) -> dict:
    n = len(out.token_ids)
    return {"prompt_tokens": prompt_len, "completion_tokens": n, "total_tokens": prompt_len + n}


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'), ensure_ascii=False)}\n\n"


def _finish_reason(out: RequestOutput) -> str:
    if out.finish_reason == "error":
        raise APIError(500, f"the request failed in the engine: {out.error}")
    return FINISH_REASONS.get(out.finish_reason or "", out.finish_reason or "stop")


def build_app(server: Server) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.loop.start(asyncio.get_running_loop())
        yield
        server.loop.stop()

    app = FastAPI(title="jlora", lifespan=lifespan)
    app.state.server = server

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = next((x for x in loc if not x.isdigit()), None) if loc else None
        where = ".".join(loc) or "body"
        message = f"{where}: {first.get('msg', 'invalid')}"
        if first.get("type") == "json_invalid":
            message = f"the body is not valid JSON: {first.get('ctx', {}).get('error', '')}"
            param = None
        elif "input" in first and loc:
            message += f" (got {json.dumps(first['input'], default=str)[:80]})"
        return error_response(400, message, param)

    @app.get("/health")
    async def health():
        server.check_ready()
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models():
        server.check_ready()
        created = int(time.time())
        base = {"id": server.model_name, "object": "model", "created": created}
        data = [{**base, "owned_by": "jlora", "root": server.engine_config.model, "parent": None}]
        for name, path in sorted(server.adapters.items()):
            data.append(
                {
                    "id": name,
                    "object": "model",
                    "created": created,
                    "owned_by": "jlora",
                    "root": path,
                    "parent": server.model_name,
                }
            )
        return {"object": "list", "data": data}

    @app.get("/metrics")
    async def metrics():
        if server.loop.engine is not None and server.loop.error is None:
            await asyncio.wrap_future(server.loop.call(server.metrics.refresh))
        return PlainTextResponse(
            generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    @app.post("/load_lora_adapter")
    async def load_lora_adapter(body: LoadLoraRequest):
        server.check_ready()
        if body.lora_name in server.adapters or body.lora_name == server.model_name:
            raise APIError(400, f"adapter {body.lora_name!r} is already loaded", "lora_name")

        def load(engine: Engine) -> None:
            engine.load_lora_adapter(body.lora_name, body.lora_path, pinned=body.pinned)

        try:
            await asyncio.wrap_future(server.loop.call(load))
        except ValueError as e:
            raise APIError(400, str(e), "lora_path") from e
        except (OSError, KeyError) as e:
            message = f"cannot load adapter {body.lora_name!r}: {e}"
            raise APIError(400, message, "lora_path") from e
        server.adapters[body.lora_name] = body.lora_path
        return {"success": True, "message": f"loaded adapter {body.lora_name!r}"}

    @app.post("/unload_lora_adapter")
    async def unload_lora_adapter(body: UnloadLoraRequest):
        server.check_ready()
        if body.lora_name not in server.adapters:
            raise APIError(404, f"unknown adapter {body.lora_name!r}{server._known()}", "lora_name")
        try:
            await asyncio.wrap_future(
                server.loop.call(lambda engine: engine.unload_lora_adapter(body.lora_name))
            )
        except ValueError as e:
            raise APIError(400, str(e), "lora_name") from e
        del server.adapters[body.lora_name]
        return {"success": True, "message": f"unloaded adapter {body.lora_name!r}"}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        server.check_ready()
        body.refuse_unsupported()
        prompt = server.completion_prompt(body)
        stream = await server.start(body, prompt, body.max_tokens)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": created, "model": body.model}

        def choice(text: str, finish: str | None) -> dict:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

        if not body.stream:
            joined, out = await _gather(server, stream)
            text = out.text if out.text is not None else joined
            return {
                **head,
                "choices": [choice(text, _finish_reason(out))],
                "usage": _usage(len(prompt), out),
            }

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def sse() -> AsyncIterator[str]:
            async for kind, value in _events(server, stream):
                if kind == "delta":
                    yield _sse({**head, "choices": [choice(value, None)]})
                    continue
                yield _sse({**head, "choices": [choice("", _sse_finish(value))]})
                if include_usage:
                    yield _sse({**head, "choices": [], "usage": _usage(len(prompt), value)})
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        server.check_ready()
        body.refuse_unsupported()
        prompt = server.chat_prompt(body)
        max_tokens = body.max_completion_tokens or body.max_tokens
        stream = await server.start(body, prompt, max_tokens)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if not body.stream:
            joined, out = await _gather(server, stream)
            message = {"role": "assistant", "content": out.text or joined}
            return {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": body.model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": _finish_reason(out),
                    }
                ],
                "usage": _usage(len(prompt), out),
            }
        head = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
        }
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(delta: dict, finish: str | None) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _sse({**head, "choices": [choice]})

        async def sse() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""}, None)
            async for kind, value in _events(server, stream):
                if kind == "delta":
                    yield chunk({"content": value}, None)
                    continue
                yield chunk({}, _sse_finish(value))
                if include_usage:
                    yield _sse({**head, "choices": [], "usage": _usage(len(prompt), value)})
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")

    return app


def _sse_finish(out: RequestOutput) -> str:
    """A stream's finish reason; an engine error mid-stream is reported as ``error`` (the status,
    200, was sent with the first byte)."""
    return FINISH_REASONS.get(out.finish_reason or "", out.finish_reason or "stop")
