"""Tensor parallelism, measured: the Llama-3.1-8B preset at tp 1 and 2 (decode step time, the seed
workload's throughput), the Llama-3.1-70B preset with dummy weights at tp 2 (more than one H200
holds with its KV cache) serving the seed workload with the drainer; and the CPU checks (outputs
equal to tp 1 on fake CPU devices, collectives in the compiled steps of the real presets).

Each ``--parts`` entry adds its results to the ``--json`` file; ``--out`` writes the markdown from
everything the file holds. One part per command keeps each within a 10-minute limit:

    # any machine (CPU, 8 fake devices; ~3 min)
    PYTHONPATH=. python experiments/tensor_parallel.py --parts cpu \
        --json experiments/results/tensor_parallel/runs.json \
        --out experiments/results/tensor_parallel.md
    # nvidia-h200-x2 (NCCL_NVLS_ENABLE=0 stays set: NVLink multicast off)
    PYTHONPATH=. python experiments/tensor_parallel.py --parts 8b-tp1 8b-tp2 --json $OUT/tp.json
    PYTHONPATH=. python experiments/tensor_parallel.py --parts 70b-tp2 --json $OUT/tp.json

The seed workload is ``experiments/seed_repro.py``'s: six dummy adapters of ranks 8, 16, 16, 32,
64, 8 on all seven modules, 3 slots, 6 loaded, 200 prompts with input and output lengths uniform
in [1, 512], Poisson arrivals (``--rate``, default 4/s), here with SGLang's drainer at 3 s
(``--drainer``). Decode step time: the engine's own ``Engine.step`` (scheduling, inputs, the jitted
step, reading the tokens back), median over ``--steps`` steps of ``B`` requests spread over three
adapters.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from jlora.bench.results_file import run_header, write_results_file

ROOT = Path(__file__).resolve().parent.parent
RANKS = (8, 16, 16, 32, 64, 8)  # the seed's adapters (experiments/seed_repro.py)
GPU_PARTS = {
    "8b-tp1": ("llama-3.1-8b", 1),
    "8b-tp2": ("llama-3.1-8b", 2),
    "70b-tp2": ("llama-3.1-70b", 2),
}
HLO_PRESETS = (("llama-3.1-8b", 2), ("llama-3.1-70b", 2), ("llama-3.1-70b", 8))


def engine_config(model: str, tp: int, drainer: str, context: int = 1024):
    """The seed reproduction's engine (experiments/seed_repro.py) at ``tp_size=tp``."""
    from jlora.config import EngineConfig

    policy, _, threshold = drainer.partition("@")
    return EngineConfig(
        model=model,
        load_format="dummy",
        dtype="bfloat16",
        tp_size=tp,
        lora_paths={f"adapter{i}": f"dummy:{r}" for i, r in enumerate(RANKS)},
        max_loaded_loras=6,
        max_loras_per_batch=3,
        max_lora_rank=64,
        lora_drain_wait_threshold=0.0 if policy == "off" else float(threshold),
        lora_drain_policy="sglang" if policy == "off" else policy,
        context_length=context,
        max_running_requests=64,
        max_total_tokens=65536,
        max_prefill_tokens=2048,
        decode_batch_buckets=(16, 64),
        prefill_token_buckets=(512, 2048),
        kv_len_buckets=(context,),
    )


# ---------------------------------------------------------------------------------- GPU parts
def _time_decode(engine, batch: int, steps: int) -> float:
    from jlora.bench.decode_timing import median_decode_step_ms

    names = [f"adapter{i % 3}" for i in range(batch)]
    return median_decode_step_ms(engine, names, steps, seed=batch)


