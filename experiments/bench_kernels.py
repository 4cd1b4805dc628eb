"""Benchmark one serving step's LoRA work: our Pallas kernels against the XLA baselines.

The unit is a whole step as the forward runs it: all seven target modules (4 groups: qkv, o,
gate_up, down) of all layers of Llama-3.1-8B, unrolled in one jitted program, per token count and
adapter mix. Methods:

- ``pallas``: :func:`jlora.kernels.lora_gpu.lora_group_gpu` (tuned blocks), one call per group;
- ``onehot``: one-hot einsum over all slots (sglang-jax's bgmv backend, vLLM-TPU);
- ``gather``: per-token gather of each token's A and B, then batched matmuls (decode sizes only:
  it materialises T copies of the weights);
- ``ragged``: ``jax.lax.ragged_dot`` over the slot-sorted tokens (shrink, then expand per module);
- ``base``: the base projections of the same layers (x @ W), for scale.

Baselines return each module's delta separately (no concatenation), their most favourable form.
Every method reads its own layer's weights and one of several input sets (rotated so that inputs
do not sit in L2 across layers). Times are wall-clock medians of pipelined calls after warm-up,
on random non-zero data; ``kernels`` is the sum of the kernels' own durations (CUPTI), so
``time - kernels`` is launch overhead. The floor is the bytes a fused implementation must move
(each used adapter's weights at its own rank, each group's input once and its output once) over
the copy ceiling. Before the table the GPU kernels are checked against a float32 oracle
(``--no-check`` skips it).

    PYTHONPATH=. python experiments/bench_kernels.py             # full run, writes kernels.md
    PYTHONPATH=. python experiments/bench_kernels.py --blocks tuned.json  # with tuned blocks
    JAX_PLATFORMS=cpu PYTHONPATH=. python experiments/bench_kernels.py --small  # CPU smoke run

The other kernel experiments: ``tune_kernel_blocks.py`` (the GPU block sizes; its ``--json`` is
what ``--blocks`` reads), ``bench_xla_flags.py`` (launch cost under XLA flag sets, which runs this
script's T=1 and T=64 steps in subprocesses) and ``bench_kernels_mgpu.py`` (a Mosaic GPU grouped
matmul). What they share is :mod:`jlora.bench.kernel_bench`.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jlora.bench.kernel_bench import (
    COPY_CEILING,
    SCENARIOS,
    floor_bytes,
    group_weights,
    kernel_time,
    log,
    make_inputs,
    mask_ranks,
    parser,
    rel_err,
    routing,
    wall_time,
    write_results,
)
from jlora.bench.results_file import run_header
from jlora.kernels import tuned_blocks
from jlora.kernels.lora_gpu import lora_group_gpu
from jlora.kernels.lora_xla import lora_group_ref
from jlora.kernels.tuned_blocks import GpuBlocks, gpu_blocks
from jlora.kernels.types import LoraGroup, make_lora_batch

# ------------------------------------------------------------------------------------------------
# Methods: (x [T, d_in], group, batch, out_sizes, extra) -> delta (array or tuple of per-module).


def onehot_parts(x, group, batch, outs, extra):
    num_slots = group.a.shape[0]
    onehot = jax.nn.one_hot(batch.token_slot, num_slots, dtype=jnp.float32)
    h = jnp.einsum("td,smrd->tsmr", x, group.a, preferred_element_type=jnp.float32)
    h = h * jnp.einsum("ts,sm->tsm", onehot, group.scale)[..., None]
    h = h.astype(group.b.dtype)
    parts, off = [], 0
    for m, size in enumerate(outs):
        y = jnp.einsum("tsr,sor->to", h[:, :, m], group.b[:, off : off + size])
        parts.append(y.astype(x.dtype))
        off += size
    return tuple(parts)


def gather_parts(x, group, batch, outs, extra):
    slot = jnp.maximum(batch.token_slot, 0)
    live = (batch.token_slot >= 0)[:, None, None]
    h = jnp.einsum("td,tmrd->tmr", x, group.a[slot], preferred_element_type=jnp.float32)
    h = jnp.where(live, h * group.scale[slot][..., None], 0.0).astype(group.b.dtype)
    parts, off = [], 0
    for m, size in enumerate(outs):
        parts.append(jnp.einsum("tr,tor->to", h[:, m], group.b[slot, off : off + size]))
        off += size
    return tuple(parts)


def ragged_layout(group: LoraGroup, outs):
    """ragged_dot's operand layout, prepared once outside the timed step."""
    num_slots, num_modules, rank, d_in = group.a.shape
    a_r = jnp.transpose(group.a, (0, 3, 1, 2)).reshape(num_slots, d_in, num_modules * rank)
    b_r, off = [], 0
    for size in outs:
        b_r.append(jnp.transpose(group.b[:, off : off + size], (0, 2, 1)))  # [S, R, out]
        off += size
    return {"a": a_r, "b": tuple(b_r)}


