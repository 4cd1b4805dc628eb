"""The online softmax the attention kernels fold key blocks with (flash attention's recurrence),
one place for both :mod:`jlora.kernels.paged_attention` (decode) and
:mod:`jlora.kernels.prefill_attention` (prefill). Traced inside Pallas kernels."""

from __future__ import annotations

import jax
import jax.numpy as jnp

MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)
"""The score of a masked key: finite, so that a block with every key masked stays NaN-free."""

Carry = tuple[jax.Array, jax.Array, jax.Array]
"""(acc [rows, D] float32, running max [rows], denominator [rows])."""


def init(rows: int, head_dim: int) -> Carry:
    """The running state before any key block."""
    return (
        jnp.zeros((rows, head_dim), jnp.float32),
        jnp.full((rows,), MASKED, jnp.float32),
        jnp.zeros((rows,), jnp.float32),
    )


def fold_block(
    carry: Carry,
    q: jax.Array,  # [rows, D]
    k: jax.Array,  # [N, D]
    v: jax.Array,  # [N, D], rows no query may see already finite (0 * inf is NaN)
    mask: jax.Array,  # [rows, N] or [1, N] bool, True = may attend
    scale: float,
) -> Carry:
    """Fold one block of ``N`` keys into the running state of a block of queries."""
    acc, m, denom = carry
    scores = jnp.dot(q, k.T, preferred_element_type=jnp.float32) * scale  # [rows, N]
    scores = jnp.where(mask, scores, MASKED)
    m_next = jnp.maximum(m, scores.max(axis=-1))
    correction = jnp.exp(m - m_next)
    p = jnp.where(mask, jnp.exp(scores - m_next[:, None]), 0.0)
    denom_next = denom * correction + p.sum(axis=-1)
    acc_next = acc * correction[:, None] + jnp.dot(
        p.astype(v.dtype), v, preferred_element_type=jnp.float32
    )
    return acc_next, m_next, denom_next