def gpu_part(name: str, args) -> dict:
    import jax

    from jlora.bench.driver import run_workload
    from jlora.bench.metrics import compute_metrics
    from jlora.bench.workload import make_random_workload
    from jlora.engine import Engine
    from jlora.tensor_parallel import count_collectives

    model, tp = GPU_PARTS[name]
    model = args.model or model
    config = engine_config(model, tp, args.drainer)
    t = time.perf_counter()
    engine = Engine(config)
    startup = time.perf_counter() - t
    devices = jax.local_devices()[:tp]
    out: dict = {
        "model": model,
        "tp": tp,
        "device": devices[0].device_kind,
        "jax": jax.__version__,
        "date": datetime.date.today().isoformat(),
        "startup_s": startup,
        "weight_bytes": 2 * engine.model_config.num_params(),
        "gib_in_use": [(d.memory_stats() or {}).get("bytes_in_use", 0) / 2**30 for d in devices],
        "gib_limit": [(d.memory_stats() or {}).get("bytes_limit", 0) / 2**30 for d in devices],
        "kv_pages": engine.pages.num_pages,
        "nccl_nvls_enable": os.environ.get("NCCL_NVLS_ENABLE"),
    }
    print(f"[{name}] start-up {startup:.0f} s, GiB in use {out['gib_in_use']}", flush=True)
    out["collectives"] = {
        " ".join(map(str, s)): count_collectives(engine.runner.compiled_text(s))
        for s in engine.buckets.all_shapes()
    }
    out["decode_ms"] = {}
    for b in args.batches:
        out["decode_ms"][str(b)] = _time_decode(engine, b, args.steps)
        print(f"[{name}] decode B={b}: {out['decode_ms'][str(b)]:.2f} ms", flush=True)
    workload = make_random_workload(
        num_prompts=args.num_prompts,
        request_rate=args.rate,
        input_len=512,
        output_len=512,
        range_ratio=0.0,
        vocab_size=engine.model_config.vocab_size,
        lora_names=[f"adapter{i}" for i in range(len(RANKS))],
        seed=1,
    )
    result = run_workload(engine, workload, progress=False)
    metrics = compute_metrics(result.outputs, result.duration)
    out["workload"] = {
        "num_prompts": args.num_prompts,
        "rate": args.rate,
        "drainer": args.drainer,
        "slot_loads": engine.adapters.slot_loads,
        **{
            k: metrics[k]
            for k in (
                "completed",
                "duration",
                "output_throughput",
                "total_throughput",
                "mean_ttft_ms",
                "median_ttft_ms",
                "p99_ttft_ms",
                "mean_e2e_latency_ms",
                "p99_e2e_latency_ms",
                "median_itl_ms",
            )
        },
    }
    print(f"[{name}] seed workload: {json.dumps(out['workload'])}", flush=True)
    return out


