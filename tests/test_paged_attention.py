"""The paged decode attention kernel (interpret mode on the CPU) against its XLA reference, and the
engine's greedy outputs with ``attention_backend="pallas"`` against ``"xla"``."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jlora.config import EngineConfig
from jlora.engine import Engine
from jlora.kernels.paged_attention import (
    DecodeAttentionBlocks,
    paged_decode_attention_gpu,
    paged_decode_attention_ref,
    validate_decode_attention_inputs,
)
from jlora.sampling_params import SamplingParams


def _case(rng, lens, *, hq, hkv, d=16, page_size=4, table_pages=8, layers=3, dtype=jnp.float32):
    """A cache whose pages outside every table, and rows past every length, hold NaN: the kernel
    must read neither into its result."""
    b = len(lens)
    num_pages = b * table_pages + 2
    shape = (layers, num_pages, page_size, hkv, d)
    k_cache = np.full(shape, np.nan, np.float32)
    v_cache = np.full(shape, np.nan, np.float32)
    table = np.zeros((b, table_pages), np.int32)  # page 0: the trash page, NaN too
    free = list(rng.permutation(np.arange(1, num_pages)))
    for i, n in enumerate(lens):
        cached = max(n - 1, 0)
        used = -(-cached // page_size)
        table[i, :used] = [free.pop() for _ in range(used)]
        for j in range(cached):
            page, row = table[i, j // page_size], j % page_size
            k_cache[:, page, row] = rng.normal(size=(layers, hkv, d))
            v_cache[:, page, row] = rng.normal(size=(layers, hkv, d))
    q = rng.normal(size=(b, hq, d))
    k_new, v_new = rng.normal(size=(2, b, hkv, d))
    arrays = (q, k_new, v_new, k_cache, v_cache)
    return (
        *(jnp.asarray(a, dtype) for a in arrays),
        jnp.asarray(table),
        jnp.asarray(lens, jnp.int32),
    )


def _reference(q, k_new, v_new, k_cache, v_cache, layer, table, lens):
    # The reference gathers whole pages, NaN rows included: give it a NaN-free copy of the cache.
    clean = (jnp.nan_to_num(k_cache), jnp.nan_to_num(v_cache))
    return paged_decode_attention_ref(q, k_new, v_new, *clean, layer, table, lens)


@pytest.mark.parametrize(
    "hq,hkv,lens,blocks",
    [
        (8, 2, [1, 2, 5, 17, 32], None),  # no cached token, page boundaries, a full table
        (8, 2, [0, 9, 29], DecodeAttentionBlocks(pages_per_block=1, splits=1)),  # a padding row
        (4, 4, [3, 16, 31], DecodeAttentionBlocks(pages_per_block=2, splits=4)),  # no GQA
        (
            16,
            2,
            [12, 25],
            DecodeAttentionBlocks(pages_per_block=4, splits=2),
        ),  # 8 heads per KV head
        (8, 1, [7] * 3, DecodeAttentionBlocks(pages_per_block=8, splits=1)),  # one block: the table
    ],
)
def test_kernel_matches_reference(hq, hkv, lens, blocks):
    rng = np.random.default_rng(len(lens) * hq)
    q, k_new, v_new, k_cache, v_cache, table, seq_lens = _case(rng, lens, hq=hq, hkv=hkv)
    for layer in (0, 2):
        want = _reference(q, k_new, v_new, k_cache, v_cache, layer, table, seq_lens)
        got = paged_decode_attention_gpu(
            q, k_new, v_new, k_cache, v_cache, layer, table, seq_lens, blocks=blocks, interpret=True
        )
        assert got.shape == q.shape and bool(jnp.isfinite(got).all())
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)


def test_kernel_bfloat16():
    rng = np.random.default_rng(1)
    args = _case(rng, [4, 30, 11, 1], hq=8, hkv=2, dtype=jnp.bfloat16)
    q, k_new, v_new, k_cache, v_cache, table, seq_lens = args
    want = _reference(q, k_new, v_new, k_cache, v_cache, 1, table, seq_lens)
    got = paged_decode_attention_gpu(
        q, k_new, v_new, k_cache, v_cache, 1, table, seq_lens, interpret=True
    )
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=2e-2, atol=2e-2
    )


def test_validator_names_the_bad_input():
    rng = np.random.default_rng(2)
    q, k_new, v_new, k_cache, v_cache, table, seq_lens = _case(rng, [3, 5], hq=8, hkv=2)
    with pytest.raises(ValueError, match="Hq=7"):
        validate_decode_attention_inputs(q[:, :7], k_new, v_new, k_cache, v_cache, table, seq_lens)
    with pytest.raises(ValueError, match="k_new shape"):
        validate_decode_attention_inputs(q, k_new[:1], v_new, k_cache, v_cache, table, seq_lens)
    with pytest.raises(ValueError, match="page_table must be int32"):
        validate_decode_attention_inputs(
            q, k_new, v_new, k_cache, v_cache, table.astype(jnp.float32), seq_lens
        )
    with pytest.raises(ValueError, match="seq_lens shape"):
        validate_decode_attention_inputs(q, k_new, v_new, k_cache, v_cache, table, seq_lens[:1])


def test_attention_backend_setting():
    with pytest.raises(ValueError, match="attention_backend='flash'"):
        EngineConfig(model="tiny", attention_backend="flash")
    config = EngineConfig(model="tiny", attention_backend="pallas")
    with pytest.raises(ValueError, match="no TPU kernel"):
        config.resolved_attention_backend("tpu")
    assert EngineConfig(model="tiny").resolved_attention_backend("gpu") == "pallas"
    assert EngineConfig(model="tiny").resolved_attention_backend("cpu") == "xla"


def test_defaults_follow_the_platform():
    """The fastest settings by default on a GPU (LoRA kernels, overlap scheduling); the reference
    paths elsewhere; an explicit setting wins."""
    config = EngineConfig(model="tiny")
    assert config.resolved_lora_backend("gpu") == "pallas"
    assert config.resolved_lora_backend("cpu") == config.resolved_lora_backend("tpu") == "xla"
    assert config.resolved_overlap_schedule("gpu") and not config.resolved_overlap_schedule("cpu")
    explicit = EngineConfig(model="tiny", lora_backend="xla", overlap_schedule=False)
    assert explicit.resolved_lora_backend("gpu") == "xla"
    assert not explicit.resolved_overlap_schedule("gpu")


def test_engine_greedy_tokens_equal_across_attention_backends():
    """Continuous batching with both attention kernels (interpret mode) gives the xla backend's
    tokens: requests of different lengths, adapters and arrival steps, long prompts prefilled in
    chunks (the prefill kernel's prefix)."""

    def run(backend: str) -> list[list[int]]:
        engine = Engine(
            EngineConfig(
                model="tiny",
                dtype="float32",
                lora_paths={"a": "dummy:8", "b": "dummy:4"},
                max_loras_per_batch=2,
                max_lora_rank=8,
                context_length=96,
                page_size=4,
                max_running_requests=4,
                max_prefill_tokens=64,
                chunked_prefill_size=16,
                decode_batch_buckets=(4,),
                warmup=False,
                attention_backend=backend,
            )
        )
        rng = np.random.default_rng(3)
        params = SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)
        rids = []
        for i, (n, name) in enumerate([(5, "a"), (23, None), (2, "b"), (40, "a"), (9, "b")]):
            rids.append(
                engine.add_request(rng.integers(0, 256, n).tolist(), params, lora_name=name)
            )
            if i % 2:
                engine.step()
        outputs = {}
        while engine.has_unfinished():
            for out in engine.step():
                outputs[out.rid] = out.token_ids
        return [outputs[r] for r in rids]

    assert run("pallas") == run("xla")
