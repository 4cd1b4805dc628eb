"""Drive any OpenAI-compatible server through a workload (``jlora bench --backend http``).

Each request is sent at its arrival time (from the run's start, on this process's clock) to
``/v1/completions`` as token ids, streamed, with ``max_tokens`` its output length, ``ignore_eos``
(vLLM's and SGLang's extension: lengths stay exact), greedy, and ``stream_options.include_usage``
for the server's count of the tokens. The adapter goes as vLLM takes it (``"model": name``) and as
SGLang does (``"lora_path": name``); the base model's name is the server's first model in
``/v1/models`` unless given. The client's times are the request's: arrival (when it was due),
each streamed chunk, the last one. A request the server refuses, or that fails, is counted as
failed with the server's message.

The outputs are :class:`~jlora.scheduler.request.RequestOutput`, so the in-process benchmark's
metrics and reports apply unchanged. Their token ids are not known over the API: ``token_ids``
holds one -1 per generated token (the server's usage count, else one per chunk).
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
from tqdm import tqdm

from jlora.bench.driver import RunResult
from jlora.bench.workload import WorkloadRequest
from jlora.scheduler.request import RequestOutput


def served_models(base_url: str) -> list[str]:
    """The ids of ``/v1/models``, the base model first (as OpenAI-compatible servers list it)."""
    try:
        response = httpx.get(base_url.rstrip("/") + "/v1/models", timeout=30)
    except httpx.HTTPError as e:
        raise ValueError(f"base_url={base_url!r} does not answer: {e}") from e
    if response.status_code != 200:
        raise ValueError(
            f"base_url={base_url!r}: /v1/models answered {response.status_code}: "
            f"{response.text[:200]}"
        )
    return [m["id"] for m in response.json()["data"]]


async def _one(
    client: httpx.AsyncClient, url: str, w: WorkloadRequest, model: str, start: float
) -> RequestOutput:
    due = start + w.arrival
    delay = due - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    payload = {
        "model": w.lora_name or model,
        "prompt": w.prompt,
        "max_tokens": w.output_len,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if w.lora_name is not None:
        payload["lora_path"] = w.lora_name
    times: list[float] = []
    usage, finish, error = None, None, None
    try:
        async with client.stream("POST", url, json=payload) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                error = f"HTTP {response.status_code}: {body[:300]}"
            else:
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or ():
                        if choice.get("finish_reason") is not None:
                            finish = choice["finish_reason"]
                            if choice.get("text"):
                                times.append(time.perf_counter())
                        else:
                            times.append(time.perf_counter())
    except httpx.HTTPError as e:
        error = f"{type(e).__name__}: {e}"
    end = time.perf_counter()
    if error is None and finish in (None, "error", "abort"):
        error = f"the stream ended with finish_reason={finish!r}"
    count = (usage or {}).get("completion_tokens", len(times))
    return RequestOutput(
        rid=w.index,
        lora_name=w.lora_name,
        prompt_len=len(w.prompt),
        token_ids=[-1] * (count if error is None else 0),
        finish_reason=finish,
        error=error,
        arrival_time=due,
        first_token_time=times[0] if times and error is None else None,
        token_times=times,
        finish_time=end,
    )


async def _run(base_url, workload, model, progress, desc) -> RunResult:
    url = base_url.rstrip("/") + "/v1/completions"
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    bar = tqdm(total=len(workload), desc=desc, disable=not progress, leave=False)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:
        start = time.perf_counter()

        async def tracked(w):
            out = await _one(client, url, w, model, start)
            bar.update(1)
            return out

        outputs = await asyncio.gather(*(tracked(w) for w in workload))
        duration = time.perf_counter() - start
    bar.close()
    return RunResult(outputs=list(outputs), duration=duration, start=start)


def run_http_workload(
    base_url: str,
    workload: list[WorkloadRequest],
    *,
    model: str | None = None,
    progress: bool = True,
    desc: str = "requests",
) -> RunResult:
    """Send the workload to the server at ``base_url``; outputs in workload order."""
    # Adapters are not checked against /v1/models (not every server lists them): a request for
    # one the server lacks fails with the server's message, and the report counts it.
    model = model or served_models(base_url)[0]
    return asyncio.run(_run(base_url, workload, model, progress, desc))