def ragged_parts(x, group, batch, outs, extra):
    num_slots, num_modules, rank, _ = group.a.shape
    sizes = jnp.bincount(
        jnp.where(batch.token_slot >= 0, batch.token_slot, num_slots), length=num_slots + 1
    )
    sizes = sizes[:num_slots].astype(jnp.int32)
    h = jax.lax.ragged_dot(x, extra["a"], sizes, preferred_element_type=jnp.float32)
    slot = jnp.maximum(batch.token_slot, 0)
    scale = jnp.repeat(group.scale[slot], rank, axis=1)  # [T, M*R]
    h = (h * scale).astype(group.b.dtype)
    return tuple(
        jax.lax.ragged_dot(h[:, m * rank : (m + 1) * rank], extra["b"][m], sizes)
        for m in range(num_modules)
    )


def make_pallas(blocks_fn, interpret):
    def pallas_delta(x, group, batch, outs, extra):
        blocks = blocks_fn(x.shape[0], x.shape[1], outs)
        return lora_group_gpu(x, group, batch, outs, blocks=blocks, interpret=interpret)

    return pallas_delta


def base_proj(x, group, batch, outs, extra):
    return x @ extra


def make_step(method, shapes, layers: int, num_sets: int):
    """The jitted step: every group of every layer, unrolled."""

    def step(xs, weights, extras, batch):
        outs = []
        for layer in range(layers):
            for name, (_, sizes) in shapes.items():
                x = xs[layer % num_sets][name]
                outs.append(method(x, weights[layer][name], batch, sizes, extras[layer][name]))
        return outs

    return jax.jit(step)


# ------------------------------------------------------------------------------------------------
# Checks on the device (single group calls).


@functools.partial(jax.jit, static_argnames=("outs",))
def _oracle(x, group, batch, outs):
    """The one-hot einsum in float32 at full precision (no TF32)."""
    group32 = jax.tree.map(lambda v: v.astype(jnp.float32), group)
    with jax.default_matmul_precision("highest"):
        return lora_group_ref(x.astype(jnp.float32), group32, batch, outs)


def check_kernels(shapes, weights, tokens, interpret) -> list[str]:
    """The GPU kernels (tuned, and the other launch form) against the float32 oracle, on fresh
    data with tokens without an adapter, writing into an output poisoned with NaN."""
    lines = []
    key = jax.random.key(7)
    ref_fn = jax.jit(lora_group_ref, static_argnames=("out_sizes",))
    for ti, num_tokens in enumerate(tokens):
        ranks = SCENARIOS["mixed8"]
        slot = routing(num_tokens, ranks)
        if num_tokens >= 37:  # some tokens without an adapter, first and between two runs
            slot[:3] = -1
            boundary = int(np.flatnonzero(np.diff(slot[3:]))[0]) + 4
            slot[boundary - 3 : boundary] = -1
        batch = make_lora_batch(slot, np.array(ranks, np.int32))
        for gi, (name, (d_in, outs)) in enumerate(shapes.items()):
            group = mask_ranks(weights[0][name], jnp.array(ranks, jnp.int32))
            kx = jax.random.fold_in(key, ti * 10 + gi)
            x = jax.random.normal(kx, (num_tokens, d_in), jnp.bfloat16)
            oracle = _oracle(x, group, batch, outs)
            onehot = ref_fn(x, group, batch, out_sizes=outs)
            base = gpu_blocks(num_tokens, d_in, outs)
            variants = {"tuned": base}
            variants["fused" if base.split_k else "split4"] = dataclasses.replace(
                base, split_k=0 if base.split_k else 4
            )
            for vname, blocks in variants.items():
                poison = jnp.full((num_tokens, sum(outs)), jnp.nan, x.dtype)
                y = lora_group_gpu(
                    x, group, batch, outs, blocks=blocks, interpret=interpret, out=poison
                )
                err = rel_err(y, oracle)
                ok = err < 2e-2
                line = (
                    f"check T={num_tokens:5d} {name:8s} {vname:7s} rel err vs f32 oracle {err:.2e}"
                    f" (one-hot bf16: {rel_err(onehot, oracle):.2e}) {'ok' if ok else 'FAIL'}"
                )
                log(line)
                lines.append(line)
    return lines


