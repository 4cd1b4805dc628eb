"""Where a decode step's time goes: device-only step time against the engine's full step, with a
large and a small KV cache (a step that copied the cache would slow with its size), with each
decode attention backend (``xla`` gathers the page table's pages, ``pallas`` reads each sequence's
own pages in place), the sampler alone, and XLA's own estimate of the bytes the step touches.

``--host-trace``: a trace of a few ``Engine.step`` calls, the host's events by total time (the
jitted step's dispatch, PJRT's execute, thunks run on the host), for where the host waits.
``--overlap``: the engine with ``overlap_schedule=True``. ``--adapter-tokens``: the device-only
steps with LoRA ops route their tokens over three rank-16 adapters (else no token has one).

``--trace``: a device trace of a few device-only steps (``jax.profiler``), read back in-process
(``jax.profiler.ProfileData``): the GPU's busy time per step against the step's wall time (the
difference is idle time between kernels), the kernels per step, and where the busy time goes, by
kernel name.

    PYTHONPATH=. python experiments/profile_decode.py --model llama-3.1-8b [--trace]
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import gc
import pstats
import re
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from jlora.bench.profiling import host_events, profile_calls
from jlora.bench.results_file import median_seconds
from jlora.config import GRAPH_SCHEDULING, EngineConfig
from jlora.engine import Engine
from jlora.runner import model_runner as mr
from jlora.runner.attention import DecodeAttention
from jlora.runner.sampling import SamplingInputs, sample
from jlora.sampling_params import SamplingParams

ADAPTERS = ("a0", "a1", "a2")


def _median_ms(fn, reps: int = 20) -> float:
    return 1e3 * median_seconds(fn, repeats=reps, warmup=1)


def _kernel_events(data) -> list[tuple[str, float, float]]:
    """(name, start_ns, duration_ns) of every event on the GPU planes' stream lines (kernels and
    copies as the device ran them)."""
    events = []
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            if "stream" not in line.name.lower():
                continue
            events += [(e.name, e.start_ns, e.duration_ns) for e in line.events]
    return events


def _host_api_calls(data) -> dict[str, int]:
    """Counts of the host's CUDA API calls in the trace (kernel launches against graph launches
    tell whether a step ran as CUDA graphs), by call name."""
    counts: dict[str, int] = collections.Counter()
    for plane in data.planes:
        if not plane.name.startswith("/host"):
            continue
        for line in plane.lines:
            for e in line.events:
                if e.name.startswith(("cu", "cuda")) and "Launch" in e.name:
                    counts[e.name] += 1
    return counts


def _busy_ns(events: list[tuple[str, float, float]]) -> float:
    """Length of the union of the events' intervals (kernels on several streams may overlap)."""
    busy, end = 0.0, -1.0
    for _, start, dur in sorted(events, key=lambda e: e[1]):
        stop = start + dur
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    return busy


def _kernel_family(name: str) -> str:
    """A kernel name with its numeric instance suffixes removed (``loop_add_fusion_12`` and
    ``loop_add_fusion_3`` are one family), so that a family sums one role over the layers."""
    return re.sub(r"[._]\d+\b", "", name)[:90]


def _hlo_op_names(hlo_text: str) -> dict[str, str]:
    """Kernel name -> the jax op name (with its named scopes) of each top-level instruction of a
    compiled module. Trace kernel names are the instruction names with ``.`` as ``_``."""
    names = {}
    pattern = r"^\s*(?:ROOT )?%(\S+) = .*?metadata=\{op_name=\"([^\"]+)\""
    for m in re.finditer(pattern, hlo_text, re.M):
        names[m.group(1).replace(".", "_")] = m.group(2)
    return names


def _short_op(op_name: str) -> str:
    """``jit(model_step)/jit(main)/gate_up/dot_general`` -> ``gate_up/dot_general``."""
    parts = [p for p in op_name.split("/") if not p.startswith("jit(")]
    return "/".join(parts[-3:])


