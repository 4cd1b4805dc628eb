"""``jlora serve`` through the real ``openai`` client, on the skills model (one server for the
module): completions and chat, streamed and not, equal ``Engine.generate``; adapters per request
in one batch; 64 concurrent streams; a client gone mid-stream frees its request; bad requests get
OpenAI-shaped errors and the server keeps serving."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import openai
import pytest

from jlora.config import EngineConfig
from jlora.engine import Engine
from jlora.sampling_params import SamplingParams
from jlora.server.cli import build_parser
from jlora.server.config import ServerConfig
from jlora.server.launch import start_background
from jlora.train.assets import load_skills_assets

ASSETS = load_skills_assets()
SKILLS = ["reverse", "sort", "shift", "count"]
PROMPTS = ["cafba", "hgabe", "abc", "dddca", "fhe"]


def _config() -> EngineConfig:
    return EngineConfig(
        **ASSETS.engine_kwargs(
            context_length=256,
            page_size=8,
            max_running_requests=16,
            max_prefill_tokens=128,
            prefill_token_buckets=(128,),
            decode_batch_buckets=(16,),
            kv_len_buckets=(256,),
        )
    )


@pytest.fixture(scope="module")
def server():
    bg = start_background(_config())
    bg.wait_ready()
    yield bg
    bg.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)


def _on_engine(server, fn):
    return server.server.loop.call(fn).result(timeout=60)


def _expected(server, prompts, names, max_tokens=12):
    """What Engine.generate gives (greedy), run on the server's own engine between steps."""
    params = SamplingParams(max_new_tokens=max_tokens)
    outs = _on_engine(server, lambda e: e.generate(prompts, params, names))
    for o in outs:
        _on_engine(server, lambda e, rid=o.rid: e.release(rid))
    return outs


def _idle(server) -> dict:
    def state(e: Engine) -> dict:
        return {
            "free_pages": e.pages.num_free,
            "has_work": e.scheduler.has_work(),
            "requests": len(e.requests),
            "slot_users": sorted(str(n) for n in e.scheduler.running_adapters()),
        }

    return _on_engine(server, state)


def test_completions_and_chat_equal_engine_generate(server, client):
    name = server.server.model_name
    for adapter in [None, *SKILLS]:
        model = name if adapter is None else adapter
        texts = [f"{p}<sep>" for p in PROMPTS]
        [*want] = _expected(server, texts, adapter)
        for text, expected in zip(texts, want, strict=True):
            got = client.completions.create(model=model, prompt=text, max_tokens=12, temperature=0)
            assert got.choices[0].text == expected.text
            assert got.choices[0].finish_reason == "stop"
            assert got.usage.completion_tokens == len(expected.token_ids)
            pieces = client.completions.create(
                model=model, prompt=text, max_tokens=12, temperature=0, stream=True
            )
            assert "".join(c.choices[0].text for c in pieces) == expected.text
        chat = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": PROMPTS[0]}], temperature=0
        )
        assert chat.choices[0].message.content == want[0].text
        streamed = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": PROMPTS[0]}],
            temperature=0,
            stream=True,
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == want[0].text
    # Each adapter shows its skill (the manifest's example is cafba).
    example = ASSETS.manifest["example"]["completions"]
    assert _expected(server, ["cafba<sep>"], "reverse")[0].token_ids == example["reverse"]


def test_adapters_per_request_in_one_batch(server, client):
    # SGLang's lora_path and vLLM's model, mixed, sent together: one batch of several adapters.
    names = [None, *SKILLS] * 3
    texts = [f"{PROMPTS[i % len(PROMPTS)]}<sep>" for i in range(len(names))]
    want = _expected(server, texts, names)
    steps_before = server.server.loop.num_steps
    results: list = [None] * len(names)

    def one(i: int) -> None:
        kwargs = dict(prompt=texts[i], max_tokens=12, temperature=0)
        if names[i] is None:
            r = client.completions.create(model=server.server.model_name, **kwargs)
        elif i % 2:
            r = client.completions.create(model=names[i], **kwargs)
        else:
            r = client.completions.create(model="any", extra_body={"lora_path": names[i]}, **kwargs)
        results[i] = r.choices[0].text

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [w.text for w in want]
    # Fewer steps than requests x tokens: they ran batched.
    assert server.server.loop.num_steps - steps_before < sum(len(w.token_ids) for w in want)


