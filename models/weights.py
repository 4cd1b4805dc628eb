"""Model weights: Hugging Face safetensors through one declarative name table, or dummy weights.

Every tensor a checkpoint may hold is one row of :data:`LAYER_TABLE` / :data:`TOP_TABLE`: its HF
name, the field of :class:`~models.llama.LlamaParams` it lands in, its expected HF shape, and for
the fused projections (q|k|v, gate|up) the column offset inside the fused field. Loading walks
the table, checks every shape, and refuses missing or unexpected tensors by name.

Given a device mesh, every field is placed split over its ``tp`` axis as :data:`FIELD_SHARDING`
says, and the fused fields are first laid out per shard (:func:`models.llama.fused_column_order`;
the table's offsets are those of the plain layout, ``tp = 1``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from safetensors import safe_open

from models.config import ModelConfig
from models.llama import TP_AXIS, LayerParams, LlamaParams, fused_column_order

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}

Shape = Callable[[ModelConfig], tuple[int, ...]]


@dataclass(frozen=True)
class WeightRow:
    """One checkpoint tensor and where it goes."""

    hf_name: str
    """Name in the checkpoint; ``{i}`` is the layer index."""
    field: str
    """Field of LayerParams (layer rows) or LlamaParams (top rows)."""
    hf_shape: Shape
    """Expected shape in the checkpoint (torch layout, ``[out, in]`` for linear weights)."""
    transpose: bool = False
    """Linear weights are stored ``[in, out]`` here."""
    offset: Callable[[ModelConfig], int] = lambda c: 0
    """Start of this tensor inside a fused field's output dim."""
    present: Callable[[ModelConfig], bool] = lambda c: True
    """Whether the architecture has this tensor."""


def _d(c: ModelConfig) -> int:
    return c.hidden_size


def _qkv(c: ModelConfig) -> int:
    return c.q_size + 2 * c.kv_size


_ATTN = "model.layers.{i}.self_attn."
_MLP = "model.layers.{i}.mlp."

LAYER_TABLE: tuple[WeightRow, ...] = (
    WeightRow("model.layers.{i}.input_layernorm.weight", "input_norm", lambda c: (_d(c),)),
    WeightRow(_ATTN + "q_proj.weight", "w_qkv", lambda c: (c.q_size, _d(c)), True),
    WeightRow(
        _ATTN + "k_proj.weight", "w_qkv", lambda c: (c.kv_size, _d(c)), True, lambda c: c.q_size
    ),
    WeightRow(
        _ATTN + "v_proj.weight",
        "w_qkv",
        lambda c: (c.kv_size, _d(c)),
        True,
        lambda c: c.q_size + c.kv_size,
    ),
    WeightRow(_ATTN + "q_proj.bias", "b_qkv", lambda c: (c.q_size,), present=lambda c: c.qkv_bias),
    WeightRow(
        _ATTN + "k_proj.bias",
        "b_qkv",
        lambda c: (c.kv_size,),
        offset=lambda c: c.q_size,
        present=lambda c: c.qkv_bias,
    ),
    WeightRow(
        _ATTN + "v_proj.bias",
        "b_qkv",
        lambda c: (c.kv_size,),
        offset=lambda c: c.q_size + c.kv_size,
        present=lambda c: c.qkv_bias,
    ),
    WeightRow(_ATTN + "o_proj.weight", "w_o", lambda c: (_d(c), c.q_size), True),
    WeightRow(_ATTN + "o_proj.bias", "b_o", lambda c: (_d(c),), present=lambda c: c.o_bias),
    WeightRow(
        "model.layers.{i}.post_attention_layernorm.weight", "post_attn_norm", lambda c: (_d(c),)
    ),
    WeightRow(_MLP + "gate_proj.weight", "w_gate_up", lambda c: (c.intermediate_size, _d(c)), True),
    WeightRow(
        _MLP + "up_proj.weight",
        "w_gate_up",
        lambda c: (c.intermediate_size, _d(c)),
        True,
        lambda c: c.intermediate_size,
    ),
    WeightRow(_MLP + "down_proj.weight", "w_down", lambda c: (_d(c), c.intermediate_size), True),
)

TOP_TABLE: tuple[WeightRow, ...] = (
    WeightRow("model.embed_tokens.weight", "embed", lambda c: (c.vocab_size, _d(c))),
    WeightRow("model.norm.weight", "final_norm", lambda c: (_d(c),)),
    WeightRow(
        "lm_head.weight",
        "lm_head",
        lambda c: (c.vocab_size, _d(c)),
        True,
        present=lambda c: not c.tie_word_embeddings,
    ),
)

