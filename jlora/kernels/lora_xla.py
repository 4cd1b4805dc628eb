"""The multi-LoRA reference math (``lora_backend="xla"``): the oracle every kernel must match.

For one module group (see :mod:`jlora.kernels.types`) and a batch of ``T`` tokens::

    y[t, off_m : off_m + out_m] = scale[s, m] * (x[t] @ a[s, m].T) @ b[s, off_m : off_m + out_m].T

with ``s = token_slot[t]``, and ``y[t] = 0`` for a token with no adapter (``NO_SLOT``). Ranks below
the padded rank ``R`` are zeros in ``a`` and ``b``, so the padding adds nothing.

The reference is a one-hot einsum over all slots, the method other JAX engines use in production:
exact and simple, but it reads every slot's weights for every token and pays the padded rank, which
is what the Pallas kernels avoid. What sits in a slot that no token of the batch uses is never
read into the result: such slots are masked out with ``where`` before the einsums (a product
``0 x NaN`` would otherwise turn one bad adapter's NaN or Inf into every token's output), and the
first einsum's rows of other slots are selected away, not multiplied by zero.
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
    """LoRA delta of a module group for tokens of mixed slots (one-hot einsum; slots no token
    uses are masked out, so their content, NaN included, never reaches the result)."""
    num_slots = group.a.shape[0]
    # one_hot of NO_SLOT (-1) is all zeros, so tokens without an adapter get exactly 0.
    mine = batch.token_slot[:, None] == jnp.arange(num_slots)[None, :]  # [T, S]
    used = jnp.any(mine, axis=0)  # [S]: slots some token of the batch reads
    a = jnp.where(used[:, None, None, None], group.a, 0)
    b = jnp.where(used[:, None, None], group.b, 0)
    scale = jnp.where(used[:, None], group.scale.astype(jnp.float32), 0.0)  # [S, M]
    h = jnp.einsum("td,smrd->tsmr", x, a, preferred_element_type=jnp.float32)
    h = jnp.where(mine[:, :, None, None], h * scale[None, :, :, None], 0.0)
    h = h.astype(group.b.dtype)
    outs, off = [], 0
    for m, size in enumerate(out_sizes):
        b_m = b[:, off : off + size, :]  # [S, out_m, R]
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
