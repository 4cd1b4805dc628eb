"""Multi-LoRA kernels: one dispatcher, :func:`lora_group_delta`, over three implementations.

- ``backend="xla"``: :func:`jlora.kernels.lora_xla.lora_group_ref`, the one-hot einsum reference
  (what other JAX engines run); the CPU default.
- ``backend="pallas"``: the Pallas kernels for the platform: :mod:`jlora.kernels.lora_gpu`
  (Triton lowering) on GPU, :mod:`jlora.kernels.lora_tpu` (Mosaic TPU) on TPU; on CPU they run in
  interpret mode (``platform`` picks which, default the GPU kernel), which is how they are tested.

The model forward calls the dispatcher once per layer and module group (``qkv``, ``o``,
``gate_up``, ``down``) with that group's slot buffers and the step's :class:`LoraBatch`, and adds
the ``[T, O]`` delta to the group's base projection output.
"""

from __future__ import annotations

import jax

from jlora.kernels.lora_gpu import lora_group_gpu
from jlora.kernels.lora_tpu import lora_group_tpu
from jlora.kernels.lora_xla import lora_group_ref
from jlora.kernels.types import (
    MODULE_GROUPS,
    NO_SLOT,
    TARGET_MODULES,
    LoraBatch,
    LoraGroup,
    make_lora_batch,
)
from jlora.kernels.validate import validate_group_inputs

__all__ = [
    "MODULE_GROUPS",
    "NO_SLOT",
    "TARGET_MODULES",
    "LoraBatch",
    "LoraGroup",
    "lora_group_delta",
    "make_lora_batch",
]

BACKENDS = ("xla", "pallas")


def lora_group_delta(
    x: jax.Array,  # [T, d_in]
    group: LoraGroup,  # a [S, M, R, d_in], b [S, O, R], scale [S, M]; with layer: [L, S, ...]
    batch: LoraBatch,  # token_slot [T], slot_rank [S], segments [G]
    out_sizes: tuple[int, ...],  # M sizes summing to O
    *,
    backend: str,
    layer: int | None = None,
    interpret: bool | None = None,
    platform: str | None = None,
) -> jax.Array:  # [T, O], x.dtype
    """LoRA delta ``y[t] = scale * (x[t] @ A_s.T) @ B_s.T`` of one module group, per token's slot.

    Args:
      backend: ``"xla"`` (one-hot einsum reference) or ``"pallas"`` (the platform's kernels).
      layer: None: ``group`` holds one layer's buffers ``[S, ...]``. An int: ``group`` holds
        every layer's, stacked ``[L, S, ...]`` (:class:`jlora.adapters.slots.SlotBuffers`), and
        the delta is layer ``layer``'s. The kernels read the stacked buffers in place (rows
        ``layer * S + s``); the reference takes the layer's slice.
      interpret: run the Pallas kernels in interpret mode; ``None`` means "on CPU only".
      platform: ``"gpu"`` or ``"tpu"``: whose Pallas kernel to run; ``None`` means the default
        device's platform, and the GPU kernel on CPU.

    The tokens of each slot must be contiguous in ``x`` (see :class:`LoraBatch`); tokens without an
    adapter (``NO_SLOT``) may sit anywhere and get a zero delta. Works under ``jit``; the kernels
    specialise on the static shapes (T, d_in, out_sizes, R, S, G), so pad T to a few buckets.
    """
    validate_group_inputs(x, group, batch, out_sizes, layer=layer)
    out_sizes = tuple(int(o) for o in out_sizes)
    if backend == "xla":
        if layer is not None:
            group = jax.tree.map(lambda buf: buf[layer], group)
        return lora_group_ref(x, group, batch, out_sizes)
    if backend != "pallas":
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    slot_base = 0
    if layer is not None:  # rows layer * S + s of the layers' buffers, flattened for free
        slot_base = layer * group.a.shape[1]
        group = jax.tree.map(lambda buf: buf.reshape(-1, *buf.shape[2:]), group)
    device_platform = jax.default_backend()
    if platform is None:
        platform = "tpu" if device_platform == "tpu" else "gpu"
    if interpret is None:
        interpret = device_platform == "cpu"
    if platform == "gpu":
        return lora_group_gpu(x, group, batch, out_sizes, slot_base=slot_base, interpret=interpret)
    if platform == "tpu":
        return lora_group_tpu(x, group, batch, out_sizes, slot_base=slot_base, interpret=interpret)
    raise ValueError(f"platform={platform!r} is not 'gpu' or 'tpu'")