def _trace(step, steps: int, label: str, hlo_text: str = "") -> None:
    """Trace ``steps`` calls of ``step`` and print where the GPU's time goes; with the step's
    compiled HLO, each kernel family also names the ops (named scopes) its kernels come from."""
    step()
    wall_ms, data = profile_calls(step, steps)
    events = _kernel_events(data) if data else []
    launches = _host_api_calls(data) if data else {}
    if not events:
        print(f"[{label}] the trace holds no GPU stream events")
        return
    span_ms = (max(s + d for _, s, d in events) - min(s for _, s, _ in events)) / 1e6 / steps
    busy_ms = _busy_ns(events) / 1e6 / steps
    print(
        f"[{label}] per step: wall {wall_ms:.2f} ms (traced), GPU span {span_ms:.2f} ms, "
        f"GPU busy {busy_ms:.2f} ms, idle between kernels {span_ms - busy_ms:.2f} ms, "
        f"{len(events) / steps:.0f} kernels"
    )
    print(
        "  host launch calls per step: "
        + (", ".join(f"{k} {v / steps:.0f}" for k, v in sorted(launches.items())) or "none seen")
    )
    op_names = _hlo_op_names(hlo_text)
    by_family: dict[str, list[float]] = collections.defaultdict(list)
    by_op: dict[str, list[float]] = collections.defaultdict(list)
    for name, _, dur in events:
        by_family[_kernel_family(name)].append(dur)
        by_op[_short_op(op_names.get(name, "?" + _kernel_family(name)))].append(dur)
    for title, groups in (("by kernel family", by_family), ("by op (named scope)", by_op)):
        print(f"  {title}:")
        for key, durs in sorted(groups.items(), key=lambda kv: -sum(kv[1]))[:30]:
            print(
                f"    {sum(durs) / 1e6 / steps:6.3f} ms/step {len(durs) / steps:6.0f} x "
                f"{statistics.median(durs) / 1e3:7.1f} us median  {key}"
            )


def _measure(
    engine: Engine,
    b: int,
    context: int,
    attention_backend: str,
    trace_steps: int = 0,
    cost: bool = True,
    lora_backend: str = "xla",
    adapter_tokens: bool = False,
) -> float:
    """Device-only step time; ``lora_backend="none"`` runs the step with no LoRA at all."""
    r = engine.runner
    kv_gb = (r.kv.k.nbytes + r.kv.v.nbytes) / 1e9
    pages = context // engine.config.page_size
    rng = np.random.default_rng(0)
    page_table = rng.integers(1, engine.pages.num_pages, (b, pages)).astype(np.int32)
    att = DecodeAttention(
        slot_mapping=jnp.asarray(page_table[:, 8] * engine.config.page_size),
        page_table=jnp.asarray(page_table),
        seq_lens=jnp.full(b, 129, jnp.int32),
        backend=attention_backend,
    )
    tokens = jnp.asarray(rng.integers(0, 1000, b).astype(np.int32))
    positions = jnp.full(b, 128, jnp.int32)
    if lora_backend == "none":  # the bare model: no LoRA ops in the step at all
        lora, lb = None, None
    else:  # the slots' LoRA ops run, but no token has an adapter (a base-model batch)
        slots = np.full(b, -1)
        if adapter_tokens:  # the three adapters in their slots, tokens grouped by slot
            for slot, name in enumerate(ADAPTERS):
                if r.slots.occupant[slot] != name:
                    r.load_lora(slot, engine.adapters.get(name))
            slots = np.sort(np.arange(b) % len(ADAPTERS))
        lora, lb = r.slots.layers, r._lora_batch(slots)

    inputs = (tokens, positions, att, lb)
    static = {"cfg": r.cfg, "lora_backend": "xla" if lora is None else lora_backend, "mesh": r.mesh}
    # The step compiled as the engine's runner compiles it (its CUDA-graph scheduling mode).
    model_step = jax.jit(
        mr.model_step,
        static_argnames=tuple(static),
        donate_argnames=("kv",),
        compiler_options=mr.graph_compiler_options(engine.config.graph_scheduling) or None,
    )

    def step():
        out, _, r.kv = model_step(r.params, lora, r.kv, *inputs, **static)
        out.block_until_ready()

    device_ms = _median_ms(step)
    if trace_steps:
        hlo = model_step.lower(r.params, lora, r.kv, *inputs, **static).compile().as_text()
        _trace(step, trace_steps, f"B={b} attention={attention_backend} lora={lora_backend}", hlo)
    gb = float("nan")
    if cost:  # compiles the step again: skipped under --device-only
        lowered = model_step.lower(r.params, lora, r.kv, *inputs, **static)
        analysis = lowered.compile().cost_analysis()
        analysis = analysis[0] if isinstance(analysis, list) else analysis
        gb = analysis.get("bytes accessed", float("nan")) / 1e9
    routed = " (adapter tokens)" if adapter_tokens and lora is not None else ""
    print(
        f"kv cache {kv_gb:5.1f} GB  B={b:3d}  attention={attention_backend:6s} "
        f"lora={lora_backend:6s}{routed}: device-only step "
        f"{device_ms:6.2f} ms, XLA bytes accessed {gb:6.1f} GB"
    )
    return device_ms