def test_64_concurrent_streams_over_mixed_adapters_all_complete(server):
    names = [None, *SKILLS]
    want = {
        (n, p): w.text
        for n in names
        for p, w in zip(PROMPTS, _expected(server, [f"{p}<sep>" for p in PROMPTS], n), strict=True)
    }

    async def run() -> list:
        aclient = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0)

        async def one(i: int):
            name, prompt = names[i % len(names)], PROMPTS[i % len(PROMPTS)]
            stream = await aclient.chat.completions.create(
                model=name or server.server.model_name,
                messages=[{"role": "user", "content": prompt}],
                temperature=0,
                stream=True,
            )
            text, finish = "", None
            async for chunk in stream:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            return (name, prompt), text, finish

        try:
            return await asyncio.gather(*(one(i) for i in range(64)))
        finally:
            await aclient.close()

    results = asyncio.run(run())
    assert len(results) == 64
    assert all(finish == "stop" for _, _, finish in results)
    assert all(text == want[key] for key, text, _ in results)
    assert _idle(server)["requests"] == 0


def test_a_client_gone_mid_stream_frees_its_request(server):
    idle = _idle(server)
    assert not idle["has_work"] and idle["requests"] == 0
    body = {
        "model": "reverse",
        "prompt": "cafba<sep>",
        "max_tokens": 240,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", server.base_url + "/v1/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            got = [next(lines) for _ in range(6)]  # a few tokens in, then hang up
            assert any(line.startswith("data: ") for line in got)
    deadline = time.monotonic() + 10
    while _idle(server) != idle and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _idle(server) == idle  # pages, slot and the request itself are back
    metrics = httpx.get(server.base_url + "/metrics").text
    assert 'jlora_requests_total{adapter="reverse",finish_reason="abort"} 1.0' in metrics


BAD = [
    (b'{"model": "reverse", "prompt": ', 400, None, "not valid JSON"),
    (b'["a list"]', 400, None, "valid dictionary"),
    (dict(model="nope", prompt="ab"), 404, "model", "'nope' does not exist"),
    (dict(model="x", prompt="ab", lora_path="nope"), 404, "lora_path", "unknown adapter 'nope'"),
    (dict(model="reverse", prompt="ab", max_tokens=-1), 400, "max_tokens", "greater than"),
    (dict(model="reverse", prompt="ab", max_tokens="5"), 400, "max_tokens", "valid integer"),
    (dict(model="reverse", prompt="ab", temperature="hot"), 400, "temperature", "valid number"),
    (dict(model="reverse", prompt="ab", top_p=0), 400, "top_p", "top_p=0.0 must be in"),
    (dict(model="reverse", prompt="ab", stop=[3]), 400, "stop", "valid string"),
    (dict(model="reverse", prompt="a" * 300), 400, "prompt", "longer than the context 256"),
    (dict(model="reverse", prompt="ab", max_tokens=300), 400, "max_tokens", "beyond the context"),
    (dict(model="reverse", prompt=[1, 999]), 400, "prompt", "token id 999 outside"),
    (dict(model="reverse", prompt=["a", "b"]), 400, "prompt", "one prompt per request"),
    (dict(model="reverse", prompt="ab", n=2), 400, "n", "only n=1"),
    (dict(model="reverse", prompt="ab", logprobs=2), 400, "logprobs", "log-probabilities"),
    (dict(model="reverse"), 400, "prompt", "Field required"),
]


@pytest.mark.parametrize("body, status, param, needle", BAD, ids=lambda v: str(v)[:40])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(
    server, client, body, status, param, needle
):
    url = server.base_url + "/v1/completions"
    if isinstance(body, bytes):
        r = httpx.post(url, content=body, headers={"content-type": "application/json"})
    else:
        r = httpx.post(url, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"] and error["param"] == param and error["code"] == status
    ok = client.completions.create(model="reverse", prompt="abc<sep>", max_tokens=8, temperature=0)
    assert ok.choices[0].text == "cba"


def test_chat_errors(server, client):
    with pytest.raises(openai.BadRequestError, match="one user message"):
        client.chat.completions.create(
            model="sort",
            messages=[{"role": "user", "content": "ab"}, {"role": "user", "content": "cd"}],
        )
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="sort", messages=[])
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": "ab"}])


def test_models_health_metrics_and_adapter_endpoints(server, client):
    ids = [m.id for m in client.models.list().data]
    assert ids == [server.server.model_name, *sorted(SKILLS)]
    assert httpx.get(server.base_url + "/health").status_code == 200
    load = {"lora_name": "backwards", "lora_path": str(ASSETS.adapters["reverse"])}
    r = httpx.post(server.base_url + "/load_lora_adapter", json=load)
    assert r.status_code == 200 and r.json()["success"]
    assert "backwards" in [m.id for m in client.models.list().data]
    r = httpx.post(server.base_url + "/load_lora_adapter", json=load)
    assert r.status_code == 400 and "already loaded" in r.json()["error"]["message"]
    bad = {"lora_name": "x", "lora_path": "/no/such/dir"}
    r = httpx.post(server.base_url + "/load_lora_adapter", json=bad)
    assert r.status_code == 400 and "/no/such/dir" in r.json()["error"]["message"]
    out = client.completions.create(model="backwards", prompt="abc<sep>", temperature=0)
    assert out.choices[0].text == "cba"
    r = httpx.post(server.base_url + "/unload_lora_adapter", json={"lora_name": "backwards"})
    assert r.status_code == 200
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="backwards", prompt="abc<sep>")
    r = httpx.post(server.base_url + "/unload_lora_adapter", json={"lora_name": "backwards"})
    assert r.status_code == 404
    text = httpx.get(server.base_url + "/metrics").text
    for name in (
        "jlora_requests_total",
        "jlora_generation_tokens_total",
        "jlora_time_to_first_token_seconds_bucket",
        "jlora_e2e_request_latency_seconds_bucket",
        "jlora_num_requests_waiting",
        "jlora_num_requests_running",
        'jlora_adapter_slot_loads_total{adapter="backwards"}',
    ):
        assert name in text


