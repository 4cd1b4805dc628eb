"""The training loop: LoRA fine-tuning (frozen base) and full-parameter pre-training, one loop.

Flow of :func:`fit`: build the optimiser (:func:`make_optimizer`), make the train state
``(step, params, opt_state)``, resume it from the latest orbax checkpoint if ``checkpoint_dir``
holds one, then for each step ``i``: get batch ``i`` from ``data(i)`` (a pure function of the step,
so a resumed run sees the same batches), run the jitted :func:`train_step` with the state donated,
write loss / learning rate / gradient norm to TensorBoard every ``log_every`` steps, and save a
checkpoint every ``checkpoint_every`` steps and at the end.

What is trained is decided by the *objective*, a small frozen (hashable) object that maps
``(trainable, frozen, batch)`` to the loss: :class:`LoraObjective` trains the A/B pairs of
:mod:`jlora.train.lora_params` on top of base weights passed as ``frozen`` (outside the optimiser,
behind ``stop_gradient``); :class:`FullObjective` trains every base weight. Both run
``models.llama.forward``, the serving forward, vmapped over the batch's sequences, and the loss is
the next-token cross entropy on the completion tokens only (``Batch.loss_mask``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jlora.tensorboard_scalars import ScalarWriter
from jlora.train.config import TrainConfig
from jlora.train.lora_params import (
    LoraParams,
    init_lora_params,
    lora_rank,
    lora_slot_layers,
    single_slot_batch,
)
from jlora.train.state import TrainState
from models.config import ModelConfig
from models.llama import LlamaParams, LoraSlots, SegmentAttention, forward, logits


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Batch:
    """Sequences of one step, right-padded to a common length ``L``."""

    tokens: np.ndarray | jax.Array  # [B, L] int32
    loss_mask: np.ndarray | jax.Array  # [B, L] float32: 1 where the *next* token is a target


# ---------------------------------------------------------------------------------------- loss
def sequence_logits(
    params: LlamaParams,
    cfg: ModelConfig,
    tokens: jax.Array,  # [L] int32, one sequence
    lora: LoraSlots | None = None,
    rank: int = 0,
) -> jax.Array:  # [L, V] float32
    """Logits of one sequence through the serving forward (LoRA in slot 0 when given)."""
    length = tokens.shape[0]
    positions = jnp.arange(length, dtype=jnp.int32)
    attention = SegmentAttention(seq_ids=jnp.zeros((length,), jnp.int32), positions=positions)
    lora_batch = None if lora is None else single_slot_batch(length, rank)
    hidden, _ = forward(params, cfg, tokens, positions, attention, None, lora, lora_batch, "xla")
    return logits(params, hidden)


def masked_next_token_loss(
    logits_: jax.Array,  # [B, L, V] float32
    tokens: jax.Array,  # [B, L] int32
    loss_mask: jax.Array,  # [B, L]
) -> tuple[jax.Array, jax.Array]:  # mean loss, token accuracy (over masked positions)
    """Cross entropy of predicting ``tokens[:, p + 1]`` at the positions ``p`` the mask selects."""
    pred, target = logits_[:, :-1], tokens[:, 1:]
    mask = loss_mask[:, :-1].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(pred, target)
    count = jnp.maximum(mask.sum(), 1.0)
    correct = (jnp.argmax(pred, axis=-1) == target).astype(jnp.float32)
    return (ce * mask).sum() / count, (correct * mask).sum() / count


class Objective(Protocol):
    """Loss of the trainable weights on a batch. Must be hashable (a static jit argument)."""

    def __call__(
        self, trainable, frozen, batch: Batch
    ) -> tuple[jax.Array, jax.Array]:  # loss, accuracy
        ...


@dataclass(frozen=True)
class LoraObjective:
    """Train LoRA pairs on top of frozen base weights (``frozen`` is the base ``LlamaParams``)."""

    cfg: ModelConfig
    scale: float  # alpha / rank

    def __call__(self, lora: LoraParams, base: LlamaParams, batch: Batch):
        base = jax.lax.stop_gradient(base)
        slot = lora_slot_layers(lora, self.cfg, self.scale)
        fn = functools.partial(sequence_logits, base, self.cfg, lora=slot, rank=lora_rank(lora))
        return masked_next_token_loss(jax.vmap(fn)(batch.tokens), batch.tokens, batch.loss_mask)


@dataclass(frozen=True)
class FullObjective:
    """Train every base weight (``frozen`` is unused)."""

    cfg: ModelConfig

    def __call__(self, params: LlamaParams, frozen: None, batch: Batch):
        fn = functools.partial(sequence_logits, params, self.cfg)
        return masked_next_token_loss(jax.vmap(fn)(batch.tokens), batch.tokens, batch.loss_mask)


# ----------------------------------------------------------------------------------- optimiser
def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    """Linear warm-up to ``lr``, cosine decay to ``lr * final_lr_ratio`` at ``total_steps``."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.lr,
        warmup_steps=config.warmup_steps,
        decay_steps=config.total_steps,
        end_value=config.lr * config.final_lr_ratio,
    )


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW; weight decay only on matrices (not norms or biases)."""
    adamw = optax.adamw(
        learning_rate_schedule(config),
        weight_decay=config.weight_decay,
        mask=lambda params: jax.tree.map(lambda x: x.ndim >= 2, params),
    )
    if config.clip_norm == 0:
        return adamw
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), adamw)


@functools.partial(jax.jit, static_argnames=("objective", "optimizer"), donate_argnums=(0,))
def train_step(
    state: TrainState,
    frozen,
    batch: Batch,
    *,
    objective: Objective,
    optimizer: optax.GradientTransformation,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step; ``state`` is donated (its buffers are reused for the new state)."""
    (loss, accuracy), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params, frozen, batch
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": optax.tree.norm(grads)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


