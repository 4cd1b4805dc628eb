"""Several processes, one engine: ``jax.distributed`` set-up from the environment, and the clock
every process agrees on.

**How a multi-process engine runs.** JAX on several hosts is multi-controller: every process runs
the same Python program and issues the same jitted computations, in the same order, with the same
shapes, over the global device mesh (``jax.devices()`` lists every process's devices). jlora
follows that model all the way up: *every process runs the same deterministic scheduler* over the
same requests, and so issues the same step. No process broadcasts a plan.

Why not a scheduler on process 0 broadcasting each step's plan (vLLM's way)? A plan here is a
Python structure (requests, pages, slot loads) that the other processes would have to deserialize
and replay through a second, follower-only code path, at a cost on every step's critical path. The
scheduler's decisions are already a pure function of its inputs: the requests added (the same in
every process when every process runs the same program, as the benchmark and ``generate`` do),
the sampled tokens (the output of a step whose result is replicated: every process reads the same
all-reduced, all-gathered values) and the clock. The clock is the one input that differs between
processes, so :class:`SyncedClock` makes it the same: process 0 reads its clock and broadcasts the
reading (8 bytes, one tiny collective per reading). With that, the engine of each process takes
the same decisions; the single-process engine is unchanged. SGLang runs its multi-node tensor
parallel the same way (one scheduler per rank, over requests broadcast to every rank).

One rule keeps the processes in step: no decision may follow the iteration order of a set of
adapter names, since string hashes are salted per process (the two-process test caught
``Engine.score`` loading adapters into slots in set order). Processes that diverged anyway could
feed a step the same shapes with different contents (each process writes only its own devices'
shards), which would give wrong tokens, not an error; so with several processes the runner checks
that every step's host inputs and every slot load are the same on every process
(:func:`assert_same_everywhere`: a CRC32 per process, gathered; one tiny collective per step).

What this does not do: take requests that reach only one process (an online server). Those would
have to be broadcast to every process before the scheduler sees them.

Environment read by :func:`initialize_from_env`: ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of
process 0's coordinator service; JAX's own variable, and the switch: without it the run is a single
process), ``JAX_NUM_PROCESSES`` (or ``WORLD_SIZE``) and ``JAX_PROCESS_ID`` (or ``RANK``). Each
process sees its own local devices (``CUDA_VISIBLE_DEVICES``, or ``JAX_LOCAL_DEVICE_IDS`` as JAX
reads it).

On CPU the cross-process collectives are gloo's (``jax_cpu_collectives_implementation``, JAX's
default); on GPU they are NCCL's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import zlib
from pathlib import Path

import jax
import numpy as np

from jlora.clock import Clock, RealClock

NUM_PROCESSES_VARS = ("JAX_NUM_PROCESSES", "WORLD_SIZE")
PROCESS_ID_VARS = ("JAX_PROCESS_ID", "RANK")


def _int_var(names: tuple[str, ...], env) -> tuple[str, int]:
    for name in names:
        if env.get(name):
            try:
                return name, int(env[name])
            except ValueError:
                raise ValueError(f"{name}={env[name]!r} must be an integer") from None
    raise ValueError(
        f"JAX_COORDINATOR_ADDRESS={env['JAX_COORDINATOR_ADDRESS']!r} names a multi-process run, "
        f"but none of {', '.join(names)} is set"
    )


def distributed_env(env=None) -> tuple[str, int, int] | None:
    """``(coordinator_address, num_processes, process_id)`` from the environment, or None when
    ``JAX_COORDINATOR_ADDRESS`` is unset (a single process). Missing or bad values raise
    ``ValueError`` naming the variable."""
    env = os.environ if env is None else env
    coordinator = env.get("JAX_COORDINATOR_ADDRESS")
    if not coordinator:
        return None
    if ":" not in coordinator:
        raise ValueError(f"JAX_COORDINATOR_ADDRESS={coordinator!r} must be host:port")
    num_name, num_processes = _int_var(NUM_PROCESSES_VARS, env)
    pid_name, process_id = _int_var(PROCESS_ID_VARS, env)
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"{pid_name}={process_id} is outside [0, {num_name}={num_processes})")
    return coordinator, num_processes, process_id


def initialize_from_env(env=None) -> bool:
    """Call ``jax.distributed.initialize`` from the environment (see the module docstring).

    Returns True when it initialized a multi-process run, False when the environment names none
    (a single process; nothing is done). Call it before anything touches a device.
    """
    found = distributed_env(env)
    if found is None:
        return False
    coordinator, num_processes, process_id = found
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )
    return True


def assert_same_everywhere(what: str, *values) -> None:
    """Raise ``RuntimeError`` unless every process passes the same ``values`` (numpy arrays,
    strings, numbers, or callables returning one, evaluated only with several processes): a CRC32
    of each process's values is gathered across processes. A no-op with one process."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    crc = 0
    for v in values:
        v = v() if callable(v) else v
        data = v.encode() if isinstance(v, str) else np.ascontiguousarray(v).tobytes()
        crc = zlib.crc32(data, crc)
    crcs = np.asarray(multihost_utils.process_allgather(np.array([crc], np.uint32))).ravel()
    if len(set(crcs.tolist())) > 1:
        raise RuntimeError(
            f"the processes diverged at {what}: their inputs differ (CRC32 per process "
            f"{[hex(c) for c in crcs.tolist()]}); every process must run the same program on the "
            "same requests (see jlora.distributed)"
        )


