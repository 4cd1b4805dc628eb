"""Train-state checkpoints with orbax: keep the last N, resume exactly.

A checkpoint is one orbax step directory holding two items: ``state`` (the :class:`TrainState`:
step, trainable weights, optimiser state, as a pytree of arrays) and ``meta`` (JSON: the run's name
and the computation-defining part of its :class:`TrainConfig`). The data needs no saved RNG state:
batch ``i`` is a pure function of ``(seed, i)``, and ``seed`` is in ``meta``.

Saves are asynchronous. The train step donates its state, so what is handed to orbax is a copy
that no later step can overwrite while it is being written.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jlora.train.state import TrainState


class TrainCheckpointer:
    """An orbax ``CheckpointManager`` for :class:`TrainState` plus JSON metadata."""

    def __init__(self, directory: str | Path, every: int, keep_last_n: int):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep_last_n, save_interval_steps=every, create=True
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: TrainState, meta: dict) -> None:
        """Save ``state`` (copied first, see the module docstring) as checkpoint ``step``."""
        state = jax.tree.map(jnp.copy, state)
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )

    def restore(self, step: int, like: TrainState) -> tuple[TrainState, dict]:
        """Checkpoint ``step`` into the structure (and dtypes) of ``like``; returns it and meta."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        return out.state, out.meta

    def close(self) -> None:
        """Wait for pending saves and release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()
