"""The ShareGPT dataset read as SGLang reads it, and ``jlora bench --backend http`` against
``jlora serve``: the same workload gives the same completed requests and tokens as in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jlora.bench.cli import build_parser, run_bench
from jlora.bench.config import BenchConfig, build_workload
from jlora.bench.driver import run_workload
from jlora.bench.metrics import compute_metrics
from jlora.bench.sharegpt import SHIPPED_SHAREGPT, read_sharegpt
from jlora.bench.workload import make_sharegpt_workload
from jlora.config import EngineConfig
from jlora.engine import Engine
from jlora.server.launch import start_background
from jlora.text import load_tokenizer

MODEL = Path(__file__).parent / "fixtures" / "text" / "llama3"  # tiny, dummy weights, a tokenizer
TOKENIZER = load_tokenizer(MODEL)


def _sharegpt(**kw):
    args = dict(
        tokenizer=TOKENIZER,
        num_prompts=20,
        request_rate=float("inf"),
        burstiness=1.0,
        context_length=256,
        lora_names=[None],
        seed=3,
    )
    args.update(kw)
    return make_sharegpt_workload(SHIPPED_SHAREGPT, **args)


def test_sharegpt_is_read_and_clipped_as_sglang_does():
    raw = json.loads(SHIPPED_SHAREGPT.read_text())
    pairs = read_sharegpt(SHIPPED_SHAREGPT)
    assert len(pairs) == sum(len(c["conversations"]) >= 2 for c in raw) < len(raw)
    by_prompt = dict(pairs)
    workload = _sharegpt()
    assert len(workload) == 20
    for w in workload:
        text = TOKENIZER.decode(w.prompt)
        assert text in by_prompt and w.prompt == TOKENIZER.encode(text)  # BOS included
        assert w.output_len == len(TOKENIZER.encode(by_prompt[text]))
        assert len(w.prompt) + w.output_len <= 256 and len(w.prompt) >= 2 and w.output_len >= 2
    assert [w.prompt for w in _sharegpt()] == [w.prompt for w in workload]  # seeded
    assert [w.prompt for w in _sharegpt(seed=4)] != [w.prompt for w in workload]
    # Long pairs are skipped (not cut) under a short context; a fixed output length.
    short = _sharegpt(context_length=96, num_prompts=5, output_len=16)
    assert all(len(w.prompt) + 16 <= 96 and w.output_len == 16 for w in short)
    with pytest.raises(ValueError, match=r"usable conversations .* num_prompts=500"):
        _sharegpt(num_prompts=500)
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        build_workload(
            BenchConfig(dataset_name="sharegpt", dataset_path=str(SHIPPED_SHAREGPT)),
            vocab_size=768,
            lora_names=[None],
            context_length=256,
        )


def test_bad_sharegpt_files_are_refused_by_name(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not ShareGPT JSON"):
        read_sharegpt(bad)
    bad.write_text(json.dumps([{"conversations": [{"from": "human"}, {"from": "gpt"}]}]))
    with pytest.raises(ValueError, match="entry 0's first turns need a 'value'"):
        read_sharegpt(bad)
    with pytest.raises(ValueError, match="is not a file"):
        read_sharegpt(tmp_path / "none.json")


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(backend="http"), "base_url=None goes with backend='http'"),
        (dict(base_url="http://x"), "base_url='http://x' goes with backend='http'"),
        (dict(backend="http", base_url="http://x", compare=("a", "b")), "cannot be run"),
        (dict(dataset_name="sharegpt"), "dataset_path=None goes with"),
    ],
)
def test_bench_http_flags_refused_by_name(kw, needle):
    with pytest.raises(ValueError, match=needle):
        BenchConfig(**kw)


def test_http_bench_against_jlora_serve_equals_in_process():
    config = EngineConfig(
        model=str(MODEL),
        load_format="dummy",
        dtype="float32",
        lora_paths={"a": "dummy:4", "b": "dummy:8"},
        max_loras_per_batch=2,
        max_lora_rank=8,
        context_length=256,
        page_size=8,
        max_running_requests=8,
        max_prefill_tokens=256,
        prefill_token_buckets=(256,),
        decode_batch_buckets=(8,),
        kv_len_buckets=(256,),
    )
    bench = dict(
        dataset_name="sharegpt",
        dataset_path=str(SHIPPED_SHAREGPT),
        num_prompts=12,
        sharegpt_output_len=8,
        disable_tqdm=True,
    )
    engine = Engine(config)
    workload = build_workload(
        BenchConfig(**bench),
        vocab_size=768,
        lora_names=["a", "b", None],
        context_length=256,
        tokenizer=TOKENIZER,
    )
    local = run_workload(engine, workload, progress=False)
    # The server takes over the compiled engine (idle now), so the test compiles once.
    server = start_background(config, make_engine=lambda: engine)
    try:
        server.wait_ready()
        args = build_parser().parse_args(
            ["--model", str(MODEL), "--backend", "http", "--base-url", server.base_url]
            + ["--lora-name", "a", "b"]
        )
        assert args.backend == "http"
        out = run_bench(
            config,
            BenchConfig(
                backend="http", base_url=server.base_url, lora_name=("a", "b", "nope"), **bench
            ),
            quiet=True,
        )
    finally:
        server.stop()
    remote = out["results"]["run"].outputs
    local_m = compute_metrics(local.outputs, local.duration)
    remote_m = out["metrics"]["run"]
    ok = [o for o in remote if o.error is None]
    failed = [o for o in remote if o.error is not None]
    # The adapter the server lacks fails with the server's 404 message; the rest complete.
    assert failed and all(o.lora_name == "nope" and "HTTP 404" in o.error for o in failed)
    assert remote_m["completed"] == len(ok) == 12 - len(failed)
    assert local_m["completed"] == 12 and all(len(o.token_ids) == 8 for o in local.outputs)
    assert all(len(o.token_ids) == 8 and len(o.token_times) == 8 for o in ok)
    assert all(o.ttft > 0 and o.e2e >= o.ttft for o in ok)
