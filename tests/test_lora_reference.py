"""The XLA reference (one-hot einsum) against an independent per-token float32 loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jlora.kernels.lora_xla import lora_group_loop_ref, lora_group_ref
from jlora.kernels.types import NO_SLOT, LoraGroup, make_lora_batch


@pytest.mark.parametrize("out_sizes", [(24,), (32, 8, 8)])
def test_one_hot_reference_matches_per_token_loop(out_sizes):
    key = jax.random.key(0)
    s, r, d, t = 4, 8, 16, 37
    k = jax.random.split(key, 4)
    group = LoraGroup(
        a=jax.random.normal(k[0], (s, len(out_sizes), r, d)),
        b=jax.random.normal(k[1], (s, sum(out_sizes), r)),
        scale=jax.random.uniform(k[2], (s, len(out_sizes))) + 0.5,
    )
    slots = np.sort(np.random.default_rng(0).integers(-1, s, t)).astype(np.int32)
    batch = make_lora_batch(slots, np.full(s, r))
    x = jax.random.normal(k[3], (t, d))
    got = lora_group_ref(x, group, batch, out_sizes)
    want = lora_group_loop_ref(x, group, batch, out_sizes)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
    assert not np.asarray(got)[slots == NO_SLOT].any()  # no adapter: exactly zero


def test_make_lora_batch_refuses_bad_slots():
    with pytest.raises(ValueError, match=r"token_slot values \[5\] outside \[-1, 4\)"):
        make_lora_batch(np.array([0, 5]), np.zeros(4))
    with pytest.raises(ValueError, match="1-D"):
        make_lora_batch(jnp.zeros((2, 2)), np.zeros(4))