def pallas_blocks_fn(split_decode: bool):
    """The block sizes of the pallas method: the tuned table, or with ``split_decode`` the
    two-launch form at decode sizes (to weigh its launches in a step)."""
    if not split_decode:
        return gpu_blocks

    def blocks_fn(num_tokens, d_in, outs):
        blocks = gpu_blocks(num_tokens, d_in, outs)
        if num_tokens > 64:
            return blocks
        units = d_in // blocks.block_k
        return dataclasses.replace(blocks, split_k=units // 2 if units > 4 else units)

    return blocks_fn


def measure(args, shapes, weights, interpret, deadline, copy_bw) -> tuple[list[dict], dict]:
    """One row per (scenario, token count): each method's step time, kernel time, error."""
    tokens = [int(t) for t in args.tokens.split(",")]
    scenarios = args.scenarios.split(",")
    methods = args.methods.split(",")
    dtype = jnp.bfloat16
    key = jax.random.key(0)
    method_fns = {
        "pallas": make_pallas(pallas_blocks_fn(args.split_decode), interpret),
        "onehot": onehot_parts,
        "gather": gather_parts,
        "ragged": ragged_parts,
        "base": base_proj,
    }
    extras_none = [{name: None for name in shapes} for _ in range(args.layers)]
    rows, compile_times = [], {}
    steps = {}
    for sc in scenarios:
        ranks = SCENARIOS[sc]
        rank_arr = jnp.array(ranks, jnp.int32)
        ws = [{n: mask_ranks(g, rank_arr) for n, g in layer.items()} for layer in weights]
        extras = {"none": extras_none}
        if "ragged" in methods:
            extras["ragged"] = [
                {n: ragged_layout(g, shapes[n][1]) for n, g in layer.items()} for layer in ws
            ]
        if "base" in methods and sc == scenarios[0]:
            base_w = [
                {
                    n: jax.random.normal(
                        jax.random.fold_in(key, 1000 + li * 8 + gi), (d, sum(o)), dtype
                    )
                    * d**-0.5
                    for gi, (n, (d, o)) in enumerate(shapes.items())
                }
                for li in range(args.layers)
            ]
        for num_tokens in tokens:
            slot = routing(num_tokens, ranks)
            batch = make_lora_batch(slot, np.array(ranks, np.int32))
            per_layer_in = num_tokens * sum(d for d, _ in shapes.values()) * 2
            num_sets = int(min(args.layers, max(2, (4 << 30) // per_layer_in)))
            xs = make_inputs(
                jax.random.fold_in(key, num_tokens), shapes, num_tokens, num_sets, dtype
            )
            floor = floor_bytes(shapes, num_tokens, ranks, slot, args.layers)
            row = {"scenario": sc, "tokens": num_tokens, "floor_ms": floor / COPY_CEILING * 1e3}
            if copy_bw:
                row["floor_measured_ms"] = floor / copy_bw * 1e3
            # The one-hot step runs first and its deltas are kept as the reference; every other
            # method is compared as soon as it has run, then its outputs are dropped (at T=8192
            # one step's deltas are 22.5 GB). Past T=2048 only layer 0 is compared.
            ref = None
            keep = len(shapes) * (args.layers if num_tokens <= 2048 else 1)
            order = sorted(methods, key=lambda m: m != "onehot")
            for method in order:
                if method == "base" and sc != scenarios[0]:
                    continue  # independent of the adapters
                if method == "gather" and num_tokens > args.gather_max_tokens:
                    continue
                if time.time() > deadline:
                    log(f"out of time budget: skipping {sc} T={num_tokens} {method}")
                    continue
                if method == "base":
                    ex = base_w
                elif method == "ragged":
                    ex = extras["ragged"]
                else:
                    ex = extras_none
                ck = (method, num_tokens)
                if ck not in steps:
                    steps[ck] = make_step(method_fns[method], shapes, args.layers, num_sets)
                f = steps[ck]
                fargs = (xs, ws, ex, batch)
                try:
                    t0 = time.perf_counter()
                    out = jax.block_until_ready(f(*fargs))
                    if ck not in compile_times:
                        compile_times[ck] = time.perf_counter() - t0
                    if method == "onehot":
                        ref = [jnp.concatenate(parts, axis=-1) for parts in out[:keep]]
                    elif ref is not None and method in ("pallas", "ragged", "gather"):
                        got = [
                            o if method == "pallas" else jnp.concatenate(o, axis=-1) for o in out
                        ]
                        errs = [rel_err(a, b) for a, b in zip(got[:keep], ref, strict=True)]
                        row[f"{method}_err"] = max(errs)
                        del got
                    del out
                    inner = 10 if num_tokens <= 256 else (3 if num_tokens <= 2048 else 1)
                    reps = args.reps if not interpret else 1
                    secs = wall_time(f, fargs, reps, 1 if interpret else inner)
                    row[f"{method}_ms"] = secs * 1e3
                    msg = f"{sc:8s} T={num_tokens:5d} {method:7s} {secs * 1e3:9.3f} ms"
                    if method in ("pallas", "onehot") and not interpret:
                        kms, nk = kernel_time(f, fargs, iterations=3 if num_tokens <= 2048 else 1)
                        if kms is not None:
                            row[f"{method}_kernels_ms"] = kms
                            row[f"{method}_kernels_n"] = nk
                            msg += f"  (kernels {kms:.3f} ms, {nk} launches)"
                    log(msg + f"  [compile {compile_times[ck]:.1f} s]")
                except Exception as e:  # noqa: BLE001 - report and go on with the other methods
                    log(f"{sc} T={num_tokens} {method}: FAILED {type(e).__name__}: {str(e)[:500]}")
                    row[f"{method}_error"] = f"{type(e).__name__}"
                    if "RESOURCE_EXHAUSTED" in str(e):
                        log("out of device memory: skipping the other methods at this size")
                        break
                gc.collect()
            del ref
            del xs
            gc.collect()
            rows.append(row)
            log(json.dumps(row))
        del ws, extras
        if sc == scenarios[0]:
            base_w = None  # only the first scenario times the base projections
        gc.collect()
    return rows, compile_times


def render(rows, methods) -> str:
    """Markdown table: one row per (scenario, T); times in ms; speed-up over the best baseline."""
    baselines = [m for m in ("onehot", "gather", "ragged") if m in methods]
    head = ["adapters", "T", "floor"]
    head += [m for m in ("pallas", "onehot", "gather", "ragged", "base") if m in methods]
    head += ["pallas kernels", "speed-up vs best baseline", "pallas err"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["scenario"], str(r["tokens"]), f"{r['floor_ms']:.3f}"]
        for m in head[3 : 3 + len([h for h in head[3:] if h in methods])]:
            v = r.get(f"{m}_ms")
            cells.append(f"{v:.3f}" if v is not None else ("err" if f"{m}_error" in r else "-"))
        k = r.get("pallas_kernels_ms")
        cells.append(f"{k:.3f} ({r.get('pallas_kernels_n')})" if k is not None else "-")
        base = [r[f"{m}_ms"] for m in baselines if f"{m}_ms" in r]
        ours = r.get("pallas_ms")
        cells.append(f"{min(base) / ours:.2f}x" if base and ours else "-")
        e = r.get("pallas_err")
        cells.append(f"{e:.1e}" if e is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# The table.


def build_parser():
    p = parser(__doc__.split("\n\n")[0], "experiments/results/kernels.md")
    p.add_argument("--tokens", default="1,16,64,256,2048,8192")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--methods", default="pallas,onehot,gather,ragged,base")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--gather-max-tokens", type=int, default=256)
    p.add_argument("--no-check", action="store_true")
    p.add_argument("--check-tokens", default="1,37,300,2048")
    p.add_argument("--budget-s", type=float, default=540.0, help="stop starting work after this")
    p.add_argument("--xla-flags", default=None, help="XLA_FLAGS for this run (before start-up)")
    p.add_argument("--no-copy", action="store_true", help="skip measuring the copy ceiling")
    p.add_argument(
        "--split-decode",
        action="store_true",
        help="pallas: the split (shrink, then expand) launch form for T <= 64",
    )
    p.add_argument(
        "--blocks",
        default=None,
        help="the --json of tune_kernel_blocks.py: time with its tuned block sizes",
    )
    return p


def load_tuned(path: str) -> dict:
    """The tuned entries of a ``tune_kernel_blocks.py --json`` file, into ``GPU_TUNED``."""
    tuned = {tuple(e["key"]): GpuBlocks(**e["blocks"]) for e in json.load(open(path))["tuned"]}
    tuned_blocks.GPU_TUNED.update(tuned)
    return tuned


def claims(rows, xla_flags: str, copy_bw) -> tuple[list[str], str]:
    """The Current's claim lines against the targets, and the Log entry's one-line verdict."""
    out, parts = [], []
    at_2048 = [r for r in rows if r["scenario"] == "3x16" and r["tokens"] == 2048]
    if at_2048 and "pallas_ms" in at_2048[0]:
        ms = at_2048[0]["pallas_ms"]
        met = "met" if ms <= 6.0 else "NOT met"
        out.append(
            f"- claim: 3 rank-16 adapters at 2048 tokens take {ms:.2f} ms (target 6 ms: {met})"
        )
        parts.append(f"{ms:.2f} ms at 2048 tokens for 3x16 (target 6 ms: {met})")
    speedups = []
    for r in rows:
        base = [r[f"{m}_ms"] for m in ("onehot", "gather", "ragged") if f"{m}_ms" in r]
        if base and r.get("pallas_ms"):
            speedups.append(min(base) / r["pallas_ms"])
    if speedups:
        wins = sum(s >= 1 for s in speedups)
        line = (
            f"faster than the best XLA baseline at {wins} of {len(speedups)} points "
            f"({min(speedups):.2f}x-{max(speedups):.2f}x)"
        )
        met = "met" if wins == len(speedups) else "NOT met"
        out.append(f"- claim: {line} (target: at every point: {met})")
        parts.append(line)
    bw = f"{copy_bw / 1e12:.2f} TB/s" if copy_bw else "not measured"
    flags = f"`{xla_flags}`" if xla_flags else "unset (default)"
    out.append(f"- XLA_FLAGS: {flags}; copy ceiling: {bw} (the floor uses 2.9 TB/s)")
    return out, "; ".join(parts) or "kernel table (no pallas timing)"


def report(rows, methods, layers, check_lines, blocks, compile_times) -> str:
    """The Log entry's body: the table, the on-device checks, the blocks, the compile times."""
    compile_lines = "\n".join(f"- {m} T={t}: {s:.1f} s" for (m, t), s in compile_times.items())
    checks = "\n".join(f"    {c}" for c in check_lines) or "    (not run)"
    blocks = "\n".join(f"- {k}: `{v}`" for k, v in blocks.items())
    return f"""Times in ms per step (all 7 target modules of all {layers} layers, one jitted
program, unrolled); 8 slots of max rank 64. `pallas kernels`: summed kernel time (CUPTI) and
launches per step.

{render(rows, methods)}

Correctness on the device (bf16, relative L2 error vs the float32 per-token oracle, output
poisoned with NaN before each run):

{checks}

Block sizes used (`jlora/kernels/tuned_blocks.py`):

{blocks}

Start-up compile time (first call of each step program):

{compile_lines}"""


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    start = time.time()
    # XLA reads XLA_FLAGS when the backend starts: set them before touching a device.
    if args.xla_flags is not None:
        os.environ["XLA_FLAGS"] = args.xla_flags
    xla_flags = os.environ.get("XLA_FLAGS", "")
    log(f"XLA_FLAGS={xla_flags!r}")
    tuned = load_tuned(args.blocks) if args.blocks else {}
    header = run_header(argv)
    log(f"device {header.device}, jax {header.jax}, python {header.python}")
    shapes, weights, interpret = group_weights(args, args.layers)
    log(f"weights ready ({time.time() - start:.0f} s)")

    copy_bw = None
    if not interpret and not args.no_copy:
        big = jnp.ones((1 << 30,), jnp.bfloat16)  # 2 GiB
        cp = jax.jit(lambda a: a + 1)
        copy_bw = 2 * big.nbytes / wall_time(cp, (big,), 5, 10)
        del big
        log(f"copy ceiling measured: {copy_bw / 1e12:.2f} TB/s (read + write)")

    check_tokens = [int(t) for t in args.check_tokens.split(",")]
    check_lines = [] if args.no_check else check_kernels(shapes, weights, check_tokens, interpret)
    rows, compile_times = measure(args, shapes, weights, interpret, start + args.budget_s, copy_bw)
    methods = args.methods.split(",")
    log("\n" + render(rows, methods))
    tokens = [int(t) for t in args.tokens.split(",")]
    blocks = {
        f"T={t} {n}": repr(gpu_blocks(t, d, o)) for t in tokens for n, (d, o) in shapes.items()
    }
    claim_lines, verdict = claims(rows, xla_flags, copy_bw)
    body = report(rows, methods, args.layers, check_lines, blocks, compile_times)
    raw = {
        "rows": rows,
        "copy_bw": copy_bw,
        "layers": args.layers,
        "xla_flags": xla_flags,
        "compile_s": {f"{m} T={t}": round(s, 1) for (m, t), s in compile_times.items()},
        "checks": check_lines,
        "blocks": blocks,
        "tuned": {str(k): repr(v) for k, v in tuned.items()},
    }
    model = "small shapes (smoke run)" if args.small else "Llama-3.1-8B"
    title = f"LoRA kernels: one step's LoRA work, {model}, {args.layers} layers"
    write_results(args, header, title, claim_lines, verdict, body, raw)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
