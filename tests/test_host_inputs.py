"""A step's host inputs packed into one int32 buffer come back bit for bit inside jit."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jlora.runner.host_inputs import pack, unpack
from jlora.runner.sampling import SamplingInputs


def test_pack_roundtrip_under_jit():
    rng = np.random.default_rng(0)
    sampling = SamplingInputs(
        temperature=np.array([0.0, 0.7, -0.0, np.inf], np.float32),
        top_p=rng.random(4, dtype=np.float32),
        top_k=np.array([1, 5, 128256, 2], np.int32),
        seed=np.array([0, 2**32 - 1, 7, 2**31], np.uint32),
        step=np.arange(4, dtype=np.int32),
    )
    tree = (np.arange(6, dtype=np.int32).reshape(2, 3), sampling, np.int32(-2))
    packed, spec = pack(tree)
    assert packed.dtype == np.int32 and packed.shape == (6 + 5 * 4 + 1,)
    got = jax.jit(unpack, static_argnums=1)(packed, spec)
    for want, have in zip(jax.tree.leaves(tree), jax.tree.leaves(got), strict=True):
        assert have.dtype == np.asarray(want).dtype and have.shape == np.shape(want)
        bits = [np.asarray(x).reshape(-1).view(np.uint8) for x in (have, want)]
        np.testing.assert_array_equal(*bits)


def test_pack_refuses_other_widths():
    with pytest.raises(ValueError, match="float64"):
        pack((np.zeros(3, np.float64),))