# ---------------------------------------------------------------------------------------- loop
def fit(
    objective: Objective,
    params,
    frozen,
    data: Callable[[int], Batch],
    config: TrainConfig,
    *,
    name: str = "train",
    stop_after: int | None = None,
):
    """Train ``params`` for ``config.total_steps`` steps and return the final trainable weights.

    ``data(i)`` must return batch ``i`` deterministically. With ``config.checkpoint_dir`` set, a
    run resumes from the latest checkpoint there (refusing one written under a different
    computation-defining config) and ends with the same weights, bit for bit, as a run that was
    never interrupted. ``stop_after`` ends the run after that many steps without a final
    checkpoint, as an interruption would (for tests).
    """
    # Imported here, not at the top: orbax takes seconds to import and most callers never save.
    from jlora.train.checkpoint import TrainCheckpointer

    optimizer = make_optimizer(config)
    # Copy so that donation never invalidates the caller's arrays.
    params = jax.tree.map(jnp.array, params)
    state = TrainState(step=jnp.int32(0), params=params, opt_state=optimizer.init(params))
    meta = {"name": name, "config": config.fingerprint()}

    ckpt = None
    if config.checkpoint_dir is not None:
        ckpt = TrainCheckpointer(
            config.checkpoint_dir, every=config.checkpoint_every, keep_last_n=config.keep_last_n
        )
        latest = ckpt.latest_step()
        if latest is not None:
            state, saved_meta = ckpt.restore(latest, like=state)
            if saved_meta != meta:
                raise ValueError(
                    f"checkpoint {config.checkpoint_dir!r} step {latest} was written by a "
                    f"different run: {saved_meta} != {meta}"
                )

    start = int(state.step)
    end = config.total_steps if stop_after is None else min(stop_after, config.total_steps)
    schedule = learning_rate_schedule(config)
    writer = ScalarWriter(config.log_dir) if config.log_dir is not None else None
    bar = tqdm(
        total=config.total_steps, initial=start, desc=name, disable=not config.progress, ncols=90
    )
    try:
        for step in range(start, end):
            state, metrics = train_step(
                state, frozen, data(step), objective=objective, optimizer=optimizer
            )
            done = step + 1
            if done % config.log_every == 0 or done == end:
                host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                host["learning_rate"] = float(schedule(step))
                if writer is not None:
                    writer.scalars({f"train/{k}": v for k, v in host.items()}, done)
                bar.set_postfix(loss=f"{host['loss']:.4f}", acc=f"{host['accuracy']:.3f}")
            bar.update(1)
            if ckpt is not None and (
                done % config.checkpoint_every == 0 or done == config.total_steps
            ):
                ckpt.save(done, state, meta)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        if ckpt is not None:
            ckpt.close()
    return state.params


def train_lora(
    base: LlamaParams,
    cfg: ModelConfig,
    data: Callable[[int], Batch],
    config: TrainConfig,
    *,
    name: str = "lora",
    init: LoraParams | None = None,
    stop_after: int | None = None,
) -> LoraParams:
    """Fine-tune a LoRA (``config.rank``, ``config.target_modules``) on frozen ``base`` weights."""
    if init is None:
        key = jax.random.key(config.seed)
        init = init_lora_params(cfg, config.rank, config.target_modules, key)
    objective = LoraObjective(cfg=cfg, scale=config.scale)
    return fit(objective, init, base, data, config, name=name, stop_after=stop_after)


def train_base(
    params: LlamaParams,
    cfg: ModelConfig,
    data: Callable[[int], Batch],
    config: TrainConfig,
    *,
    name: str = "base",
    stop_after: int | None = None,
) -> LlamaParams:
    """Full-parameter training of every base weight (LoRA fields of ``config`` are unused)."""
    objective = FullObjective(cfg=cfg)
    return fit(objective, params, None, data, config, name=name, stop_after=stop_after)