# ---------------------------------------------------------------------------------- CPU part
def abstract_step_collectives(model: str, tp: int, batch: int = 64, context: int = 1024) -> dict:
    """Collectives in the compiled decode step of a full-size preset, lowered from shapes alone
    (no weights are made), on ``tp`` fake CPU devices."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding

    from jlora.adapters.slots import GROUP_SHARDING, SlotBuffers
    from jlora.kernels.types import make_lora_batch
    from jlora.runner.attention import DecodeAttention
    from jlora.runner.kv_cache import KVCache
    from jlora.runner.model_runner import model_step
    from jlora.tensor_parallel import KV_SHARDING, count_collectives, make_mesh
    from models.llama import LayerParams, LlamaParams
    from models.presets import get_preset
    from models.weights import FIELD_SHAPES, FIELD_SHARDING

    cfg, mesh = get_preset(model), make_mesh(tp)

    def spec(shape, dtype, partition):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, partition))

    def field(name):
        return spec(FIELD_SHAPES[name](cfg), jnp.bfloat16, FIELD_SHARDING[name])

    layer_fields = ("input_norm", "w_qkv", "w_o", "post_attn_norm", "w_gate_up", "w_down")
    params = LlamaParams(
        embed=field("embed"),
        layers=tuple(
            LayerParams(**{f: field(f) for f in layer_fields}) for _ in range(cfg.num_layers)
        ),
        final_norm=field("final_norm"),
        lm_head=field("lm_head"),
    )
    slots = jax.eval_shape(lambda: SlotBuffers(cfg, 3, 64, "bfloat16").layers)
    lora = tuple(
        {
            g: jax.tree.map(lambda s, p: spec(s.shape, s.dtype, p), group, GROUP_SHARDING[g])
            for g, group in layer.items()
        }
        for layer in slots
    )
    pages = context // 16
    kv_shape = (cfg.num_layers, batch * pages + 1, 16, cfg.num_kv_heads, cfg.head_dim)
    kv = KVCache(*(spec(kv_shape, jnp.bfloat16, KV_SHARDING),) * 2)
    z = np.zeros(batch, np.int32)
    page_table = np.zeros((batch, pages), np.int32)
    attention = DecodeAttention(slot_mapping=z, page_table=page_table, seq_lens=z)
    lora_batch = make_lora_batch(z - 1, np.zeros(3, np.int32))
    args = (params, lora, kv, z, z, attention, lora_batch)
    lowered = model_step.lower(*args, cfg=cfg, lora_backend="xla", mesh=mesh)
    t = time.perf_counter()
    text = lowered.compile().as_text()
    return {
        "layers": cfg.num_layers,
        "counts": count_collectives(text),
        "compile_s": time.perf_counter() - t,
    }


def _max_diff(a: list, b: list) -> float:
    import numpy as np

    pairs = zip(a, b, strict=True)
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in pairs)


def cpu_part(args) -> dict:
    import jax

    out: dict = {
        **run_header().as_dict(),
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    }
    from jlora.bench.results_file import REPO_ROOT
    from jlora.distributed import run_workers

    # The checks of tests/test_tensor_parallel.py, run by name in processes of their own.
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        eq = run_workers("tests.tp_worker", "equivalence", Path(tmp), REPO_ROOT)[0]
        out["equivalence_s"] = time.perf_counter() - t
        t = time.perf_counter()
        dist = run_workers("tests.tp_worker", "distributed", Path(tmp), REPO_ROOT)
        out["distributed_s"] = time.perf_counter() - t
    ref = eq["xla/tp1"]
    out["equivalence"] = {}
    for key in ("xla/tp2", "xla/tp4", "pallas/tp2"):
        got = eq[key]
        diff = _max_diff(got["scores"], ref["scores"])
        out["equivalence"][key] = {
            "tokens_equal": got["tokens"] == ref["tokens"],
            "num_tokens": sum(len(t) for t in ref["tokens"]),
            "max_logit_diff": diff,
            "slot_loads": got["slot_loads"],
            "collectives": got.get("collectives"),
        }
    out["hf_parity_tp2"] = eq["hf_parity"]
    out["distributed"] = [
        {
            "process": r["process"],
            "devices": f"{r['local_devices']} of {r['devices']}",
            "tokens_equal": r["workload"]["tokens"] == ref["tokens"],
            "max_logit_diff": _max_diff(r["workload"]["scores"], ref["scores"]),
            "divergence_detected": "diverged" in r["divergence"],
        }
        for r in dist
    ]
    out["presets"] = {}
    for model, tp in HLO_PRESETS:
        r = abstract_step_collectives(model, tp)
        out["presets"][f"{model}/tp{tp}"] = r
        print(f"[cpu] {model} tp={tp} decode step: {r}", flush=True)
    return out


# ---------------------------------------------------------------------------------- report
def comm_bytes(model: str, tp: int, batch: int) -> tuple[float, float]:
    """MB per decode step each device sends and receives in ring collectives: the 2L all-reduces
    of [B, d] bf16, and the all-gather of [B, V] f32 logits."""
    from models.presets import get_preset

    cfg = get_preset(model)
    ring = 2 * (tp - 1) / tp
    allreduce = 2 * cfg.num_layers * batch * cfg.hidden_size * 2 * ring
    allgather = batch * cfg.vocab_size * 4 * (tp - 1) / tp
    return allreduce / 1e6, allgather / 1e6


DECISIONS = """\
## Layout and decisions

- **What is split** (`models/weights.py` `FIELD_SHARDING`, `jlora/adapters/slots.py`
  `GROUP_SHARDING`, `jlora/tensor_parallel.py` `KV_SHARDING`): `w_qkv`/`b_qkv` and `w_gate_up`
  column-parallel, `w_o` and `w_down` row-parallel, the untied `lm_head` split on the vocabulary;
  embedding, norms and `b_o` replicated. LoRA: the column-parallel groups' `b` split on its output
  dim (`a` replicated), the row-parallel groups' `a` split on its input dim (`b` replicated). KV
  cache `[L, pages, page_size, Hkv/tp, D]` per device.
- **Fused layouts per shard** (`models.llama.fused_column_order`): `w_qkv` is stored
  `[d, tp x (q|k|v)/tp]`, shard `j`'s q heads, k heads, v heads side by side (likewise `gate|up`,
  `b_qkv` and the LoRA `b` of those groups), at load time (HF table, dummy init, slot writes). An
  even split of the output dim then gives each shard a plain fused layout of its own heads, and the
  forward runs unchanged per shard over a per-shard config (`Hq/tp`, `Hkv/tp`, `I/tp`). With
  `tp_size=1` the order is the identity and the code path is the one of before (no mesh, no
  `shard_map`). KV heads, heads, MLP width and (untied head) vocabulary must divide by `tp_size`;
  the engine refuses otherwise, naming the value.
