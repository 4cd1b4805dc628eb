"""The Pallas LoRA kernels against the references, in interpret mode on the CPU.

Every kernel run writes into an output poisoned with NaN (``out=``, aliased into the kernel), so an
element the kernel forgets to write fails the test. Sweeps: decode token counts 1..256 and a
prefill of 2048 tokens (small d), batches uniform / mixed (with tokens without an adapter) / skewed
/ without any adapter, ranks 4..128 in one batch, padded ranks that are not powers of 2 or below
16, several tilings and both launch forms of the GPU kernel, and the TPU kernel under both the
generic interpreter and the TPU one (``pltpu.InterpretParams``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from jlora.kernels import LoraBatch, LoraGroup, lora_group_delta, make_lora_batch
from jlora.kernels.lora_gpu import lora_group_gpu, rank_buckets, ref_expand, ref_shrink
from jlora.kernels.lora_tpu import lora_group_tpu, work_list
from jlora.kernels.lora_xla import lora_group_loop_ref, lora_group_ref
from jlora.kernels.tuned_blocks import GpuBlocks, TpuBlocks, gpu_blocks
from jlora.kernels.types import NO_SLOT, SEG_PAD, lora_segments, segments_np
from jlora.kernels.validate import validate_group_inputs

# Small group shapes (d_in, out_sizes), one per kind of group of a decoder layer.
QKV = (64, (64, 16, 16))
O_PROJ = (64, (64,))
GATE_UP = (64, (96, 96))
DOWN = (160, (64,))  # d_in not a power of 2


def make_group(rng, ranks, max_rank, d_in, out_sizes, dtype=jnp.bfloat16) -> LoraGroup:
    """Random slot buffers, zero past each slot's rank (as the slot manager stores them)."""
    num_slots, m = len(ranks), len(out_sizes)
    a = rng.normal(size=(num_slots, m, max_rank, d_in)) / np.sqrt(d_in)
    b = rng.normal(size=(num_slots, sum(out_sizes), max_rank))
    for s, r in enumerate(ranks):
        a[s, :, r:] = 0.0
        b[s, :, r:] = 0.0
    scale = rng.uniform(0.5, 2.0, size=(num_slots, m))
    return LoraGroup(
        a=jnp.asarray(a, dtype), b=jnp.asarray(b, dtype), scale=jnp.asarray(scale, jnp.float32)
    )


