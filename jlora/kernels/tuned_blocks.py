"""Tuned block sizes for the Pallas LoRA kernels, by platform, token bucket and group shape.

The GPU entries were measured on one H100 80GB (``experiments/tune_kernel_blocks.py``, see
``experiments/results/kernels.md``) for the Llama-3.1-8B groups (d_in 4096 or 14336, 8 slots of max
rank 64); other shapes fall back to the same rules by token count. The TPU entries are starting
points that follow the Mosaic TPU tiling rules (sublane 8/16, lane 128) and the ragged paged
attention tables' habits; they are not measured here (no TPU was lent).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuBlocks:
    """Static tiling of the GPU kernels (:mod:`jlora.kernels.lora_gpu`)."""

    block_t: int
    """Tokens per tile (>= 16, a power of 2): the M of both matmuls."""
    block_k: int
    """Step of the shrink's reduction over d_in (a power of 2)."""
    block_o: int
    """Output columns per expand matmul (a power of 2)."""
    o_chunk: int
    """Output columns per program, a multiple of ``block_o``: the shrink is recomputed once per
    chunk, so larger chunks trade parallelism for less re-reading of x and A (from L2)."""
    split_k: int = 0
    """0: one fused launch (shrink recomputed per chunk). n > 0: a shrink launch split n ways over
    d_in, then an expand launch; pays for itself where d_in is long and T small (down_proj)."""
    num_warps: int = 4
    num_stages: int = 3


@dataclass(frozen=True)
class TpuBlocks:
    """Static tiling of the TPU kernels (:mod:`jlora.kernels.lora_tpu`)."""

    block_t: int
    """Tokens per tile (a multiple of 8; the whole T when T is smaller)."""
    block_k: int
    """Shrink reduction step over d_in (a multiple of 128 dividing d_in, else all of d_in)."""
    block_o: int
    """Expand output tile (a multiple of 128 dividing every module's size, else all of O)."""


TOKEN_BUCKETS = (1, 16, 64, 256, 2048, 8192)


def token_bucket(num_tokens: int) -> int:
    """The smallest bucket of the measured token counts that holds ``num_tokens``."""
    for bucket in TOKEN_BUCKETS:
        if num_tokens <= bucket:
            return bucket
    return TOKEN_BUCKETS[-1]


# (token bucket, d_in, O) -> GpuBlocks, measured on the H100 (see the module docstring): the
# fastest candidate by CUPTI kernel time, scenario "3 adapters of rank 16", where a second launch
# was charged 15 us (launched by the host). Inside the engine's step, one CUDA graph, a launch costs
# a gap on the GPU instead, and the split form of the MLP groups (gate|up, down: the long shrinks)
# wins there at T <= 256 with adapters and changes nothing without them
# (experiments/bench_split_decode.py, kernels.md). Splitting q|k|v and o too made steps without
# adapters slower, so they keep one launch.
_G = GpuBlocks
GPU_TUNED: dict[tuple[int, int, int], GpuBlocks] = {
    # T <= 16 (and 1)
    (16, 4096, 6144): _G(16, 1024, 256, 256),  # 8.7 us
    (16, 4096, 4096): _G(16, 1024, 256, 256),  # 8.6 us
    (16, 4096, 28672): _G(16, 1024, 256, 1024, split_k=4),  # fused: 9.8 us
    (16, 14336, 4096): _G(16, 1024, 256, 256, split_k=7),  # 7.7 us + a launch (fused: 21.9 us)
    # T <= 64
    (64, 4096, 6144): _G(16, 512, 128, 512),  # 9.1 us (split_k=4: 7.1 us + a launch)
    (64, 4096, 4096): _G(16, 1024, 256, 256),  # 8.7 us
    (64, 4096, 28672): _G(16, 1024, 256, 1024, split_k=4),  # 8.7 us + a launch (fused: 18.9 us)
    (64, 14336, 4096): _G(16, 1024, 256, 256, split_k=7),  # 8.1 us + a launch (fused: 22.0 us)
    # T <= 256 (gate_up and down not measured alone: the T <= 64 choice, split in the engine)
    (256, 4096, 6144): _G(16, 1024, 256, 1024),  # 10.4 us
    (256, 4096, 4096): _G(16, 1024, 256, 1024),  # 10.0 us
    (256, 4096, 28672): _G(16, 1024, 256, 1024, split_k=4),
    (256, 14336, 4096): _G(16, 1024, 256, 256, split_k=7),
    # T <= 2048 (and beyond): chunks span whole modules, parallelism comes from token tiles
    (2048, 4096, 6144): _G(32, 1024, 256, 4096),  # 36.9 us
    (2048, 4096, 4096): _G(16, 1024, 256, 16384),  # 21.0 us
    (2048, 4096, 28672): _G(32, 1024, 256, 16384),  # 67.1 us
    (2048, 14336, 4096): _G(16, 1024, 256, 16384),  # 38.8 us
}


def _gpu_default(bucket: int, d_in: int, total_out: int) -> GpuBlocks:
    long_k = d_in > 2 * total_out  # down_proj: the shrink dominates
    if bucket <= 256:
        return GpuBlocks(16, 1024, 256, 512, split_k=4 if long_k else 0)
    return GpuBlocks(32, 1024, 256, 16384, split_k=0)


def gpu_blocks(num_tokens: int, d_in: int, out_sizes: tuple[int, ...]) -> GpuBlocks:
    """Block sizes of the GPU kernels for one group call: the tuned entry of the nearest measured
    token bucket for this shape (1 uses 16's, 8192 uses 2048's when not measured), else a rule."""
    bucket = token_bucket(num_tokens)
    total_out = sum(out_sizes)
    by_distance = sorted(
        TOKEN_BUCKETS, key=lambda b: (abs(b.bit_length() - bucket.bit_length()), b)
    )
    for b in by_distance:
        if (b, d_in, total_out) in GPU_TUNED:
            return GPU_TUNED[(b, d_in, total_out)]
    return _gpu_default(bucket, d_in, total_out)


def tpu_blocks(num_tokens: int, d_in: int, out_sizes: tuple[int, ...]) -> TpuBlocks:
    """Block sizes of the TPU kernels for one group call (unmeasured starting points)."""
    bucket = token_bucket(num_tokens)
    block_t = 128 if bucket <= 256 else 256
    return TpuBlocks(block_t=block_t, block_k=512, block_o=512)