- **Per shard, explicitly**: each jitted step's body runs under `jax.shard_map`, so the Pallas
  kernels and the XLA reference run on the shard's slices unchanged, and the only communication is
  the collectives the forward writes: `psum` after o and after down, `all_gather` of the logits.
- **Row-parallel LoRA** (o, down): the shard's partial shrink `x_j A_j^T` is expanded with the
  replicated `B` and added to the partial base matmul, and the sum is all-reduced once: one
  all-reduce per module instead of two (shrink, then base), at the cost of every shard doing the
  whole expand (`T x R x d`).
- **Embedding replicated, head split**: a split embedding would cost one more all-reduce of
  `[T, d]` per step to save `V x d / tp` bytes; the head's matmul is the largest of a decode step,
  so splitting it halves its read for one all-gather of the sampled rows' logits.
- **Several hosts**: every process runs the same program and the same deterministic scheduler
  (`jlora/distributed.py`); process 0's clock is broadcast so that time-based decisions (the
  drainer) agree, and every step's host inputs and every slot load are checked to be equal across
  processes (a CRC32 gathered per step), so a divergence fails loudly instead of serving from
  inconsistent shards. Chosen over a plan broadcast from process 0 because the scheduler is already
  a pure function of (requests, sampled tokens, clock), the tokens are replicated, and no
  follower-only code path or per-step plan serialization is needed; requests must reach every
  process (true of the benchmark and `generate`; an online server would broadcast them).
