"""The Llama-family decoder as a pure function over a parameter pytree.

One forward serves every use: a step is a flat run of ``T`` tokens from any number of sequences
(``tokens[T]``, ``positions[T]``), attention is a pluggable object that knows which tokens see which
(a dense segment mask for scoring, the paged KV cache for serving), and LoRA is applied per module
group with the token's device slot (``jlora.kernels``).

The layers are walked as an unrolled Python loop over per-layer weights rather than a ``lax.scan``
over stacked weights: on the H100 the scan measured slower for the same projections (each layer's
slice appears to be copied before its matmul; that measurement predates ``experiments/results/``
and was not kept), and the unrolled loop lets the weight read of layer ``i + 1`` overlap layer
``i``.

Shapes: ``T`` tokens, ``d`` hidden size, ``Hq``/``Hkv`` query/key-value heads of width ``D``,
``V`` vocabulary, ``I`` MLP width. Weights are stored ``[in, out]`` (the transpose of torch's), and
the projections that read the same input are fused (q|k|v, gate|up), as the LoRA groups are: one
matmul each, and the LoRA delta of the group adds onto its output directly.

**Tensor parallel.** Under ``tp`` shards the same function runs once per shard (inside
``shard_map``, see :mod:`jlora.tensor_parallel`) on that shard's slices and a per-shard config
(``Hq/tp`` heads, ``Hkv/tp`` KV heads, ``I/tp`` MLP width), with ``tp_axis`` naming the mesh axis.
The fused fields are stored *per shard* (:func:`fused_column_order`): shard ``j``'s columns of
``w_qkv`` are its q heads, then its k heads, then its v heads, so an even split of the output dim
hands each shard a plain fused layout of its own heads and the code below splits it unchanged.
Column-parallel projections (q|k|v, gate|up) need no communication; the row-parallel ones (o,
down) read the shard's slice of their input and produce partial sums, which are all-reduced once
per module, LoRA delta included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jlora.kernels import LoraBatch, LoraGroup, lora_group_delta
from jlora.kernels.prefill_attention import dense_attention
from models.config import ModelConfig


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class LayerParams:
    """Weights of one decoder layer."""

    input_norm: jax.Array  # [d]
    w_qkv: jax.Array  # [d, Hq*D + 2*Hkv*D]   q | k | v fused on the output dim
    w_o: jax.Array  # [Hq*D, d]
    post_attn_norm: jax.Array  # [d]
    w_gate_up: jax.Array  # [d, 2*I]          gate | up fused on the output dim
    w_down: jax.Array  # [I, d]
    b_qkv: jax.Array | None = None  # [Hq*D + 2*Hkv*D]  (Qwen2, Llama attention_bias)
    b_o: jax.Array | None = None  # [d]                 (Llama attention_bias)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class LlamaParams:
    """All weights of a model; ``lm_head`` is None when tied to the embedding."""

    embed: jax.Array  # [V, d]
    layers: tuple[LayerParams, ...]
    final_norm: jax.Array  # [d]
    lm_head: jax.Array | None  # [d, V]


TP_AXIS = "tp"  # the mesh axis tensor parallelism splits over

LoraSlots = dict[str, LoraGroup]
"""Per module group ("qkv", "o", "gate_up", "down") the slot buffers of every layer, stacked:
``a [L, S, M, R, d_in]``, ``b [L, S, O, R]``, ``scale [L, S, M]``. Stacked rather than one
group per layer so that a step or a slot write passes 12 buffers, not ``12 * L``: the host cost
of a jitted call grows with its buffers (``experiments/results/slot_load.md``)."""


class Attention(Protocol):
    """Attention over one step's tokens. Implementations own the KV state they thread through."""

    def __call__(
        self,
        layer: int,
        q: jax.Array,  # [T, Hq, D] (rotary applied)
        k: jax.Array,  # [T, Hkv, D] (rotary applied)
        v: jax.Array,  # [T, Hkv, D]
        kv_state,
    ) -> tuple[jax.Array, object]:  # o [T, Hq, D], new kv_state
        ...


