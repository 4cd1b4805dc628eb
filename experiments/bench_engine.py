"""Engine benchmark: decode step time and prefill throughput of the real engine, against the
weight-read floor and against Hugging Face transformers + PEFT ``generate`` on the same machine.

    PYTHONPATH=. python experiments/bench_engine.py --model llama-3.1-8b \
        --out experiments/results/engine.md

Decode: ``B`` requests of ``--prompt-len`` tokens are prefilled, then ``--steps`` decode steps of
the engine's own loop (``Engine.step``: scheduling, host inputs, the jitted step, reading the tokens
back) are timed, median reported; once with no adapter, once with the requests spread over three
rank-16 adapters on all seven modules. ``--backends`` names the LoRA backends to run; ``none`` is
the engine with LoRA off (``enable_lora=False``: no LoRA ops compiled), the base model's own step,
which the LoRA overhead is measured against when it is run. Prefill: 512-token prompts, as many
per step as the prefill budget holds. The HF baseline runs in a subprocess (so that torch and JAX
never share the GPU): ``LlamaForCausalLM`` with random weights in bfloat16 and three PEFT
adapters, ``generate`` on a mixed batch (``adapter_names=``), time per generated token.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

from jlora.bench.results_file import median_seconds, run_header, write_results_file

HF_ADAPTERS = ("a0", "a1", "a2")


def _engine_part(args) -> dict:
    import dataclasses

    import jax

    from jlora.bench.decode_timing import median_decode_step_ms
    from jlora.config import EngineConfig
    from jlora.engine import Engine
    from jlora.sampling_params import SamplingParams
    from models.presets import get_preset

    cfg = get_preset(args.model)
    batches = [int(b) for b in args.batches.split(",")]
    result: dict = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__}
    weight_bytes = 2 * cfg.num_params()
    result["weight_gb"] = weight_bytes / 1e9
    result["floor_ms"] = weight_bytes / args.copy_bw / 1e-3
    schedulings = args.graph_scheduling.split(",")
    for scheduling in schedulings:
        for backend in args.backends.split(","):
            label = _label(backend, scheduling)
            t0 = time.perf_counter()
            bare = backend == "none"
            engine = Engine(
                EngineConfig(
                    model=args.model,
                    load_format="dummy",
                    dtype="bfloat16",
                    lora_paths={} if bare else {n: "dummy:16" for n in HF_ADAPTERS},
                    enable_lora=not bare,
                    max_loras_per_batch=3,
                    max_lora_rank=16,
                    lora_backend="xla" if bare else backend,
                    attention_backend=args.attention_backend,
                    graph_scheduling=scheduling,
                    context_length=args.context,
                    max_running_requests=max(batches),
                    max_prefill_tokens=args.prefill_tokens,
                    decode_batch_buckets=tuple(batches),
                    prefill_token_buckets=(args.prefill_tokens,),
                    kv_len_buckets=(args.context,),
                    max_total_tokens=max(batches) * args.context,
                    overlap_schedule=False,  # the plain column; the overlapped engine below
                )
            )
            startup = time.perf_counter() - t0
            print(
                f"[{label}] start-up incl. compiling {len(engine.buckets.all_shapes())} shapes: "
                f"{startup:.1f} s",
                flush=True,
            )
            result["attention"] = engine.runner.attention_backend
            # The same compiled runner under overlap scheduling (a host-side setting).
            overlapped = Engine(
                dataclasses.replace(engine.config, overlap_schedule=True), runner=engine.runner
            )
            rounds: dict[tuple, list[float]] = {}
            for round_ in range(args.repeats):  # rounds over all cells, to see their spread
                for b in batches:
                    for lora in (False,) if bare else (False, True):
                        names = [HF_ADAPTERS[i % 3] if lora else None for i in range(b)]
                        for overlap, eng in ((False, engine), (True, overlapped)):
                            ms = median_decode_step_ms(
                                eng, names, args.steps, args.prompt_len, seed=b + round_
                            )
                            rounds.setdefault((b, lora, overlap), []).append(ms)
                            print(
                                f"[{label}] round {round_} decode B={b:4d} lora={lora!s:5} "
                                f"overlap={overlap!s:5}: {ms:.2f} ms",
                                flush=True,
                            )
            rows = {key: statistics.median(v) for key, v in rounds.items()}
            prefill = _time_prefill(engine, args, SamplingParams, adapters=not bare)
            print(f"[{label}] prefill 512-token prompts: {prefill:.0f} tok/s", flush=True)
            result[label] = {
                "startup_s": startup,
                "num_shapes": len(engine.buckets.all_shapes()),
                "decode_ms": {_cell(*key): v for key, v in rows.items()},
                "decode_ms_rounds": {_cell(*key): v for key, v in rounds.items()},
                "prefill_tok_s": prefill,
            }
            if len(schedulings) > 1:  # compared between the modes in the report
                result[label]["outputs"] = _reference_outputs(
                    engine, SamplingParams, adapters=not bare
                )
            del engine, overlapped, eng
            gc.collect()  # free its device buffers before the next engine allocates its own
    return result


def _label(backend: str, scheduling: str) -> str:
    return f"{backend}/{scheduling}"


def _cell(batch: int, lora: bool, overlap: bool) -> str:
    """Key of a decode cell in the results: ``batch/lora/overlap``, the flags as 0 or 1."""
    return f"{batch}/{int(lora)}/{int(overlap)}"


def _reference_outputs(engine, SamplingParams, adapters: bool) -> list[list[int]]:
    """Greedy tokens of a fixed mixed batch (adapters and none, different lengths), so that the
    runs of one backend under different graph scheduling modes can be checked to agree."""
    import numpy as np

    rng = np.random.default_rng(1)
    vocab = engine.model_config.vocab_size
    prompts = [rng.integers(3, vocab, 16 + 24 * i).tolist() for i in range(8)]
    names = [HF_ADAPTERS[i % 4] if adapters and i % 4 < 3 else None for i in range(8)]
    outputs = engine.generate(
        prompts, SamplingParams(max_new_tokens=12, ignore_eos=True), lora_name=names
    )
    return [list(o.token_ids) for o in outputs]


def _time_prefill(engine, args, SamplingParams, adapters: bool) -> float:
    import numpy as np

    rng = np.random.default_rng(0)
    per_step = args.prefill_tokens // 512
    params = SamplingParams(max_new_tokens=1, ignore_eos=True)
    total_tokens, elapsed = 0, 0.0
    for rep in range(4):
        rids = [
            engine.add_request(
                rng.integers(3, engine.model_config.vocab_size, 512).tolist(),
                params,
                HF_ADAPTERS[i % 3] if adapters else None,
            )
            for i in range(per_step)
        ]
        t = time.perf_counter()
        engine.step()
        dt = time.perf_counter() - t
        assert engine.last_plan.kind == "prefill" and len(engine.last_plan.prefill) == per_step
        if rep > 0:  # the first step loads the adapters into their slots
            total_tokens, elapsed = total_tokens + 512 * per_step, elapsed + dt
        while engine.has_unfinished():
            engine.step()
        del rids
    return total_tokens / elapsed


def _hf_part(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from models.presets import get_preset

    cfg = get_preset(args.model)
    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=args.context,
        rms_norm_eps=cfg.rms_norm_eps,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(hf_cfg).to(torch.bfloat16)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=targets, init_lora_weights=False)
    model = get_peft_model(model, lora, adapter_name=HF_ADAPTERS[0])
    for name in HF_ADAPTERS[1:]:
        model.add_adapter(name, lora)
    model = model.to(torch.bfloat16).eval()
    out = {"torch": torch.__version__, "device": torch.cuda.get_device_name()}
    for b in [int(x) for x in args.hf_batches.split(",")]:
        ids = torch.randint(10, 1000, (b, args.prompt_len), device="cuda")
        names = [HF_ADAPTERS[i % 3] for i in range(b)]
        timings = {}
        for new in (2, 2 + args.hf_steps):  # difference of two lengths removes the prefill

            def generate(new=new, ids=ids, names=names) -> None:
                model.generate(
                    input_ids=ids,
                    max_new_tokens=new,
                    min_new_tokens=new,
                    do_sample=False,
                    adapter_names=names,
                )
                torch.cuda.synchronize()

            timings[new] = median_seconds(generate, repeats=1, warmup=1)  # after a warm-up
        ms = 1e3 * (timings[2 + args.hf_steps] - timings[2]) / args.hf_steps
        out[f"decode_ms/{b}"] = ms
        print(f"[hf+peft] decode B={b:4d} mixed adapters: {ms:.2f} ms/token", flush=True)
    return out


def _write(args, ours: dict, hf: dict | None) -> str:
    """The run's tables and setting (the body of its Log entry)."""
    lines = [
        *([f"- torch {hf['torch']} (the HF transformers + PEFT baseline)"] if hf else []),
        f"- model: `{args.model}` preset, dummy weights, bfloat16 ({ours['weight_gb']:.1f} GB); "
        "3 adapters of rank 16 on all seven modules, 3 slots; "
        f"prompts of {args.prompt_len} tokens; decode attention: {ours.get('attention', 'xla')}",
        f"- weight-read floor of a decode step: {ours['weight_gb']:.1f} GB / "
        f"{args.copy_bw / 1e12:.1f} TB/s = {ours['floor_ms']:.2f} ms",
        "",
    ]
    backends = args.backends.split(",")
    schedulings = args.graph_scheduling.split(",")
    runs = [(b, g) for g in schedulings for b in backends]
    for backend, scheduling in runs:
        r = ours[_label(backend, scheduling)]
        lines += [
            f"Start-up of `{backend}`, graph `{scheduling}` (weights, compiling "
            f"{r['num_shapes']} step shapes): {r['startup_s']:.1f} s. Prefill of 512-token "
            f"prompts: {r['prefill_tok_s']:.0f} tokens/s.",
            "",
        ]
    if len(schedulings) > 1:
        for backend in backends:
            outs = [ours[_label(backend, g)]["outputs"] for g in schedulings]
            same = all(o == outs[0] for o in outs)
            lines += [
                f"Greedy outputs of `{backend}` (8 mixed requests, 12 tokens) under "
                f"{' and '.join(schedulings)}: {'identical' if same else 'DIFFERENT'}.",
                "",
            ]
    lines += [
        "`graph`: the step's CUDA-graph scheduling (`EngineConfig.graph_scheduling`); `plain`: "
        "`Engine.step` with the host's work between device steps; `overlap`: with "
        "`overlap_schedule=True` (the next decode step dispatched before the last one's tokens "
        "are read), on the same compiled runner in the same process. LoRA overhead: the "
        "3-adapter step against the step of the engine with no LoRA compiled under the same "
        "graph scheduling, both with overlap"
        + (
            "."
            if "none" in backends
            else " (no `none` run: against the same engine's base requests)."
        ),
        "",
        "| LoRA backend | graph | batch | base requests, plain (ms) | overlap (ms) | overlap / "
        "floor | 3 adapters, plain (ms) | overlap (ms) | LoRA overhead | HF+PEFT (ms/token) |",
        "| --- | --- |" + " ---: |" * 8,
    ]
    batches = [int(x) for x in args.batches.split(",")]
    for backend, scheduling in runs:
        ms = ours[_label(backend, scheduling)]["decode_ms"]
        bare = ours.get(_label("none", scheduling))
        for b in batches:
            base_plain, base_over = ms[_cell(b, False, False)], ms[_cell(b, False, True)]
            cells = [backend, scheduling, str(b), f"{base_plain:.2f}", f"{base_over:.2f}"]
            cells.append(f"{base_over / ours['floor_ms']:.2f}x")
            if backend == "none":
                cells += ["-", "-", "-"]
            else:
                lora_plain, lora_over = ms[_cell(b, True, False)], ms[_cell(b, True, True)]
                ref = bare["decode_ms"][_cell(b, False, True)] if bare else base_over
                cells += [
                    f"{lora_plain:.2f}",
                    f"{lora_over:.2f}",
                    f"{100 * (lora_over / ref - 1):+.0f}%",
                ]
            hf_ms = hf.get(f"decode_ms/{b}") if hf else None
            cells.append("-" if hf_ms is None or backend == "none" else f"{hf_ms:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
    if args.repeats > 1:
        lines += [
            "",
            f"Each cell above is the median of {args.repeats} rounds (each the median of "
            f"{args.steps} steps); the rounds, with overlap:",
            "",
            "| LoRA backend | graph | batch | base requests (ms) | 3 adapters (ms) |",
            "| --- | --- | ---: | --- | --- |",
        ]
        for backend, scheduling in runs:
            got = ours[_label(backend, scheduling)]["decode_ms_rounds"]
            for b in batches:
                cells = [backend, scheduling, str(b)]
                for lora in (False, True):
                    v = got.get(_cell(b, lora, True))
                    cells.append("-" if v is None else ", ".join(f"{x:.2f}" for x in v))
                lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def _claim(args, ours: dict) -> str:
    """The run's claim against the targets (base step within 1.3x of the floor at batch 64, the
    three adapters at most 15% over the base step), from the overlap cells."""
    batches = [int(x) for x in args.batches.split(",")]
    parts = []
    for label, r in ours.items():
        if not isinstance(r, dict) or "decode_ms" not in r:
            continue
        ms = r["decode_ms"]
        backend, scheduling = label.split("/", 1) if "/" in label else (label, "")
        bare = ours.get(_label("none", scheduling)) if scheduling else ours.get("none")
        if backend == "none":
            b = 64 if 64 in batches else max(batches)
            ratio = ms[_cell(b, False, True)] / ours["floor_ms"]
            parts.append(
                f"`{label}` base step {ratio:.2f}x the floor at batch {b} (target 1.3x: "
                f"{'met' if ratio <= 1.3 else 'not met'})"
            )
        else:
            over = []
            for b in batches:
                ref = (bare or r)["decode_ms"][_cell(b, False, True)]
                over.append(100 * (ms[_cell(b, True, True)] / ref - 1))
            parts.append(
                f"`{label}` LoRA overhead {min(over):+.0f}% to {max(over):+.0f}% at batch "
                f"{args.batches} (target 15%: {'met' if max(over) <= 15 else 'not met'})"
            )
    return "; ".join(parts) or "no decode cell measured"


def write_engine_results(out, args, ours: dict, hf: dict | None, body: str) -> None:
    """Write ``out``: ``## Current`` (this run's header, claim and setting) over the old one, and a
    Log entry (``--log``, default the claim) with ``body`` on top of the file's Log, kept."""
    claim = _claim(args, ours)
    current = [
        "# Engine benchmark",
        "",
        "## Current",
        "",
        *run_header().lines(),
        f"- setting: `{args.model}` preset, dummy weights, bfloat16; 3 rank-16 adapters on all "
        f"seven modules, 3 slots; prompts of {args.prompt_len} tokens; decode attention "
        f"{ours.get('attention', 'xla')}; graph `{args.graph_scheduling}`",
        f"- claim: {claim}",
        "- raw data: the tables of the Log entry below (this benchmark keeps no raw file)",
        "",
    ]
    write_results_file(out, "\n".join(current) + "\n", args.log or claim, body=body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument(
        "--backends",
        default="none,xla,pallas",
        help="comma-separated lora backends; none: the engine with LoRA off",
    )
    parser.add_argument(
        "--attention-backend", default="auto", help="decode attention: auto, xla or pallas"
    )
    parser.add_argument(
        "--graph-scheduling",
        default="concurrent",
        help="comma-separated CUDA-graph scheduling modes (EngineConfig.graph_scheduling); with "
        "several, each backend runs under each and their greedy outputs are compared",
    )
    parser.add_argument("--batches", default="1,16,64,128")
    parser.add_argument("--hf-batches", default="1,16,64")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--prefill-tokens", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds of every decode cell; the median is shown"
    )
    parser.add_argument("--hf-steps", type=int, default=16)
    parser.add_argument("--copy-bw", type=float, default=2.9e12, help="device copy ceiling, B/s")
    parser.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    parser.add_argument("--hf-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--out",
        default=None,
        help="results file: its Current rewritten, a Log entry added on top of its Log",
    )
    parser.add_argument("--log", default=None, help="the Log entry's verdict (default: the claim)")
    args = parser.parse_args()
    batches = [int(x) for x in args.batches.split(",")]
    if args.prefill_tokens // 512 > max(batches):
        # the prefill timing fills a step with 512-token prompts, and max(batches) is the
        # engine's max_running_requests
        parser.error(
            f"--prefill-tokens {args.prefill_tokens} needs {args.prefill_tokens // 512} "
            f"requests running at once, more than the largest of --batches {args.batches}"
        )
    if args.hf_only:
        print("HF_RESULT " + json.dumps(_hf_part(args)))
        return
    hf = None
    if not args.no_hf:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--hf-only"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        sys.stdout.write(proc.stdout[-4000:])
        sys.stderr.write(proc.stderr[-4000:])
        for line in proc.stdout.splitlines():
            if line.startswith("HF_RESULT "):
                hf = json.loads(line[len("HF_RESULT ") :])
    ours = _engine_part(args)
    text = _write(args, ours, hf)
    print(text)
    if args.out:
        write_engine_results(args.out, args, ours, hf, text)


if __name__ == "__main__":
    main()