"""


def render(data: dict, command: str) -> str:
    lines = [
        "# Tensor parallelism",
        "",
        "Megatron-style tensor parallelism over a `tp` mesh axis (`EngineConfig.tp_size`, "
        "`--tp-size`); the layout and the communication are written down in "
        "`jlora/tensor_parallel.py`. Per layer: q|k|v and gate|up column-parallel (no "
        "communication), o and down row-parallel with their LoRA delta folded into the partial "
        "sums, one all-reduce of `[T, d]` each; per step one all-gather of the sampled rows' "
        "logits (vocabulary-split head). So **2 L all-reduces + 1 all-gather per step**.",
        "",
        f"- rendered by: `{command}`",
        "",
        DECISIONS,
    ]
    cpu = data.get("cpu")
    if cpu:
        lines += [
            "## CPU checks",
            "",
            f"- date: {cpu['date']}; jax {cpu['jax']}; python {cpu['python']}; "
            f"{cpu['devices']} (`XLA_FLAGS=--xla_force_host_platform_device_count=8`)",
            "- command: `PYTHONPATH=. python experiments/tensor_parallel.py --parts cpu` "
            "(the same checks run in `tests/test_tensor_parallel.py`)",
            "",
            "Outputs against `tp_size=1`, float32, a Llama of 8 heads / 4 KV heads / 2 layers "
            "with dummy weights; 4 dummy adapters (ranks 8, 4, 8, 2) through 2 slots (adapter "
            "swaps), pages of 4 tokens, chunked prefill of 8 tokens; `Engine.score` of 5 prompts "
            "(mixed adapters and none) and `Engine.generate` of 10 requests (greedy and seeded "
            "sampling):",
            "",
            "| run | tokens equal to tp 1 | max abs logit diff | slot loads | collectives "
            "(decode step) |",
            "| --- | --- | ---: | ---: | --- |",
        ]
        for key, r in cpu["equivalence"].items():
            coll = r["collectives"]["decode"] if r["collectives"] else "-"
            lines.append(
                f"| {key} | {r['tokens_equal']} ({r['num_tokens']} tokens) | "
                f"{r['max_logit_diff']:.1e} | {r['slot_loads']} | {coll} |"
            )
        hf = cpu["hf_parity_tp2"]
        lines += [
            "",
            "Two processes through `jax.distributed` on localhost (gloo CPU collectives), 2 fake "
            "devices each, `tp_size=4` over both, the same workload, against one process at "
            "`tp_size=1`:",
            "",
            "| process | devices | tokens equal | max abs logit diff | divergence detected |",
            "| ---: | --- | --- | ---: | --- |",
        ]
        for r in cpu["distributed"]:
            lines.append(
                f"| {r['process']} | {r['devices']} | {r['tokens_equal']} | "
                f"{r['max_logit_diff']:.1e} | {r['divergence_detected']} |"
            )
        lines += [
            "",
            "(divergence: the two processes were then made to load different adapters into one "
            "slot; both must refuse.)",
            "",
            "Hugging Face checkpoints loaded split over 2 devices against transformers + PEFT "
            "(max error / max |logit|): "
            + ", ".join(f"{k} {v:.1e}" for k, v in hf.items())
            + " (qwen2: q/k/v biases and a tied head).",
            "",
            "Collectives in the compiled decode step (batch 64, 1024-token contexts) of the full "
            "presets, lowered from shapes alone on fake CPU devices:",
            "",
            "| preset | tp | layers | all-reduce | all-gather | other | compile (s) |",
            "| --- | ---: | ---: | ---: | ---: | --- | ---: |",
        ]
        for key, r in cpu["presets"].items():
            model, tp = key.split("/tp")
            c = dict(r["counts"])
            ar, ag = c.pop("all-reduce", 0), c.pop("all-gather", 0)
            lines.append(
                f"| {model} | {tp} | {r['layers']} | {ar} (= 2 x {r['layers']}) | {ag} | "
                f"{c or 'none'} | {r['compile_s']:.0f} |"
            )
        lines += [
            "",
            "Bytes each device moves per decode step at batch 64 (ring collectives): "
            + "; ".join(
                f"{m} tp {tp}: {a:.0f} MB in all-reduces + {g:.0f} MB in the logits all-gather"
                for m, tp in (("llama-3.1-8b", 2), ("llama-3.1-70b", 2))
                for a, g in [comm_bytes(m, tp, 64)]
            )
            + ".",
            "",
        ]
    gpu = {k: data[k] for k in GPU_PARTS if k in data}
    lines += ["## GPU", ""]
    if not gpu:
        lines += [
            "**Not run**: `nvidia-h200-x2` was not lent to the session that wrote this. On it, "
            "one part per command (to stay inside a 10-minute command limit; the 70B start-up "
            "time is not known yet), leaving `NCCL_NVLS_ENABLE=0` set, and copying the returned "
            "files into `experiments/results/` after each:",
            "",
            "```",
            *(
                "cp experiments/results/tensor_parallel/runs.json $OUT/ && PYTHONPATH=. python "
                f"experiments/tensor_parallel.py --parts {part} --json "
                "$OUT/runs.json --out $OUT/tensor_parallel.md"
                for part in GPU_PARTS
            ),
            "```",
            "",
        ]
    else:
        lines += _gpu_lines(gpu)
    lines += ["## What is left", ""]
    if set(gpu) != set(GPU_PARTS):
        lines.append(
            "- The GPU run above (8B at tp 1 and 2: decode step time and the seed workload's "
            "throughput; 70B with dummy weights at tp 2 serving the seed workload with the "
            "drainer)."
        )
    lines += [
        "- The logits all-gather moves `B x V` float32 per step (16 MB per device at batch 64 with "
        "the Llama 3 vocabulary, against 34 MB for the 64 all-reduces of the 8B model at tp 2): "
        "gathering each shard's top-k candidates instead would be exact for greedy and top-k "
        "rows.",
        "- Requests that reach one process only (an online server) would have to be broadcast to "
        "every process; the benchmark and `generate` add the same requests everywhere.",
        "- A `tp_size` above the number of KV heads (KV heads replicated) is refused.",
        "",
    ]
    return "\n".join(lines)


def claim(data: dict) -> str:
    """What the parts in ``data`` show: the CPU checks' token equality, and the GPU parts run."""
    parts = []
    cpu = data.get("cpu")
    if cpu:
        runs = list(cpu["equivalence"].values()) + list(cpu["distributed"])
        equal = all(r["tokens_equal"] is True for r in runs)
        worst = max(r["max_logit_diff"] for r in runs)
        parts.append(
            f"CPU checks: tokens {'equal to' if equal else 'DIFFERENT from'} tp 1's in "
            f"{len(runs)} runs (tp > 1 and two processes; max abs logit difference {worst:.1e})"
        )
    gpu = [k for k in GPU_PARTS if k in data]
    parts.append(f"GPU parts run: {', '.join(gpu)}" if gpu else "GPU parts not run")
    return "; ".join(parts)


