"""A step's host inputs packed into one int32 buffer come back bit for bit inside jit."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jlora.runner.host_inputs import pack, stage, unpack
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


def test_stage_writes_in_place_at_one_address():
    """The staging buffer is updated in place: the step that reads it finds it at the same
    address every time (what keeps the step's CUDA graph from being rewritten on GPU)."""
    staging = jax.numpy.full(12, -7, jax.numpy.int32)
    address = staging.unsafe_buffer_pointer()
    for n in (5, 3, 5):
        packed = np.arange(n, dtype=np.int32) + 10 * n
        fed_back = np.array([-1, -2], np.int32) * n
        staging = stage(staging, packed, fed_back)
        assert staging.unsafe_buffer_pointer() == address
        # read through a copy: a numpy view of the buffer would keep it from being donated
        got = np.asarray(staging + 0)
        np.testing.assert_array_equal(got[:n], packed)
        np.testing.assert_array_equal(got[n : n + 2], fed_back)
    assert got[7:].tolist() == [-7] * 5  # never written