# Our shape of each field (fused fields hold several rows).
FIELD_SHAPES: dict[str, Shape] = {
    "input_norm": lambda c: (_d(c),),
    "w_qkv": lambda c: (_d(c), _qkv(c)),
    "b_qkv": lambda c: (_qkv(c),),
    "w_o": lambda c: (c.q_size, _d(c)),
    "b_o": lambda c: (_d(c),),
    "post_attn_norm": lambda c: (_d(c),),
    "w_gate_up": lambda c: (_d(c), 2 * c.intermediate_size),
    "w_down": lambda c: (c.intermediate_size, _d(c)),
    "embed": lambda c: (c.vocab_size, _d(c)),
    "final_norm": lambda c: (_d(c),),
    "lm_head": lambda c: (_d(c), c.vocab_size),
}
NORM_FIELDS = ("input_norm", "post_attn_norm", "final_norm")

# How each field is split over the mesh's tensor-parallel axis (Megatron; see
# jlora.tensor_parallel): column-parallel projections on their output dim, row-parallel ones on
# their input dim, the untied head on the vocabulary; norms, the embedding and the row-parallel
# bias (added after the all-reduce) replicated.
FIELD_SHARDING: dict[str, P] = {
    "input_norm": P(),
    "w_qkv": P(None, TP_AXIS),
    "b_qkv": P(TP_AXIS),
    "w_o": P(TP_AXIS, None),
    "b_o": P(),
    "post_attn_norm": P(),
    "w_gate_up": P(None, TP_AXIS),
    "w_down": P(TP_AXIS, None),
    "embed": P(),
    "final_norm": P(),
    "lm_head": P(None, TP_AXIS),
}
# Module sizes of the fused fields, on the output dim: laid out per shard under tensor parallelism.
FUSED_SIZES: dict[str, Callable[[ModelConfig], tuple[int, ...]]] = {
    "w_qkv": lambda c: (c.q_size, c.kv_size, c.kv_size),
    "b_qkv": lambda c: (c.q_size, c.kv_size, c.kv_size),
    "w_gate_up": lambda c: (c.intermediate_size, c.intermediate_size),
}

# Tensors some checkpoints carry that the forward recomputes.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class WeightError(ValueError):
    """A checkpoint that does not match its config (missing, unexpected or misshapen tensor)."""


def _checkpoint_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    single = model_dir / "model.safetensors"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({model_dir / f for f in weight_map.values()})
    elif single.is_file():
        files = [single]
    else:
        raise FileNotFoundError(
            f"no model.safetensors or model.safetensors.index.json in {str(model_dir)!r}"
        )
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"checkpoint shard {str(f)!r} is missing")
    return files


def _tensor_index(files: list[Path]) -> dict[str, Path]:
    where: dict[str, Path] = {}
    for f in files:
        with safe_open(f, framework="numpy") as fh:
            for name in fh.keys():  # noqa: SIM118 - safe_open handles are not iterable
                where[name] = f
    return where


def _expected_names(cfg: ModelConfig) -> dict[str, tuple[WeightRow, int | None]]:
    rows: dict[str, tuple[WeightRow, int | None]] = {}
    for row in TOP_TABLE:
        if row.present(cfg):
            rows[row.hf_name] = (row, None)
    for i in range(cfg.num_layers):
        for row in LAYER_TABLE:
            if row.present(cfg):
                rows[row.hf_name.format(i=i)] = (row, i)
    return rows


def tp_size(mesh: Mesh | None) -> int:
    return 1 if mesh is None else mesh.shape[TP_AXIS]


def field_sharding(field: str, mesh: Mesh | None) -> NamedSharding | None:
    return None if mesh is None else NamedSharding(mesh, FIELD_SHARDING[field])


def _fused(field: str, cfg: ModelConfig, mesh: Mesh | None) -> tuple | None:
    """``(sizes, tp)`` of a fused field that must be laid out per shard, else None."""
    if field not in FUSED_SIZES or tp_size(mesh) == 1:
        return None
    return FUSED_SIZES[field](cfg), tp_size(mesh)


def load_hf_weights(
    model_dir: str | Path, cfg: ModelConfig, dtype: str, mesh: Mesh | None = None
) -> LlamaParams:
    """Read a safetensors checkpoint (single file or sharded) into device params of ``dtype``,
    split over ``mesh`` (see :data:`FIELD_SHARDING`) when one is given."""
    model_dir = Path(model_dir)
    np_dtype = DTYPES[dtype]
    where = _tensor_index(_checkpoint_files(model_dir))
    expected = _expected_names(cfg)
    missing = sorted(set(expected) - set(where))
    if missing:
        raise WeightError(
            f"checkpoint {str(model_dir)!r} lacks {len(missing)} tensors, e.g. {missing[:3]}"
        )
    unexpected = sorted(
        n
        for n in set(where) - set(expected)
        if not n.endswith(_IGNORED_SUFFIXES) and not (n == "lm_head.weight")
    )
    if unexpected:
        raise WeightError(
            f"checkpoint {str(model_dir)!r} has tensors the config does not describe, e.g. "
            f"{unexpected[:3]} (config: {cfg.model_type}, {cfg.num_layers} layers)"
        )

    top: dict[str, np.ndarray] = {}
    layers: list[dict[str, np.ndarray]] = [{} for _ in range(cfg.num_layers)]
    for file in sorted(set(where.values())):
        with safe_open(file, framework="numpy") as fh:
            for name, (row, layer) in expected.items():
                if where[name] != file:
                    continue
                tensor = fh.get_tensor(name)
                want = row.hf_shape(cfg)
                if tuple(tensor.shape) != want:
                    raise WeightError(
                        f"tensor {name!r} has shape {tuple(tensor.shape)}, config expects {want}"
                    )
                value = tensor.T if row.transpose else tensor
                fields = top if layer is None else layers[layer]
                if row.field not in fields:
                    fields[row.field] = np.zeros(FIELD_SHAPES[row.field](cfg), np_dtype)
                off = row.offset(cfg)
                fields[row.field][..., off : off + value.shape[-1]] = value.astype(np_dtype)
    return _to_params(top, layers, cfg, mesh)