def write_tp_results(out, data: dict, command: str, verdict: str | None, raw: str) -> None:
    """Write ``out``: ``## Current`` (the renderer's header, the claim of :func:`claim`) over the
    old one, and a Log entry (``verdict``, default the claim) with the whole rendering, its
    sections one level down, on top of the file's Log, which is kept."""
    text = claim(data)
    dates = ", ".join(
        f"{k} {v['date']}" for k, v in data.items() if isinstance(v, dict) and "date" in v
    )
    current = [
        "# Tensor parallelism",
        "",
        "## Current",
        "",
        *run_header(command=command).lines(),
        f"- rendered from the parts' raw data; each part's own date and device are in the Log "
        f"entry ({dates or 'no part'})",
        f"- claim: {text}",
        f"- raw data: `{raw}`",
        "",
    ]
    body = render(data, command).split("\n", 1)[1]  # without the title
    body = "\n".join("##" + line if line.startswith("## ") else line for line in body.split("\n"))
    write_results_file(out, "\n".join(current) + "\n", verdict or text, body=body)


def _gpu_lines(gpu: dict) -> list[str]:
    lines = []
    first = next(iter(gpu.values()))
    lines += [
        f"- date: {first['date']}; device: {first['device']}; jax {first['jax']}; "
        f"NCCL_NVLS_ENABLE={first['nccl_nvls_enable'] or 'unset'}"
        + (" (NVLink multicast off)" if first["nccl_nvls_enable"] == "0" else ""),
        "- engine: the seed reproduction's (dummy weights, bfloat16, 6 adapters of ranks "
        f"{', '.join(map(str, RANKS))}, 3 slots, 64 running, 65536 KV tokens, context 1024)",
        "",
        "| run | model | weights (GB) | GiB in use per GPU | start-up (s) | "
        "collectives (largest decode step) | "
        + " | ".join(f"decode B={b} (ms)" for b in first["decode_ms"])
        + " | seed workload output tok/s | mean / P99 TTFT (ms) | completed |",
        "| --- | --- | ---: | --- | ---: | --- |"
        + " ---: |" * len(first["decode_ms"])
        + " ---: | ---: | ---: |",
    ]
    for name, r in gpu.items():
        w = r["workload"]
        decode = " | ".join(f"{v:.2f}" for v in r["decode_ms"].values())
        coll = [v for k, v in r["collectives"].items() if k.startswith("decode")][-1]
        lines.append(
            f"| {name} | {r['model']} | {r['weight_bytes'] / 1e9:.1f} | "
            f"{', '.join(f'{g:.1f}' for g in r['gib_in_use'])} | {r['startup_s']:.0f} | {coll} | "
            f"{decode} | {w['output_throughput']:.0f} | {w['mean_ttft_ms']:.0f} / "
            f"{w['p99_ttft_ms']:.0f} | {w['completed']} of {w['num_prompts']} |"
        )
    for name, r in gpu.items():
        limit = r["gib_limit"][0] * 2**30
        if limit and r["weight_bytes"] > limit:
            lines.append(
                f"\n{name}: {r['weight_bytes'] / 2**30:.0f} GiB of weights, above the "
                f"{r['gib_limit'][0]:.0f} GiB one device gives JAX: no single GPU holds it."
            )
    lines += [
        "",
        f"Seed workload: {first['workload']['num_prompts']} prompts at "
        f"{first['workload']['rate']:g} req/s, drainer `{first['workload']['drainer']}`.",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="*", default=[], choices=["cpu", *GPU_PARTS])
    parser.add_argument("--json", required=True, help="results file, read and extended")
    parser.add_argument(
        "--out",
        default=None,
        help="results file: its Current rewritten, a Log entry added on top of its Log",
    )
    parser.add_argument("--log", default=None, help="the Log entry's verdict (default: the claim)")
    parser.add_argument("--drainer", default="sglang@3", help="off, or POLICY@SECONDS")
    parser.add_argument("--rate", type=float, default=4.0)
    parser.add_argument("--num-prompts", type=int, default=200)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--model",
        default=None,
        help="run the GPU parts on this preset instead (e.g. tiny, to try "
        "the script on fake CPU devices)",
    )
    args = parser.parse_args()
    if "cpu" in args.parts:
        if len(args.parts) > 1:
            parser.error("run --parts cpu on its own (it needs fake CPU devices)")
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        os.environ["JAX_PLATFORMS"] = "cpu"
    path = Path(args.json)
    data = json.loads(path.read_text()) if path.is_file() else {}
    for part in args.parts:
        data[part] = cpu_part(args) if part == "cpu" else gpu_part(part, args)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n")
    command = "PYTHONPATH=. python experiments/tensor_parallel.py " + " ".join(sys.argv[1:])
    if args.out:
        write_tp_results(args.out, data, command, args.log, args.json)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