@dataclass(frozen=True)
class SegmentAttention:
    """Causal attention among the tokens of the same sequence within the step (no cache).

    ``seq_ids`` names each token's sequence; padding tokens carry -1 and see only themselves, so
    their rows stay finite and are ignored.
    """

    seq_ids: jax.Array  # [T] int32
    positions: jax.Array  # [T] int32

    def __call__(self, layer, q, k, v, kv_state):
        mask = (self.seq_ids[:, None] == self.seq_ids[None, :]) & (
            self.positions[None, :] <= self.positions[:, None]
        )
        mask = mask | jnp.eye(q.shape[0], dtype=bool)
        return dense_attention(q, k, v, mask), kv_state


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm computed in float32, scaled in the input dtype, as transformers does."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight * x32.astype(x.dtype)


def rotary(
    x: jax.Array,  # [T, H, D]
    positions: jax.Array,  # [T]
    inv_freq: np.ndarray,  # [D/2]
) -> jax.Array:  # [T, H, D]
    """Rotary embedding in the 'rotate half' layout of Hugging Face checkpoints."""
    angles = positions.astype(jnp.float32)[:, None] * jnp.asarray(inv_freq, jnp.float32)[None, :]
    emb = jnp.concatenate([angles, angles], axis=-1)  # [T, D]
    cos = jnp.cos(emb).astype(x.dtype)[:, None, :]
    sin = jnp.sin(emb).astype(x.dtype)[:, None, :]
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _linear(x: jax.Array, w: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    y = jnp.dot(x, w, preferred_element_type=jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype)


def fused_column_order(sizes: tuple[int, ...], tp: int) -> np.ndarray:  # [sum(sizes)] int
    """Column order of a fused projection stored for ``tp`` shards.

    Stored column ``c`` holds column ``order[c]`` of the plain concatenation ``m0 | m1 | ...`` of
    the modules of sizes ``sizes``: shard ``j``'s block is ``m0[j] | m1[j] | ...``, each module's
    ``j``-th of ``tp`` even slices. ``tp == 1`` is the identity (the layout without parallelism).
    """
    if any(s % tp for s in sizes):
        raise ValueError(f"fused sizes {sizes} are not all divisible by tp={tp}")
    offsets = np.cumsum((0, *sizes[:-1]))
    return np.concatenate(
        [
            np.arange(off + j * (s // tp), off + (j + 1) * (s // tp))
            for j in range(tp)
            for off, s in zip(offsets, sizes, strict=True)
        ]
    )


def forward(
    params: LlamaParams,
    cfg: ModelConfig,
    tokens: jax.Array,  # [T] int32
    positions: jax.Array,  # [T] int32
    attention: Attention,
    kv_state=None,
    lora: LoraSlots | None = None,
    lora_batch: LoraBatch | None = None,
    lora_backend: str = "xla",
    tp_axis: str | None = None,
) -> tuple[jax.Array, object]:  # hidden [T, d] (final-normed), new kv_state
    """Run the decoder over one step's tokens. Call :func:`logits` on the rows you need.

    ``tp_axis``: the mesh axis when this runs as one tensor-parallel shard (``cfg`` then is the
    shard's config and the params, LoRA buffers and KV state the shard's slices); None otherwise.
    """
    inv_freq = cfg.rope.inv_freq(cfg.head_dim)
    t = tokens.shape[0]
    h = params.embed[tokens]  # [T, d]

    def add_lora(y: jax.Array, x: jax.Array, layer: int, group: str, sizes) -> jax.Array:
        if lora is None:
            return y
        delta = lora_group_delta(
            x, lora[group], lora_batch, sizes, backend=lora_backend, layer=layer
        )
        return y + delta

    def row_parallel(x: jax.Array, w: jax.Array, bias, layer: int, group: str) -> jax.Array:
        sizes = (cfg.hidden_size,)
        if tp_axis is None:
            return add_lora(_linear(x, w, bias), x, layer, group, sizes)
        # The shard holds a slice of the input dim, so its matmul and its LoRA shrink are partial
        # sums: expand the partial shrink with the whole (replicated) B, add it to the partial
        # matmul and all-reduce once, in the activations' dtype (as Megatron does). The bias goes
        # in once, after the reduction.
        y = jax.lax.psum(add_lora(_linear(x, w), x, layer, group, sizes), tp_axis)
        if bias is None:
            return y
        return (y.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)

    qkv_sizes = (cfg.q_size, cfg.kv_size, cfg.kv_size)
    # The named scopes label each role's ops in profiles (TensorBoard, experiments/profile_decode).
    for i, lp in enumerate(params.layers):
        with jax.named_scope("attention_norm"):
            x = rms_norm(h, lp.input_norm, cfg.rms_norm_eps)
        with jax.named_scope("qkv"):
            qkv = add_lora(_linear(x, lp.w_qkv, lp.b_qkv), x, i, "qkv", qkv_sizes)
        with jax.named_scope("rotary"):
            q, k, v = jnp.split(qkv, [cfg.q_size, cfg.q_size + cfg.kv_size], axis=-1)
            q = rotary(q.reshape(t, cfg.num_heads, cfg.head_dim), positions, inv_freq)
            k = rotary(k.reshape(t, cfg.num_kv_heads, cfg.head_dim), positions, inv_freq)
            v = v.reshape(t, cfg.num_kv_heads, cfg.head_dim)
        with jax.named_scope("attention"):
            attn, kv_state = attention(i, q, k, v, kv_state)
        with jax.named_scope("o"):
            attn = attn.reshape(t, cfg.q_size)
            h = h + row_parallel(attn, lp.w_o, lp.b_o, i, "o")

        with jax.named_scope("mlp_norm"):
            x = rms_norm(h, lp.post_attn_norm, cfg.rms_norm_eps)
        with jax.named_scope("gate_up"):
            gate_up = add_lora(
                _linear(x, lp.w_gate_up), x, i, "gate_up", (cfg.intermediate_size,) * 2
            )
        with jax.named_scope("act"):
            gate, up = jnp.split(gate_up, 2, axis=-1)
            act = (jax.nn.silu(gate.astype(jnp.float32)) * up.astype(jnp.float32)).astype(h.dtype)
        with jax.named_scope("down"):
            h = h + row_parallel(act, lp.w_down, None, i, "down")

    return rms_norm(h, params.final_norm, cfg.rms_norm_eps), kv_state


def logits(
    params: LlamaParams, hidden: jax.Array, tp_axis: str | None = None
) -> jax.Array:  # hidden [N, d] -> [N, V] f32
    """Next-token logits (float32) of final-normed hidden rows.

    As a tensor-parallel shard (``tp_axis``), an untied ``lm_head`` holds the shard's slice of the
    vocabulary: its logits are all-gathered so that every shard samples from the whole row. A
    vocabulary that the shards do not divide is padded with zero columns up to a multiple of
    ``tp_size`` (:func:`models.weights.padded_vocab`, as vLLM pads its vocabulary shards); the
    padded logits are cut off here, so they are never sampled or scored. A tied head reads the
    embedding, which is replicated.
    """
    if params.lm_head is None:
        return jnp.einsum("nd,vd->nv", hidden, params.embed, preferred_element_type=jnp.float32)
    out = jnp.dot(hidden, params.lm_head, preferred_element_type=jnp.float32)
    if tp_axis is None:
        return out
    out = jax.lax.all_gather(out, tp_axis, axis=1, tiled=True)
    return out[:, : params.embed.shape[0]]  # the real vocabulary (the embedding is never padded)