def test_503_until_the_engine_is_up_and_with_why_if_it_failed():
    go = threading.Event()

    def make_engine():
        go.wait(30)
        raise ValueError("no weights here")

    bg = start_background(EngineConfig(model="tiny"), make_engine=make_engine)
    try:
        r = httpx.post(bg.base_url + "/v1/completions", json={"model": "tiny", "prompt": [1]})
        assert r.status_code == 503 and "starting" in r.json()["error"]["message"]
        assert httpx.get(bg.base_url + "/health").status_code == 503
        go.set()
        bg.server.loop.ready.wait(10)
        r = httpx.post(bg.base_url + "/v1/completions", json={"model": "tiny", "prompt": [1]})
        assert r.status_code == 503 and "no weights here" in r.json()["error"]["message"]
    finally:
        bg.stop()


def test_serve_flags_come_from_the_configs():
    args = build_parser().parse_args(
        ["--model", "tiny", "--lora-paths", "a=dummy:4", "--port", "0", "--served-model-name", "t"]
    )
    from jlora.flags import dataclass_from_args

    assert dataclass_from_args(EngineConfig, args).lora_paths == {"a": "dummy:4"}
    assert dataclass_from_args(ServerConfig, args) == ServerConfig(port=0, served_model_name="t")
    with pytest.raises(ValueError, match="port=70000"):
        ServerConfig(port=70000)
