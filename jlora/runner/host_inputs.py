"""A step's host inputs in one transfer.

A decode step has ~15 small input arrays (tokens, positions, page table, LoRA routing, sampling
parameters). Sent one by one, each costs a host-to-device copy of its own, and together they took
a large share of a decode step on the H100 (``experiments/profile_decode.py --host-profile``;
``experiments/results/engine.md``). :func:`pack` lays every array of the inputs' pytree out in
one int32 buffer (all inputs are 4-byte types: int32, uint32, float32, viewed bit for bit);
:func:`unpack`, inside the jitted step, slices and bit-casts them back. The layout
(:class:`PackSpec`) is static, so a bucket's step still compiles once.

With ``EngineConfig.stage_host_inputs`` the step does not read the transferred buffer itself:
:func:`stage` first copies it, with the fed-back tokens of overlap scheduling, into one persistent
device buffer (the runner's *staging* buffer, donated, so updated in place), which the step reads.
On GPU a step runs as a CUDA graph, and before each launch XLA rewrites every node that uses a
buffer whose address changed since the last launch. The transferred buffer is new every step and
the layers read it (KV writes, attention, LoRA routing), so every step paid that rewrite in host
time; with the staging buffer, whose address never changes, it mostly goes away
(``experiments/results/graph_scheduling.md``). On CPU (no graph) the engine does not stage by
default: there the copy made step times vary more (``experiments/results/sim_fidelity_cpu.md``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class PackSpec:
    """Static layout of a packed buffer: the pytree, and each leaf's shape and dtype in order."""

    treedef: jax.tree_util.PyTreeDef
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @property
    def size(self) -> int:
        """Length of the packed buffer (int32 words)."""
        return sum(int(np.prod(shape, dtype=np.int64)) for shape in self.shapes)


def pack(tree) -> tuple[np.ndarray, PackSpec]:
    """One int32 buffer holding every (4-byte) numpy leaf of ``tree``, and its layout."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    arrays = [np.asarray(x) for x in leaves]
    for a in arrays:
        if a.dtype.itemsize != 4:
            raise ValueError(f"pack takes 4-byte leaves only, got dtype {a.dtype}")
    flat = [np.ascontiguousarray(a).reshape(-1).view(np.int32) for a in arrays]
    buffer = np.concatenate(flat) if flat else np.zeros(0, np.int32)
    spec = PackSpec(treedef, tuple(a.shape for a in arrays), tuple(a.dtype.name for a in arrays))
    return buffer, spec


def unpack(buffer: jax.Array, spec: PackSpec):  # buffer [N] int32 -> the packed pytree
    """Inverse of :func:`pack`, traceable (static slices and bit-casts)."""
    leaves, offset = [], 0
    for shape, dtype in zip(spec.shapes, spec.dtypes, strict=True):
        size = int(np.prod(shape, dtype=np.int64))
        x = buffer[offset : offset + size].reshape(shape)
        if dtype != "int32":
            x = jax.lax.bitcast_convert_type(x, jnp.dtype(dtype))
        leaves.append(x)
        offset += size
    return jax.tree_util.tree_unflatten(spec.treedef, leaves)


@functools.partial(jax.jit, donate_argnums=0)
def stage(
    staging: jax.Array,  # [S] int32, donated
    packed: jax.Array,  # [N] int32, N + F <= S
    fed_back: jax.Array,  # [F] int32
) -> jax.Array:  # [S] int32: packed at 0, fed_back at N, the rest unchanged
    """Copy a step's transferred inputs into the persistent staging buffer, in place."""
    staging = jax.lax.dynamic_update_slice(staging, packed, (0,))
    return jax.lax.dynamic_update_slice(staging, fed_back, (packed.shape[0],))
