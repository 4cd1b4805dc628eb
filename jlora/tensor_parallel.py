"""Tensor parallelism: the model, its LoRA slots and its KV cache split over a ``tp`` mesh axis.

Built on JAX's own machinery: a :class:`jax.sharding.Mesh` with one axis, ``"tp"``, over the first
``tp_size`` devices (across processes too, see :mod:`jlora.distributed`); every array placed with a
:class:`~jax.sharding.NamedSharding`; each jitted step's body run once per shard by
:func:`jax.shard_map`, which sees the shard's slices and talks to the other shards only through the
collectives written below. ``tp_size = 1`` builds no mesh: the single-device code, as before.

**What is split** (Megatron-LM's layout):

=========================  ==========================================================
base ``w_qkv``, ``b_qkv``  column-parallel: output dim split, shard ``j`` gets its q
                           heads, k heads, v heads (fused columns laid out per shard,
                           :func:`models.llama.fused_column_order`)
base ``w_gate_up``         column-parallel, per shard ``gate_j | up_j``
base ``w_o``, ``w_down``   row-parallel: input dim split (the shard's heads / MLP slice)
base ``lm_head``           vocabulary split (its matmul is the largest of a decode step)
embed, norms, ``b_o``      replicated (see below)
LoRA qkv, gate_up          ``b`` split on its output dim (per-shard layout, as the base),
                           ``a`` and ``scale`` replicated
LoRA o, down               ``a`` split on its input dim, ``b`` and ``scale`` replicated
KV cache ``k``, ``v``      KV heads split: ``[L, pages, page_size, Hkv/tp, D]``
=========================  ==========================================================

Inside the shard the forward (:func:`models.llama.forward`) is the single-device one over a
per-shard config (:func:`local_config`: ``Hq/tp``, ``Hkv/tp``, ``I/tp``): attention over its own
heads and its own slice of the KV cache, both LoRA kernels (``xla`` and ``pallas``) unchanged on
the shard's slices. Hence ``num_kv_heads``, ``num_heads`` and ``intermediate_size`` must divide by
``tp_size``, checked by :func:`check_tp`. The vocabulary need not: an untied head is padded with
zero columns to a multiple of ``tp_size`` (as vLLM pads its vocabulary shards) and the padded
logits are cut off after the all-gather, never sampled (:func:`models.llama.logits`).

**Communication per layer**, ``T`` tokens in the step, ``d`` the hidden size:

- q|k|v (+ LoRA): none. The input is replicated; each shard computes its heads' columns, its LoRA
  shrink with the whole (replicated) ``A`` (recomputed on every shard: ``T x d x R``, small) and
  its expand with its slice of ``B``.
- attention: none (heads are independent; each shard owns its KV heads' pages).
- o (+ LoRA): **one all-reduce of ``[T, d]``**. The shard's matmul over its input slice is a
  partial sum, and so is its LoRA shrink (``A`` split on the input dim). Rather than all-reduce
  the shrink ``[T, R]`` and then the base output ``[T, d]`` (two collectives, each latency-bound
  at decode), the shard expands its *partial* shrink with the replicated ``B``, adds it to its
  partial matmul, and the sum is all-reduced once: ``sum_j (x_j W_j + s (x_j A_j^T) B^T)`` is the
  whole ``x W + s (x A^T) B^T`` since the expand is linear. The cost is each shard doing the whole
  expand (``T x R x d``); the bias ``b_o`` is added after the reduction.
- gate|up (+ LoRA): none, as q|k|v.
- down (+ LoRA): **one all-reduce of ``[T, d]``**, as o.

So **2 all-reduces per layer** (``2 L`` per step), in the activations' dtype, plus per step one
**all-gather** of the sampled rows' logits ``[N, V/tp] -> [N, V]`` (float32) so that every shard
samples the same token from the whole row (sampling is then replicated: each process reads the
token from its own device; ``Engine.score`` gathers all its positions' rows). Nothing else
crosses devices: the embedding lookup reads a replicated table, the KV writes go to the shard's
own heads. ``tests/test_tensor_parallel.py`` counts the collectives in the compiled HLO of the
decode and prefill steps (:func:`count_collectives`) and holds them to exactly this; for the full
presets' decode steps (lowered from shapes on fake CPU devices, jax 0.10.2) the counts are 64
all-reduces + 1 all-gather for Llama-3.1-8B at tp 2 and 160 + 1 for Llama-3.1-70B at tp 2 and 8
(``experiments/results/tensor_parallel.md``).

Why replicate the embedding: a vocabulary-split embedding would need one more all-reduce of
``[T, d]`` per step to assemble the looked-up rows, to save ``V x d / tp`` bytes per device (1 GB
in bfloat16 for Llama-3.1-70B), which the memory budget affords. Norm weights are ``d`` values.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from models.config import ModelConfig
from models.llama import TP_AXIS, LlamaParams
from models.weights import FIELD_SHARDING

__all__ = [
    "KV_SHARDING",
    "TP_AXIS",
    "check_tp",
    "count_collectives",
    "local_config",
    "make_mesh",
    "param_specs",
    "per_shard",
    "put_host",
    "sharded_zeros",
]

KV_SHARDING = P(None, None, None, TP_AXIS, None)  # [L, pages, page_size, Hkv, D]: KV heads split


def check_tp(cfg: ModelConfig, tp_size: int) -> None:
    """Refuse a model the ``tp_size`` shards cannot split evenly, naming the values."""
    if not isinstance(tp_size, int) or isinstance(tp_size, bool) or tp_size < 1:
        raise ValueError(f"tp_size={tp_size!r} must be a positive integer")
    # The vocabulary need not divide: the split lm_head is padded (models.weights.padded_vocab).
    checks = [
        ("num_key_value_heads", cfg.num_kv_heads),
        ("num_attention_heads", cfg.num_heads),
        ("intermediate_size", cfg.intermediate_size),
    ]
    for name, value in checks:
        if value % tp_size:
            raise ValueError(
                f"tp_size={tp_size} does not divide the model's {name}={value}: each shard must "
                f"hold a whole number of them (pick a tp_size that divides {name})"
            )


def make_mesh(tp_size: int, devices=None) -> Mesh:
    """A one-axis ``"tp"`` mesh over the first ``tp_size`` devices (of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    if tp_size > len(devices):
        raise ValueError(
            f"tp_size={tp_size} needs {tp_size} devices, but jax sees {len(devices)} "
            f"({devices[0].platform}); on CPU set XLA_FLAGS=--xla_force_host_platform_device_count"
        )
    if jax.process_count() > 1 and tp_size != len(devices):
        raise ValueError(
            f"tp_size={tp_size} must span all {len(devices)} devices of the "
            f"{jax.process_count()} processes (one engine over every device; data-parallel "
            "replicas are not supported)"
        )
    return Mesh(np.asarray(devices[:tp_size]), (TP_AXIS,))


def local_config(cfg: ModelConfig, tp_size: int) -> ModelConfig:
    """The config one shard's forward sees: its heads, KV heads and MLP slice."""
    if tp_size == 1:
        return cfg
    return dataclasses.replace(
        cfg,
        num_heads=cfg.num_heads // tp_size,
        num_kv_heads=cfg.num_kv_heads // tp_size,
        intermediate_size=cfg.intermediate_size // tp_size,
    )


def param_specs(params: LlamaParams) -> LlamaParams:
    """The PartitionSpec of every field of ``params`` (a pytree of the same structure)."""

    def spec(path, _leaf):
        return FIELD_SHARDING[path[-1].name]

    return jax.tree_util.tree_map_with_path(spec, params)


def per_shard(fn, mesh: Mesh | None, in_specs, out_specs):
    """``fn`` run once per shard of ``mesh`` (``jax.shard_map``); ``fn`` itself without a mesh.

    ``check_vma=False``: the Pallas kernels run unchanged inside, and their ``pallas_call`` output
    shapes carry no per-axis "varying" annotation, which the check would demand. What the check
    would have guarded (outputs declared replicated really are) holds by construction: they come
    out of a ``psum`` or an ``all_gather``, or are computed from such values and replicated inputs
    only; the tests compare every output with ``tp_size = 1``.
    """
    if mesh is None:
        return fn
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def put_host(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A host array placed split as ``sharding``: each device receives only its own slice.

    Unlike ``jax.device_put``, which with several processes first checks (a collective per call)
    that every process passes the same value, this trusts the caller: every process runs the same
    program on the same inputs (see :mod:`jlora.distributed`).
    """
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "sharding"))
def sharded_zeros(shape: tuple[int, ...], dtype, sharding: NamedSharding | None) -> jax.Array:
    """Zeros made where they live: each device writes only its shard (any number of processes)."""
    out = jnp.zeros(shape, dtype)
    return out if sharding is None else jax.lax.with_sharding_constraint(out, sharding)


_COLLECTIVE = re.compile(
    r"^\s*(?:ROOT )?\S+ = (?:\([^)]*\)|\S+) "  # name = shape (a tuple shape has spaces)
    r"(all-reduce|all-gather|all-to-all|reduce-scatter|collective-permute|collective-broadcast)"
    r"(?:-start)?\(",
    re.MULTILINE,
)


def count_collectives(hlo_text: str) -> dict[str, int]:
    """Collective ops in compiled HLO text, by kind (an async ``-start``/``-done`` pair, as the GPU
    compiler emits them, counts once)."""
    return dict(Counter(m.group(1) for m in _COLLECTIVE.finditer(hlo_text)))
