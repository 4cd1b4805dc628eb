"""The multi-LoRA reference math (``lora_backend="xla"``): the oracle every kernel must match.

For one module group (see :mod:`jlora.kernels.types`) and a batch of ``T`` tokens::

    y[t, off_m : off_m + out_m] = scale[s, m] * (x[t] @ a[s, m].T) @ b[s, off_m : off_m + out_m].T

with ``s = token_slot[t]``, and ``y[t] = 0`` for a token with no adapter (``NO_SLOT``). Ranks below
the padded rank ``R`` are zeros in ``a`` and ``b``, so the padding adds nothing.

The reference is a one-hot einsum over all slots, the method other JAX engines use in production:
exact and simple, but it reads every slot's weights for every token and pays the padded rank, which
is what the Pallas kernels avoid.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jlora.kernels.types import LoraBatch, LoraGroup


def lora_group_ref(
    x: jax.Array,  # [T, d_in]
    group: LoraGroup,  # a [S, M, R, d_in], b [S, O, R], scale [S, M]
    batch: LoraBatch,  # token_slot [T]
    out_sizes: tuple[int, ...],  # M sizes summing to O
) -> jax.Array:  # [T, O], x.dtype
    """LoRA delta of a module group for tokens of mixed slots (one-hot einsum)."""
    num_slots = group.a.shape[0]
    # one_hot of NO_SLOT (-1) is all zeros, so tokens without an adapter get exactly 0.
    onehot = jax.nn.one_hot(batch.token_slot, num_slots, dtype=jnp.float32)  # [T, S]
    h = jnp.einsum("td,smrd->tsmr", x, group.a, preferred_element_type=jnp.float32)
    h = h * jnp.einsum("ts,sm->tsm", onehot, group.scale.astype(jnp.float32))[..., None]
    h = h.astype(group.b.dtype)
    outs, off = [], 0
    for m, size in enumerate(out_sizes):
        b_m = group.b[:, off : off + size, :]  # [S, out_m, R]
        outs.append(
            jnp.einsum("tsr,sor->to", h[:, :, m, :], b_m, preferred_element_type=jnp.float32)
        )
        off += size
    return jnp.concatenate(outs, axis=-1).astype(x.dtype)


def lora_group_loop_ref(
    x: jax.Array,  # [T, d_in]
    group: LoraGroup,
    batch: LoraBatch,
    out_sizes: tuple[int, ...],
) -> jax.Array:  # [T, O] float32
    """Per-token float32 gather form of the same math: an independent second oracle for tests."""
    slot = batch.token_slot
    safe = jnp.maximum(slot, 0)
    a_t = group.a[safe].astype(jnp.float32)  # [T, M, R, d_in]
    b_t = group.b[safe].astype(jnp.float32)  # [T, O, R]
    scale_t = group.scale[safe].astype(jnp.float32)  # [T, M]
    h = jnp.einsum("td,tmrd->tmr", x.astype(jnp.float32), a_t) * scale_t[..., None]
    outs, off = [], 0
    for m, size in enumerate(out_sizes):
        outs.append(jnp.einsum("tr,tor->to", h[:, m], b_t[:, off : off + size]))
        off += size
    y = jnp.concatenate(outs, axis=-1)
    return jnp.where((slot >= 0)[:, None], y, 0.0)
