"""Where the time of a decode step goes while slot loads run (issue #17): per ``Engine.step`` of
the overlap benchmark's engine (``bench_slot_load.py``: a full batch on two adapters, overlap
scheduling on), the host's time in the load's ``put``, in the slot write's dispatch, in the step's
dispatch, and waiting for the previous step's tokens, and the step's wall time.

Scenarios, each over ``--steps`` steps, for each of ``--ranks``:

* ``base``: no load;
* ``every step, written``: a load into a slot no request uses before every step (the benchmark's
  ``overlap``), written by the first step after its transfer lands;
* ``every step, never written``: the same loads, but the write is withheld (the slot's transfer
  never counts as landed, and the next load replaces it): the transfers alone;
* ``every Nth step, written``: a load before every ``--every``-th step, the others free;
* ``every step, qkv+o only``: only the ``qkv`` and ``o`` groups' arrays sent (about a third of
  the bytes), nothing written: how the cost scales with the bytes in flight.

The load scenarios run twice: with the transfer started by ``put``, before the step's dispatch
(``SlotBuffers.send_after_dispatch`` off, the build before it), and started right after the
dispatch (on, the default); ``--quick`` keeps only the latter (and drops the ``never written``
and ``qkv+o`` ones). ``--sources pinned pageable`` runs them from the host cache's pinned arrays
and from pageable numpy copies; ``--chunk-mb X`` also with at most ``X`` MB of a load sent a step
(``lora_load_mb_per_step``). For sparse loads the step at each load, the one after it and what
a load adds to the timeline are printed too.

Prints a table of medians (ms) and writes ``--json`` (medians, means and every step's wall)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import statistics
import time
from pathlib import Path

import numpy as np


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="llama-3.1-8b", help="preset of the engine and adapters")
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--max-rank", type=int, default=64)
    p.add_argument("--ranks", type=int, nargs="+", default=[8, 64])
    p.add_argument("--batch", type=int, default=16, help="requests decoding")
    p.add_argument("--steps", type=int, default=40, help="steps timed per scenario")
    p.add_argument("--every", type=int, default=8, help="the sparse scenario's steps per load")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument(
        "--sources",
        nargs="+",
        default=["pinned"],
        choices=["pinned", "pageable"],
        help="where a load's host arrays sit: pinned host memory (as the cache keeps them on a "
        "GPU) or pageable numpy arrays; the load scenarios run for each",
    )
    p.add_argument(
        "--quick", action="store_true", help="only base and the transfers sent after dispatch"
    )
    p.add_argument(
        "--chunk-mb",
        type=float,
        nargs="*",
        default=[],
        help="also run the sent-after-dispatch scenarios with at most this many MB of a load "
        "sent a step (EngineConfig.lora_load_mb_per_step), for each value",
    )
    p.add_argument("--json", help="write the figures here")
    return p


def _bench_slot_load():
    path = Path(__file__).with_name("bench_slot_load.py")
    spec = importlib.util.spec_from_file_location("bench_slot_load", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Timer:
    """Host time spent inside wrapped callables, per phase, since the last ``take``."""

    def __init__(self):
        self.spent: dict[str, float] = {}

    def wrap(self, phase: str, fn):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[phase] = self.spent.get(phase, 0.0) + time.perf_counter() - t

        return timed

    def take(self) -> dict[str, float]:
        out, self.spent = self.spent, {}
        return out


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    args.decode_model = None
    import jax

    from jlora.adapters import random_adapter
    from jlora.bench.results_file import run_header
    from jlora.runner import model_runner

    bench = _bench_slot_load()
    engine, _, _ = bench.decode_engine(args)
    runner = engine.runner
    slots = runner.slots
    free = next(s for s in range(args.slots) if engine.adapters.occupant[s] is None)
    timer = _Timer()
    slots.put = timer.wrap("put", slots.put)
    slots._write = timer.wrap("write", slots._write)
    slots.send_queued = timer.wrap("send", slots.send_queued)
    runner._packed_step = timer.wrap("dispatch", runner._packed_step)
    model_runner._Launched.tokens = timer.wrap("wait", model_runner._Launched.tokens)
    phases = ("put", "send", "write", "dispatch", "wait")

    def send_part(adapter, groups=("qkv", "o")):
        part = {g: adapter.groups[g] for g in groups}
        jax.device_put(part, {g: slots._device_shardings[g] for g in groups})

    def scenario(
        adapter, every, written: bool, part: bool, send_after: bool, chunk_mb: float | None = None
    ) -> dict:
        slots.send_after_dispatch = send_after
        slots.send_bytes_per_step = None if chunk_mb is None else int(chunk_mb * 2**20)
        if not written:
            slots._landed = staticmethod(lambda values: False)
        rows, walls = [], []
        bench.refill_batch(engine, args.batch, args.steps)
        try:
            for i in range(args.steps):
                timer.take()
                if every and i % every == 0:
                    send_part(adapter) if part else runner.load_lora(free, adapter)
                t = time.perf_counter()
                engine.step()
                wall = time.perf_counter() - t
                spent = timer.take()
                rows.append({"wall": wall, **{k: spent.get(k, 0.0) for k in phases}})
                walls.append(wall)
        finally:
            if not written:
                del slots._landed  # the class's test again
        runner.load_lora(free, None)
        jax.block_until_ready(slots.layers)
        medians = {k: round(1e3 * statistics.median(r[k] for r in rows), 3) for k in rows[0]}
        means = {f"{k}_mean": round(1e3 * statistics.mean(r[k] for r in rows), 3) for k in rows[0]}
        return medians | means | {"walls_ms": [round(1e3 * w, 3) for w in walls]}

    out = {"header": run_header().as_dict(), "model": args.model, "batch": args.batch, "ranks": {}}
    cols = ("wall", "wall_mean", *(f"{k}_mean" for k in phases))
    print(f"{'rank':>4} {'scenario':48} " + " ".join(f"{k:>13}" for k in cols))
    for rank in args.ranks:
        pinned = runner.host_adapter(random_adapter(f"x{rank}", engine.model_config, rank, rank))
        adapters = {
            "pinned": pinned,
            "pageable": dataclasses.replace(pinned, groups=jax.tree.map(np.asarray, pinned.groups)),
        }
        cases, every = {"base": (pinned, None, True, False, True)}, args.every
        for source in args.sources:
            src = "" if source == "pinned" else f" ({source})"
            whens = ((True, "sent after dispatch"),)
            if not args.quick:
                whens = ((False, "sent at put"),) + whens
            for send_after, when in whens:
                a = adapters[source]
                cases |= {
                    f"every step, written, {when}{src}": (a, 1, True, False, send_after),
                    f"every {args.every}th step, written, {when}{src}": (
                        a,
                        every,
                        True,
                        False,
                        send_after,
                    ),
                }
                if not args.quick:
                    cases[f"every step, never written, {when}{src}"] = (
                        a,
                        1,
                        False,
                        False,
                        send_after,
                    )
        for mb in args.chunk_mb:
            cases |= {
                f"every step, at most {mb:g} MB a step": (pinned, 1, True, False, True, mb),
                f"every {args.every}th step, at most {mb:g} MB a step": (
                    pinned,
                    every,
                    True,
                    False,
                    True,
                    mb,
                ),
            }
        if not args.quick:
            cases["every step, qkv+o only"] = (pinned, 1, False, True, True)
        out["ranks"][rank] = {}
        for name, case in cases.items():
            scenario(*case)  # warm
            row = scenario(*case)
            if case[1] and case[1] > 1:  # sparse loads: what each adds to the step timeline
                walls, base = row["walls_ms"], out["ranks"][rank]["base"]["wall"]
                row["added_per_load_ms"] = bench.added_per_load(walls, base, case[1])
                row["step_at_load_ms"], row["step_after_load_ms"] = bench.by_offset(walls, case[1])[
                    :2
                ]
            out["ranks"][rank][name] = row
            cells = " ".join(f"{row[k]:13.3f}" for k in cols)
            print(f"{rank:>4} {name:48} {cells}", flush=True)
            if "added_per_load_ms" in row:
                print(
                    f"     sparse loads: {row['added_per_load_ms']} ms added a load; step at the"
                    f" load {row['step_at_load_ms']} ms, after it {row['step_after_load_ms']} ms"
                    f" (base {base} ms)"
                )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
