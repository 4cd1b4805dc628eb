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
dispatch (on, the default).

Prints a table of medians (ms) and writes ``--json`` (medians and means)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path


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

    def scenario(adapter, every, written: bool, part: bool, send_after: bool) -> dict:
        slots.send_after_dispatch = send_after
        if not written:
            slots._landed = staticmethod(lambda values: False)
        rows = []
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
        finally:
            if not written:
                del slots._landed  # the class's test again
        runner.load_lora(free, None)
        jax.block_until_ready(slots.layers)
        medians = {k: round(1e3 * statistics.median(r[k] for r in rows), 3) for k in rows[0]}
        means = {f"{k}_mean": round(1e3 * statistics.mean(r[k] for r in rows), 3) for k in rows[0]}
        return medians | means

    out = {"header": run_header().as_dict(), "model": args.model, "batch": args.batch, "ranks": {}}
    cols = ("wall", "wall_mean", *(f"{k}_mean" for k in phases))
    print(f"{'rank':>4} {'scenario':48} " + " ".join(f"{k:>13}" for k in cols))
    for rank in args.ranks:
        adapter = runner.host_adapter(random_adapter(f"x{rank}", engine.model_config, rank, rank))
        cases, every = {"base": (None, True, False, True)}, args.every
        for send_after, when in ((False, "sent at put"), (True, "sent after dispatch")):
            cases |= {
                f"every step, written, {when}": (1, True, False, send_after),
                f"every step, never written, {when}": (1, False, False, send_after),
                f"every {args.every}th step, written, {when}": (every, True, False, send_after),
            }
        cases["every step, qkv+o only"] = (1, False, True, True)
        out["ranks"][rank] = {}
        for name, case in cases.items():
            scenario(adapter, *case)  # warm
            row = scenario(adapter, *case)
            out["ranks"][rank][name] = row
            cells = " ".join(f"{row[k]:13.3f}" for k in cols)
            print(f"{rank:>4} {name:48} {cells}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
