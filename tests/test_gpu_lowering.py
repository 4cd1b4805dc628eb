"""The GPU kernels lowered for CUDA on this CPU-only machine (no GPU needed).

Interpret mode runs a kernel's jaxpr as ordinary JAX ops, so a construct that Pallas' Triton
lowering rejects (a select whose operands it cannot match, an unsupported op) passes every
interpret-mode test and fails only on a GPU. Lowering for the ``cuda`` platform runs that lowering
here: each test traces the kernel as the GPU would compile it, at the engine's kinds of shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jlora.kernels import LoraGroup, make_lora_batch
from jlora.kernels.lora_gpu import lora_group_gpu
from jlora.kernels.paged_attention import DecodeAttentionBlocks, paged_decode_attention_gpu
from jlora.kernels.prefill_attention import PrefillAttentionBlocks, prefill_attention_gpu
from tests.test_kernels import DOWN, GATE_UP, O_PROJ, QKV, make_group, routing


def _lower_for_cuda(fn, *args) -> str:
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize("splits", [1, 2])
def test_paged_decode_attention_lowers_for_cuda(splits):
    b, hq, hkv, d, ps = 4, 32, 8, 128, 16
    q = jnp.zeros((b, hq, d), jnp.bfloat16)
    k_new = jnp.zeros((b, hkv, d), jnp.bfloat16)
    cache = jnp.zeros((2, 16, ps, hkv, d), jnp.bfloat16)
    table = jnp.zeros((b, 8), jnp.int32)
    seq_lens = jnp.ones(b, jnp.int32)
    blocks = DecodeAttentionBlocks(pages_per_block=4, splits=splits)
    text = _lower_for_cuda(
        lambda *a: paged_decode_attention_gpu(*a, blocks=blocks),
        q,
        k_new,
        k_new,
        cache,
        cache,
        1,
        table,
        seq_lens,
    )
    assert "paged_decode_attention" in text


@pytest.mark.parametrize(
    "num_tokens, blocks", [(2048, None), (100, PrefillAttentionBlocks(32, 64))]
)
def test_prefill_attention_lowers_for_cuda(num_tokens, blocks):
    """Llama-3.1-8B's heads, traced from shapes alone."""
    hq, hkv, d = 32, 8, 128
    q = jax.ShapeDtypeStruct((num_tokens, hq, d), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((num_tokens, hkv, d), jnp.bfloat16)
    prefix = jax.ShapeDtypeStruct((1024, hkv, d), jnp.bfloat16)
    ids = jax.ShapeDtypeStruct((num_tokens,), jnp.int32)
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    text = _lower_for_cuda(
        lambda *a: prefill_attention_gpu(*a, blocks=blocks),
        q,
        k,
        k,
        prefix,
        prefix,
        ids,
        ids,
        scalar,
        scalar,
    )
    assert "prefill_attention" in text


@pytest.mark.parametrize("shape", [QKV, O_PROJ, GATE_UP, DOWN], ids=["qkv", "o", "gate_up", "down"])
@pytest.mark.parametrize("num_tokens", [1, 64])
def test_lora_kernels_lower_for_cuda(shape, num_tokens):
    rng = np.random.default_rng(0)
    ranks = (8, 16, 0, 4, 32)
    d_in, out_sizes = shape
    group = make_group(rng, ranks, 32, d_in, out_sizes)
    kind = "mixed" if num_tokens > 2 else "uniform"
    batch = make_lora_batch(routing(rng, num_tokens, ranks, kind), np.array(ranks, np.int32))
    x = jnp.zeros((num_tokens, d_in), jnp.bfloat16)
    text = _lower_for_cuda(
        lambda x, g, b: lora_group_gpu(x, g, b, out_sizes, interpret=False), x, group, batch
    )
    assert "lora" in text


@pytest.mark.parametrize("num_tokens", [1, 64, 256])
@pytest.mark.parametrize(
    "d_in, out_sizes",
    [(4096, (4096, 1024, 1024)), (4096, (4096,)), (4096, (14336, 14336)), (14336, (4096,))],
    ids=["qkv", "o", "gate_up", "down"],
)
def test_tuned_llama_blocks_lower_for_cuda(num_tokens, d_in, out_sizes):
    """The Llama-3.1-8B groups with the tuned blocks the H100 runs (split MLP groups at decode
    sizes), traced from shapes alone: nothing of that size is allocated."""
    slots, rank = 3, 16
    group = LoraGroup(
        a=jax.ShapeDtypeStruct((slots, len(out_sizes), rank, d_in), jnp.bfloat16),
        b=jax.ShapeDtypeStruct((slots, sum(out_sizes), rank), jnp.bfloat16),
        scale=jax.ShapeDtypeStruct((slots, len(out_sizes)), jnp.float32),
    )
    token_slot = (np.arange(num_tokens) * slots // num_tokens).astype(np.int32)  # contiguous runs
    batch = make_lora_batch(token_slot, np.full(slots, rank))
    batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), batch)
    x = jax.ShapeDtypeStruct((num_tokens, d_in), jnp.bfloat16)
    text = _lower_for_cuda(
        lambda x, g, b: lora_group_gpu(x, g, b, out_sizes, interpret=False), x, group, batch
    )
    assert "lora" in text