class SyncedClock:
    """A clock whose readings are process 0's, on every process (see the module docstring).

    Every :meth:`now` is a collective: all processes must call it the same number of times, which
    they do when they run the same program and scheduler.
    """

    def __init__(self, inner: Clock | None = None):
        self.inner = inner or RealClock()

    def now(self) -> float:
        from jax.experimental import multihost_utils

        local = np.frombuffer(np.float64(self.inner.now()).tobytes(), np.uint8)
        shared = multihost_utils.broadcast_one_to_all(local)
        return float(np.frombuffer(np.asarray(shared, np.uint8).tobytes(), np.float64)[0])

    def sleep_until(self, t: float) -> None:
        # ``t`` is on process 0's time base. Only process 0 waits; the others then block in the
        # next reading's broadcast until process 0 gets there.
        if jax.process_index() == 0:
            self.inner.sleep_until(t)


def engine_clock(clock: Clock | None) -> Clock:
    """The clock an engine reads: the one given, else the real clock, synced across processes
    when there are several."""
    if clock is not None:
        return clock
    return SyncedClock() if jax.process_count() > 1 else RealClock()


def child_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a child process: this one's without its JAX and XLA settings (the child
    sets its own before JAX starts), the checkout ``root`` on PYTHONPATH, and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    return {**env, "PYTHONPATH": str(root), **extra}


def run_workers(
    module: str, mode: str, out_dir: Path, root: Path, timeout_s: float = 300
) -> list[dict]:
    """Run ``python -m module mode OUT.json`` in fresh processes from ``root`` (one, or for
    ``distributed`` two jax.distributed processes on a free localhost port) and return the JSON
    each wrote, by process: the tensor-parallel checks need processes of their own (the number
    of fake CPU devices is fixed before JAX starts)."""
    extra = [{}]
    if mode == "distributed":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        extra = [
            {
                "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": str(i),
            }
            for i in range(2)
        ]
    outs = [out_dir / f"{mode}{i}.json" for i in range(len(extra))]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", module, mode, str(out)],
            cwd=root,
            env=child_env(root, **e),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for out, e in zip(outs, extra, strict=True)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout_s)[0])
    finally:
        for p in procs:
            if p.poll() is None:  # one process failed and left the other in a collective
                p.kill()
                p.wait()
    for p, log in zip(procs, logs, strict=False):
        if p.returncode:
            raise RuntimeError(f"{module} {mode} exited with {p.returncode}:\n{log[-4000:]}")
    return [json.loads(out.read_text()) for out in outs]
