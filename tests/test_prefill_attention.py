"""The prefill flash-attention kernel (interpret mode on the CPU) against its dense reference."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jlora.kernels.prefill_attention import (
    PrefillAttentionBlocks,
    prefill_attention_gpu,
    prefill_attention_ref,
    validate_prefill_attention_inputs,
)


def _case(rng, lens, num_tokens, *, hq, hkv, d=16, num_prefix=48, prefix=(None, 0), dtype=None):
    """A step packing sequences of ``lens`` (in shuffled order, padding after them) into
    ``num_tokens``; sequence ``prefix[0]`` continues after ``prefix[1]`` tokens in the prefix. The
    prefix rows past ``prefix[1]`` hold NaN, which the kernel must never read into a result."""
    dtype = dtype or jnp.float32
    seq = np.full(num_tokens, -1, np.int32)
    pos = np.zeros(num_tokens, np.int32)
    off = 0
    for i in rng.permutation(len(lens)):
        start = prefix[1] if i == prefix[0] else 0
        seq[off : off + lens[i]] = i
        pos[off : off + lens[i]] = np.arange(start, start + lens[i])
        off += lens[i]
    q = rng.normal(size=(num_tokens, hq, d))
    k, v = rng.normal(size=(2, num_tokens, hkv, d))
    pk, pv = rng.normal(size=(2, num_prefix, hkv, d))
    pk_nan, pv_nan = pk.copy(), pv.copy()
    pk_nan[prefix[1] :] = np.nan
    pv_nan[prefix[1] :] = np.nan
    step = (seq, pos, np.int32(prefix[1]), np.int32(-2 if prefix[0] is None else prefix[0]))
    clean = [jnp.asarray(a, dtype) for a in (q, k, v, pk, pv)]
    dirty = [jnp.asarray(a, dtype) for a in (q, k, v, pk_nan, pv_nan)]
    return clean, dirty, [jnp.asarray(a) for a in step]


@pytest.mark.parametrize(
    "lens, num_tokens, hq, hkv, prefix, blocks",
    [
        ([5, 30, 17], 64, 4, 2, (1, 20), PrefillAttentionBlocks(16, 16)),  # a continuing sequence
        ([64], 64, 8, 2, (None, 0), PrefillAttentionBlocks(16, 16)),  # one full sequence
        (
            [3, 9, 40, 1],
            70,
            4,
            4,
            (2, 33),
            PrefillAttentionBlocks(16, 16),
        ),  # T not a block multiple
        ([20, 20], 48, 8, 1, (None, 0), PrefillAttentionBlocks(16, 32)),  # block_k > block_q
        ([7, 50], 64, 4, 2, (0, 47), PrefillAttentionBlocks(32, 16)),  # block_q > block_k
        ([12, 3], 64, 4, 2, (1, 5), None),  # the default tiling, mostly padding
    ],
)
def test_kernel_matches_reference(lens, num_tokens, hq, hkv, prefix, blocks):
    rng = np.random.default_rng(num_tokens + hq)
    clean, dirty, step = _case(rng, lens, num_tokens, hq=hq, hkv=hkv, prefix=prefix)
    want = prefill_attention_ref(*clean, *step)
    got = prefill_attention_gpu(*dirty, *step, blocks=blocks, interpret=True)
    assert got.shape == clean[0].shape and bool(jnp.isfinite(got).all())
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)


def test_kernel_bfloat16():
    rng = np.random.default_rng(1)
    clean, dirty, step = _case(
        rng, [10, 33, 4], 64, hq=8, hkv=2, prefix=(1, 30), dtype=jnp.bfloat16
    )
    want = prefill_attention_ref(*clean, *step)
    got = prefill_attention_gpu(
        *dirty, *step, blocks=PrefillAttentionBlocks(16, 16), interpret=True
    )
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=2e-2, atol=2e-2
    )


def test_validator_names_the_bad_input():
    rng = np.random.default_rng(2)
    (q, k, v, pk, pv), _, (seq, pos, _, _) = _case(rng, [3, 5], 16, hq=8, hkv=2)
    with pytest.raises(ValueError, match="Hq=7"):
        validate_prefill_attention_inputs(q[:, :7], k, v, pk, pv, seq, pos)
    with pytest.raises(ValueError, match="v shape"):
        validate_prefill_attention_inputs(q, k, v[:1], pk, pv, seq, pos)
    with pytest.raises(ValueError, match="prefix_k shape"):
        validate_prefill_attention_inputs(q, k, v, pk[:, :1], pv, seq, pos)
    with pytest.raises(ValueError, match="seq_ids must be int32"):
        validate_prefill_attention_inputs(q, k, v, pk, pv, seq.astype(jnp.float32), pos)
    with pytest.raises(ValueError, match="positions shape"):
        validate_prefill_attention_inputs(q, k, v, pk, pv, seq, pos[:3])