def routing(rng, num_tokens: int, ranks, kind: str) -> np.ndarray:
    """Token slots in contiguous runs per slot, runs in a random slot order.

    uniform: every loaded adapter, even shares. mixed: some adapters plus tokens without an adapter
    before, between and after the runs. skewed: one adapter takes nearly all tokens. none: no
    adapter at all.
    """
    live = [s for s, r in enumerate(ranks) if r > 0]
    if kind == "none":
        return np.full(num_tokens, NO_SLOT, np.int32)
    if kind == "uniform":
        order = rng.permutation(live)
        return np.array([order[t * len(order) // num_tokens] for t in range(num_tokens)], np.int32)
    if kind == "skewed":
        order = list(rng.permutation(live))
        tail = order[1:4][: max(num_tokens - 1, 0)]  # one token each
        return np.array([order[0]] * (num_tokens - len(tail)) + tail, np.int32)
    assert kind == "mixed"
    count = max(1, min(len(live) - 1, (num_tokens - 1) // 2))
    order = list(rng.permutation(live))[:count]
    pieces = [NO_SLOT] + [v for s in order for v in (s, NO_SLOT)]
    cuts = np.sort(rng.choice(np.arange(1, num_tokens), len(pieces) - 1, replace=False))
    lengths = np.diff(np.concatenate([[0], cuts, [num_tokens]]))
    return np.concatenate([np.full(n, v, np.int32) for v, n in zip(pieces, lengths, strict=True)])


def oracle(x, group, batch, out_sizes) -> np.ndarray:
    return np.asarray(lora_group_loop_ref(x, group, batch, out_sizes))


def assert_matches(y, x, group, batch, out_sizes):
    """y (a kernel's bf16 output) against the float32 oracle; exact zeros without an adapter."""
    want = oracle(x, group, batch, out_sizes)
    got = np.asarray(jnp.asarray(y, jnp.float32))
    assert got.shape == want.shape
    assert np.isfinite(got).all(), "the kernel left elements of the poisoned output unwritten"
    scale = max(float(np.abs(want).max()), 1e-6)
    np.testing.assert_allclose(got, want, atol=2e-2 * scale, rtol=2e-2)
    slot = np.asarray(batch.token_slot)
    rank = np.asarray(batch.slot_rank)
    dead = (slot < 0) | (rank[np.maximum(slot, 0)] == 0)
    assert (got[dead] == 0).all(), "tokens without an adapter must get exactly zero"


def poison(num_tokens, out_sizes, dtype=jnp.bfloat16):
    return jnp.full((num_tokens, sum(out_sizes)), jnp.nan, dtype)


def case(seed, num_tokens, kind, shape, ranks=(8, 16, 0, 4, 32), max_rank=32):
    rng = np.random.default_rng(seed)
    d_in, out_sizes = shape
    group = make_group(rng, ranks, max_rank, d_in, out_sizes)
    batch = make_lora_batch(routing(rng, num_tokens, ranks, kind), np.array(ranks, np.int32))
    x = jnp.asarray(rng.normal(size=(num_tokens, d_in)), jnp.bfloat16)
    return x, group, batch, out_sizes


# ------------------------------------------------------------------------------------------------
# Routing metadata and validation.


def test_segments_of_a_batch():
    slot = np.array([-1, 2, 2, -1, 0, 0, 0, 1, 1, -1, 3, 3], np.int32)
    batch = make_lora_batch(slot, np.array([8, 0, 16, 4], np.int32))  # slot 1 is empty
    assert np.asarray(batch.seg_slot).tolist() == [2, 0, 3, NO_SLOT]
    assert np.asarray(batch.seg_start).tolist() == [1, 4, 10, SEG_PAD]
    assert np.asarray(batch.seg_end).tolist() == [3, 7, 12, SEG_PAD]


def test_segments_too_many_runs():
    with pytest.raises(ValueError, match="3 runs of adapter tokens but max_segments=2"):
        make_lora_batch(np.array([0, 1, 0], np.int32), np.array([4, 4], np.int32))
    batch = make_lora_batch(np.array([0, 1, 0]), np.array([4, 4]), max_segments=3)
    assert np.asarray(batch.seg_slot).tolist() == [0, 1, 0]


@pytest.mark.parametrize("seed", range(4))
def test_device_segments_match_the_builder(seed):
    rng = np.random.default_rng(seed)
    ranks = np.array([4, 0, 16, 8, 32, 0], np.int32)
    slot = routing(rng, 50, ranks, ["uniform", "mixed", "skewed", "none"][seed])
    host = segments_np(slot, ranks, len(ranks))
    bare = LoraBatch(token_slot=jnp.asarray(slot), slot_rank=jnp.asarray(ranks))
    for got, want in zip(lora_segments(bare), host, strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda x, g, b, o: (x[:, :-1], g, b, o), "does not match x d_in"),
        (lambda x, g, b, o: (x, g, b, (64, 16, 15)), "group.b shape"),
        (lambda x, g, b, o: (x, g, b, (64, 32)), "has 2 sizes for M=3"),
        (
            lambda x, g, b, o: (x, g, make_lora_batch(np.zeros(9), np.array([8, 16, 0, 4, 33])), o),
            r"slot_rank values \[33\] outside \[0, R=32\]",
        ),
        (
            lambda x, g, b, o: (x, g, LoraBatch(b.token_slot.at[0].set(7), b.slot_rank), o),
            r"token_slot values \[7\] outside \[-1, 5\)",
        ),
        (
            lambda x, g, b, o: (x, LoraGroup(g.a, g.b.astype(jnp.float32), g.scale), b, o),
            "group.a dtype bfloat16 != group.b dtype float32",
        ),
        (
            lambda x, g, b, o: (x, g, LoraBatch(b.token_slot, b.slot_rank, *reversed_segs(b)), o),
            "segment",
        ),
    ],
)
def test_validator_names_the_bad_value(mutate, needle):
    x, group, batch, out_sizes = case(0, 9, "uniform", QKV)
    with pytest.raises(ValueError, match=needle):
        validate_group_inputs(*mutate(x, group, batch, out_sizes))


def reversed_segs(batch):
    return batch.seg_slot[::-1], batch.seg_start[::-1], batch.seg_end[::-1]


def test_rank_buckets():
    assert rank_buckets(8) == (16,)
    assert rank_buckets(64) == (16, 32, 64)
    assert rank_buckets(48) == (16, 32, 64)
    assert rank_buckets(128) == (16, 32, 64, 128)


# ------------------------------------------------------------------------------------------------
# GPU kernel (Triton lowering), generic interpreter.

DECODE = [
    (1, "uniform", QKV),
    (1, "none", O_PROJ),
    (5, "mixed", GATE_UP),
    (16, "skewed", DOWN),
    (37, "mixed", QKV),
    (64, "uniform", GATE_UP),
    (64, "none", QKV),
    (130, "skewed", O_PROJ),
    (200, "mixed", DOWN),
    (256, "uniform", QKV),
]


@pytest.mark.parametrize("num_tokens, kind, shape", DECODE)
def test_gpu_decode_sweep(num_tokens, kind, shape):
    x, group, batch, out_sizes = case(num_tokens, num_tokens, kind, shape)
    y = lora_group_gpu(
        x, group, batch, out_sizes, interpret=True, out=poison(num_tokens, out_sizes)
    )
    assert_matches(y, x, group, batch, out_sizes)


TILINGS = [
    GpuBlocks(16, 32, 16, 32),  # many K steps and output blocks
    GpuBlocks(32, 16, 32, 64, split_k=2),  # split launch
    GpuBlocks(16, 64, 16, 16, split_k=5),  # more splits than K blocks: clamped, empty splits
    GpuBlocks(64, 1024, 256, 16384),  # prefill-style: whole-module chunks, long K step
]


@pytest.mark.parametrize("blocks", TILINGS, ids=lambda b: f"bt{b.block_t}-split{b.split_k}")
@pytest.mark.parametrize("num_tokens, kind, shape", [(23, "mixed", QKV), (70, "skewed", DOWN)])
def test_gpu_tilings(blocks, num_tokens, kind, shape):
    x, group, batch, out_sizes = case(3, num_tokens, kind, shape)
    y = lora_group_gpu(
        x, group, batch, out_sizes, blocks=blocks, interpret=True, out=poison(num_tokens, out_sizes)
    )
    assert_matches(y, x, group, batch, out_sizes)


@pytest.mark.parametrize("split_k", [0, 3])
def test_gpu_ranks_4_to_128_in_one_batch(split_k):
    ranks = (4, 8, 16, 32, 64, 128, 0)
    x, group, batch, out_sizes = case(5, 150, "mixed", QKV, ranks=ranks, max_rank=128)
    assert len(set(np.asarray(batch.seg_slot)) - {NO_SLOT}) >= 5
    blocks = GpuBlocks(16, 64, 32, 64, split_k=split_k)
    y = lora_group_gpu(
        x, group, batch, out_sizes, blocks=blocks, interpret=True, out=poison(150, out_sizes)
    )
    assert_matches(y, x, group, batch, out_sizes)


@pytest.mark.parametrize("max_rank, ranks", [(8, (8, 4, 0)), (48, (48, 20, 5))])
def test_gpu_padded_rank_not_a_bucket(max_rank, ranks):
    x, group, batch, out_sizes = case(6, 40, "uniform", GATE_UP, ranks=ranks, max_rank=max_rank)
    y = lora_group_gpu(x, group, batch, out_sizes, interpret=True, out=poison(40, out_sizes))
    assert_matches(y, x, group, batch, out_sizes)


def test_gpu_prefill_2048():
    shape = (32, (32, 16))
    x, group, batch, out_sizes = case(7, 2048, "mixed", shape, ranks=(8, 16, 0, 4), max_rank=16)
    blocks = GpuBlocks(64, 32, 32, 64)
    y = lora_group_gpu(
        x, group, batch, out_sizes, blocks=blocks, interpret=True, out=poison(2048, out_sizes)
    )
    assert_matches(y, x, group, batch, out_sizes)


def test_gpu_float32_is_tight():
    rng = np.random.default_rng(8)
    ranks = (8, 16, 0)
    group = make_group(rng, ranks, 16, 64, (32, 16), dtype=jnp.float32)
    batch = make_lora_batch(routing(rng, 30, ranks, "mixed"), np.array(ranks, np.int32))
    x = jnp.asarray(rng.normal(size=(30, 64)), jnp.float32)
    y = lora_group_gpu(x, group, batch, (32, 16), interpret=True)
    np.testing.assert_allclose(y, oracle(x, group, batch, (32, 16)), rtol=1e-5, atol=1e-5)


def test_split_references_compose_to_the_reference():
    x, group, batch, out_sizes = case(9, 33, "mixed", QKV)
    h = ref_shrink(x, group, batch)
    y = ref_expand(h, group, batch, out_sizes, x.dtype)
    np.testing.assert_array_equal(y, lora_group_ref(x, group, batch, out_sizes))


def test_tuned_blocks_cover_the_llama_groups():
    for num_tokens in (1, 16, 64, 256, 2048, 8192):
        for d_in, out_sizes in [(4096, (4096, 1024, 1024)), (4096, (4096,)), (14336, (4096,))]:
            blocks = gpu_blocks(num_tokens, d_in, out_sizes)
            assert blocks.block_t >= 16 and blocks.o_chunk % blocks.block_o == 0


# ------------------------------------------------------------------------------------------------
# TPU kernel (Mosaic TPU lowering): the generic interpreter and the TPU interpreter.

TPU_CASES = [
    (1, "uniform", QKV, TpuBlocks(128, 512, 512)),  # T below a tile: the block is all of T
    (37, "mixed", GATE_UP, TpuBlocks(8, 512, 512)),  # partial last tile, tiles shared by segments
    (64, "skewed", DOWN, TpuBlocks(16, 512, 512)),
    (48, "none", O_PROJ, TpuBlocks(16, 512, 512)),
]


@pytest.mark.parametrize("interpret", ["generic", "tpu"])
@pytest.mark.parametrize("num_tokens, kind, shape, blocks", TPU_CASES)
def test_tpu_sweep(num_tokens, kind, shape, blocks, interpret):
    x, group, batch, out_sizes = case(num_tokens + 1, num_tokens, kind, shape)
    mode = True if interpret == "generic" else pltpu.InterpretParams()
    bt = min(blocks.block_t, num_tokens)
    # The TPU interpreter cannot alias an output whose last block is partial; it fills outputs
    # with NaN itself, which poisons them as well.
    out = poison(num_tokens, out_sizes) if interpret == "generic" or num_tokens % bt == 0 else None
    y = lora_group_tpu(x, group, batch, out_sizes, blocks=blocks, interpret=mode, out=out)
    assert_matches(y, x, group, batch, out_sizes)


def test_tpu_ranks_4_to_128_and_lane_blocks():
    ranks = (4, 8, 16, 32, 64, 128, 0)
    shape = (256, (256, 128, 128))  # 128-multiples: output blocks of 128 inside modules
    x, group, batch, out_sizes = case(11, 96, "mixed", shape, ranks=ranks, max_rank=128)
    blocks = TpuBlocks(32, 128, 128)
    y = lora_group_tpu(
        x, group, batch, out_sizes, blocks=blocks, interpret=pltpu.InterpretParams(),
        out=poison(96, out_sizes),
    )  # fmt: skip
    assert_matches(y, x, group, batch, out_sizes)


def test_tpu_prefill_2048():
    shape = (32, (32, 16))
    x, group, batch, out_sizes = case(12, 2048, "mixed", shape, ranks=(8, 16, 0, 4), max_rank=16)
    y = lora_group_tpu(
        x, group, batch, out_sizes, blocks=TpuBlocks(256, 512, 512), interpret=True,
        out=poison(2048, out_sizes),
    )  # fmt: skip
    assert_matches(y, x, group, batch, out_sizes)


def test_tpu_work_list():
    # tiles of 4 tokens; segments [1, 3), [3, 9), [12, 13) over 16 tokens; G = 4
    starts = jnp.array([1, 3, 12, SEG_PAD], jnp.int32)
    ends = jnp.array([3, 9, 13, SEG_PAD], jnp.int32)
    tile, seg = work_list(starts, ends, num_tiles=4, block_t=4)
    assert np.asarray(tile).tolist() == [0, 0, 1, 2, 3, 3, 3, 3]
    assert np.asarray(seg).tolist() == [0, 1, 1, 1, 2, -2, -2, -2]


# ------------------------------------------------------------------------------------------------
# The dispatcher.


def test_dispatcher_backends_agree_under_jit():
    x, group, batch, out_sizes = case(14, 45, "mixed", QKV)
    ref = lora_group_ref(x, group, batch, out_sizes)

    @jax.jit
    def run(x, group, batch):
        return {
            "xla": lora_group_delta(x, group, batch, out_sizes, backend="xla"),
            "gpu": lora_group_delta(x, group, batch, out_sizes, backend="pallas"),
            "tpu": lora_group_delta(x, group, batch, out_sizes, backend="pallas", platform="tpu"),
        }

    out = run(x, group, batch)
    np.testing.assert_array_equal(out["xla"], ref)
    for name in ("gpu", "tpu"):
        assert_matches(out[name], x, group, batch, out_sizes)


def test_dispatcher_without_a_segment_table():
    """A batch built by hand (token_slot and slot_rank only) gets its segments on the device."""
    x, group, batch, out_sizes = case(15, 21, "skewed", O_PROJ)
    bare = LoraBatch(token_slot=batch.token_slot, slot_rank=batch.slot_rank)
    y = lora_group_delta(x, group, bare, out_sizes, backend="pallas")
    assert_matches(y, x, group, bare, out_sizes)


def test_dispatcher_refusals():
    x, group, batch, out_sizes = case(16, 4, "uniform", O_PROJ)
    with pytest.raises(ValueError, match="backend='triton' is not one of"):
        lora_group_delta(x, group, batch, out_sizes, backend="triton")
    with pytest.raises(ValueError, match="platform='rocm'"):
        lora_group_delta(x, group, batch, out_sizes, backend="pallas", platform="rocm")


def _stacked_layers(seed: int, num_layers: int, shape, ranks=(8, 16, 0, 4, 32), max_rank=32):
    """Per-layer groups of different contents, and the same stacked [L, S, ...] (slots' layout)."""
    rng = np.random.default_rng(seed)
    d_in, out_sizes = shape
    groups = [make_group(rng, ranks, max_rank, d_in, out_sizes) for _ in range(num_layers)]
    stacked = jax.tree.map(lambda *per_layer: jnp.stack(per_layer), *groups)
    return groups, stacked


@pytest.mark.parametrize("backend, platform", [("xla", None), ("pallas", "gpu"), ("pallas", "tpu")])
def test_dispatcher_reads_one_layer_of_stacked_buffers(backend, platform):
    """With ``layer``, every backend computes that layer's delta from the stacked buffers: the
    kernels' row ``layer * S + slot``, never a neighbouring layer's rows."""
    rng = np.random.default_rng(17)
    groups, stacked = _stacked_layers(17, 3, QKV)
    ranks = np.array((8, 16, 0, 4, 32), np.int32)
    batch = make_lora_batch(routing(rng, 37, ranks, "mixed"), ranks)
    x = jnp.asarray(rng.normal(size=(37, QKV[0])), jnp.bfloat16)
    out_sizes = QKV[1]
    run = jax.jit(
        lambda x, stacked, batch, layer: lora_group_delta(
            x, stacked, batch, out_sizes, backend=backend, layer=layer, platform=platform
        ),
        static_argnums=3,
    )
    for layer, group in enumerate(groups):
        y = run(x, stacked, batch, layer)
        if backend == "xla":
            np.testing.assert_array_equal(y, lora_group_ref(x, group, batch, out_sizes))
        else:
            assert_matches(y, x, group, batch, out_sizes)


def test_gpu_split_launch_reads_rows_from_slot_base():
    """The split (shrink + expand) launch indexes the stacked rows as the fused one does."""
    rng = np.random.default_rng(18)
    groups, stacked = _stacked_layers(18, 2, DOWN)
    ranks = np.array((8, 16, 0, 4, 32), np.int32)
    batch = make_lora_batch(routing(rng, 24, ranks, "uniform"), ranks)
    x = jnp.asarray(rng.normal(size=(24, DOWN[0])), jnp.bfloat16)
    flat = jax.tree.map(lambda buf: buf.reshape(-1, *buf.shape[2:]), stacked)
    blocks = GpuBlocks(block_t=16, block_k=32, block_o=32, o_chunk=32, split_k=3)
    y = lora_group_gpu(x, flat, batch, DOWN[1], slot_base=len(ranks), blocks=blocks, interpret=True)
    assert_matches(y, x, groups[1], batch, DOWN[1])


def test_dispatcher_refuses_a_layer_outside_the_stack():
    _, stacked = _stacked_layers(19, 2, O_PROJ)
    x, _, batch, out_sizes = case(19, 4, "uniform", O_PROJ)
    with pytest.raises(ValueError, match=r"layer=2 outside \[0, L=2\)"):
        lora_group_delta(x, stacked, batch, out_sizes, backend="xla", layer=2)