def _measure_engine_step(
    engine: Engine, b: int, host_profile: bool, host_trace: bool = False
) -> None:
    rids = [
        engine.add_request([5] * 128, SamplingParams(max_new_tokens=100, ignore_eos=True))
        for _ in range(b)
    ]
    while any(engine.requests[x].in_prefill for x in rids):
        engine.step()
    engine_ms = _median_ms(engine.step)
    if host_profile:  # where the host's share of a step goes
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(20):
            engine.step()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)
    if host_trace:
        host_events(engine.step, 5)
    for x in rids:
        engine.abort(x)
    print(
        f"  B={b:3d}: engine.step {engine_ms:6.2f} ms (attention={engine.runner.attention_backend})"
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--host-profile", action="store_true", help="cProfile 20 engine steps")
    p.add_argument("--host-trace", action="store_true", help="host events of 5 engine steps")
    p.add_argument("--overlap", action="store_true", help="the engine with overlap_schedule")
    p.add_argument(
        "--adapter-tokens",
        action="store_true",
        help="device-only LoRA steps with every token on one of three adapters",
    )
    p.add_argument(
        "--trace", type=int, default=0, help="trace this many device-only steps (0: no trace)"
    )
    p.add_argument(
        "--one-cache", action="store_true", help="only the large KV cache (skip the 8-page one)"
    )
    p.add_argument("--batches", default="1,64", help="decode batch sizes, a subset of 1,64")
    p.add_argument(
        "--graph-scheduling",
        default="concurrent",
        choices=GRAPH_SCHEDULING,
        help="the step's CUDA-graph scheduling mode (EngineConfig.graph_scheduling)",
    )
    p.add_argument("--attention", default="xla,pallas", help="decode attention backends to time")
    p.add_argument(
        "--lora", default="xla", help="LoRA backends of the device-only step (xla, pallas, none)"
    )
    p.add_argument(
        "--device-only", action="store_true", help="skip the Engine.step timing and the sampler"
    )
    args = p.parse_args()
    print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}")
    batches = [int(x) for x in args.batches.split(",")]
    for total_tokens in (128 * args.context,) + (() if args.one_cache else (8 * args.context,)):
        engine = Engine(
            EngineConfig(
                model=args.model,
                load_format="dummy",
                context_length=args.context,
                max_running_requests=64,
                max_prefill_tokens=1024,
                decode_batch_buckets=(1, 64),
                prefill_token_buckets=(1024,),
                kv_len_buckets=(args.context,),
                max_total_tokens=total_tokens,
                warmup=False,
                lora_paths={name: "dummy:16" for name in ADAPTERS},
                max_lora_rank=16,
                max_loras_per_batch=len(ADAPTERS),
                overlap_schedule=args.overlap,
                graph_scheduling=args.graph_scheduling,
            )
        )
        for b in batches:
            if b <= total_tokens // args.context:
                for backend in args.attention.split(","):
                    for lora_backend in args.lora.split(","):
                        trace = args.trace * (backend == "pallas")
                        cost = not args.device_only
                        _measure(
                            engine,
                            b,
                            args.context,
                            backend,
                            trace,
                            cost,
                            lora_backend,
                            args.adapter_tokens,
                        )
                if not args.device_only:
                    _measure_engine_step(engine, b, args.host_profile, args.host_trace)
        del engine
        gc.collect()  # free its device buffers before the next engine allocates its own
    if args.device_only:
        return
    logits = jax.random.normal(jax.random.key(0), (64, 128256), jnp.float32)
    s = SamplingInputs.build([], 64, 128256)
    fn = jax.jit(sample)
    print(
        "sampler alone, B=64 x 128256: "
        f"{_median_ms(lambda: fn(logits, s).block_until_ready()):.2f} ms"
    )
    fn_greedy = jax.jit(lambda x: jnp.argmax(x, -1))
    print(f"argmax alone, B=64: {_median_ms(lambda: fn_greedy(logits).block_until_ready()):.2f} ms")


if __name__ == "__main__":
    main()