def padded_vocab(vocab_size: int, tp: int) -> int:
    """The vocabulary of the split ``lm_head``: ``vocab_size`` rounded up to a multiple of ``tp``
    (zero columns, whose logits :func:`models.llama.logits` cuts off after gathering them)."""
    return -(-vocab_size // tp) * tp


def _place(field: str, value: np.ndarray, cfg: ModelConfig, mesh: Mesh | None) -> jax.Array:
    if mesh is None:
        return jnp.asarray(value)
    fused = _fused(field, cfg, mesh)
    if fused is not None:
        value = value[..., fused_column_order(*fused)]
    if field == "lm_head":
        pad = padded_vocab(value.shape[-1], tp_size(mesh)) - value.shape[-1]
        value = np.pad(value, ((0, 0), (0, pad)))
    # Each device receives only its slice (as jlora.tensor_parallel.put_host).
    return jax.make_array_from_callback(
        value.shape, field_sharding(field, mesh), lambda index: value[index]
    )


def _to_params(
    top: dict[str, np.ndarray],
    layers: list[dict[str, np.ndarray]],
    cfg: ModelConfig,
    mesh: Mesh | None,
) -> LlamaParams:
    return LlamaParams(
        embed=_place("embed", top["embed"], cfg, mesh),
        layers=tuple(
            LayerParams(**{k: _place(k, v, cfg, mesh) for k, v in lp.items()}) for lp in layers
        ),
        final_norm=_place("final_norm", top["final_norm"], cfg, mesh),
        lm_head=None if cfg.tie_word_embeddings else _place("lm_head", top["lm_head"], cfg, mesh),
    )


def init_dummy_weights(
    cfg: ModelConfig, dtype: str, seed: int = 0, mesh: Mesh | None = None
) -> LlamaParams:
    """Random weights of the right shapes, made on the device (``load_format="dummy"``).

    Linear weights and embeddings are normal with std 0.02 (transformers' ``initializer_range``),
    norms are ones and biases small, so activations stay in range through every layer. With a
    ``mesh`` each field is made split over it, so a model too large for one device is never whole
    on one; the values are those made without a mesh (the same model, laid out per shard).
    """
    jdtype = jnp.dtype(DTYPES[dtype])
    key = jax.random.key(seed)

    def make(field: str, index: int) -> jax.Array:
        shape = FIELD_SHAPES[field](cfg)
        if field in NORM_FIELDS:
            if mesh is None:
                return jnp.ones(shape, jdtype)
            return _place(field, np.ones(shape, DTYPES[dtype]), cfg, mesh)
        scale = 0.002 if field.startswith("b_") else 0.02
        pad = 0
        if field == "lm_head":
            pad = padded_vocab(cfg.vocab_size, tp_size(mesh)) - cfg.vocab_size
        return _normal(
            jax.random.fold_in(key, index),
            shape,
            jdtype,
            scale,
            _fused(field, cfg, mesh),
            field_sharding(field, mesh),
            pad,
        )

    fields_per_layer = ["input_norm", "w_qkv", "w_o", "post_attn_norm", "w_gate_up", "w_down"]
    if cfg.qkv_bias:
        fields_per_layer.append("b_qkv")
    if cfg.o_bias:
        fields_per_layer.append("b_o")
    layers = []
    for i in range(cfg.num_layers):
        base = 16 * (i + 1)
        layers.append(LayerParams(**{f: make(f, base + j) for j, f in enumerate(fields_per_layer)}))
    return LlamaParams(
        embed=make("embed", 1),
        layers=tuple(layers),
        final_norm=make("final_norm", 2),
        lm_head=None if cfg.tie_word_embeddings else make("lm_head", 3),
    )


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "scale", "fused", "sharding", "pad"))
def _normal(
    key: jax.Array,
    shape: tuple[int, ...],
    dtype,
    scale: float,
    fused: tuple | None = None,  # (sizes, tp): lay the columns out per shard
    sharding: NamedSharding | None = None,
    pad: int = 0,  # zero columns appended (the split lm_head's padded vocabulary)
) -> jax.Array:
    x = (scale * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
    if fused is not None:
        x = x[..., fused_column_order(*fused)]
    if pad:
        x = jnp.pad(x, ((0, 0), (0, pad)))
    if sharding is not None:
        x = jax.lax.with_sharding_constraint(x, sharding)
    return x
