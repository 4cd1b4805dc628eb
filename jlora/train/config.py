"""Training configuration: one frozen dataclass, a docstring under every field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from jlora.kernels.types import TARGET_MODULES

# Fields that change where a run writes or when it stops, not what it computes: a checkpoint may be
# resumed under different values of these.
RUN_ONLY_FIELDS = (
    "checkpoint_dir",
    "checkpoint_every",
    "keep_last_n",
    "log_dir",
    "log_every",
    "progress",
)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train: LoRA shape, optimiser, schedule, data, checkpoints and logs.

    The optimiser is AdamW with a linear warm-up to ``lr`` over ``warmup_steps`` and a cosine
    decay to ``lr * final_lr_ratio`` at ``total_steps``, after global-norm gradient clipping.
    Invalid values raise ``ValueError`` naming them.
    """

    rank: int = 8
    """LoRA rank ``r`` (ignored by full-parameter training)."""
    alpha: float = 16.0
    """LoRA ``lora_alpha``; the delta is scaled by ``alpha / rank`` as PEFT does."""
    target_modules: tuple[str, ...] = TARGET_MODULES
    """PEFT names of the modules that get a trainable A/B (q/k/v/o/gate/up/down_proj)."""
    lr: float = 3e-3
    """Peak learning rate, reached at the end of warm-up."""
    warmup_steps: int = 50
    """Steps of linear warm-up from 0 to ``lr``."""
    total_steps: int = 1000
    """Length of the run; the cosine decay ends here."""
    final_lr_ratio: float = 0.1
    """Learning rate at ``total_steps``, as a fraction of ``lr``."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    clip_norm: float = 1.0
    """Gradients are clipped to this global norm (0 disables clipping)."""
    batch_size: int = 64
    """Sequences per step."""
    seed: int = 0
    """Seed of the LoRA initialisation and of the data (batch ``i`` is a function of seed, i)."""
    checkpoint_dir: str | None = None
    """Orbax checkpoint directory; a run finding checkpoints there resumes from the latest."""
    checkpoint_every: int = 100
    """Save a checkpoint every this many steps (and at the end) when ``checkpoint_dir`` is set."""
    keep_last_n: int = 3
    """Checkpoints kept on disk; older ones are deleted."""
    log_dir: str | None = None
    """TensorBoard log directory (loss, learning rate, gradient norm); None: no logs."""
    log_every: int = 10
    """Write scalars every this many steps."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        for name in ("rank", "total_steps", "batch_size", "checkpoint_every", "keep_last_n"):
            _positive_int(name, getattr(self, name))
        _positive_int("log_every", self.log_every)
        if not isinstance(self.warmup_steps, int) or not 0 <= self.warmup_steps < self.total_steps:
            raise ValueError(
                f"warmup_steps={self.warmup_steps!r} must be in [0, total_steps={self.total_steps})"
            )
        if not self.alpha > 0:
            raise ValueError(f"alpha={self.alpha!r} must be positive")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r} must be positive")
        if not 0 <= self.final_lr_ratio <= 1:
            raise ValueError(f"final_lr_ratio={self.final_lr_ratio!r} must be in [0, 1]")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay={self.weight_decay!r} must be >= 0")
        if not self.clip_norm >= 0:
            raise ValueError(f"clip_norm={self.clip_norm!r} must be >= 0")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module")
        unknown = [m for m in self.target_modules if m not in TARGET_MODULES]
        if unknown:
            raise ValueError(
                f"target_modules {unknown} are not supported "
                f"(supported: {', '.join(TARGET_MODULES)})"
            )

    @property
    def scale(self) -> float:
        """The LoRA scaling ``alpha / rank``."""
        return self.alpha / self.rank

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def fingerprint(self) -> dict:
        """The fields that decide the computation (a resumed run must match them)."""
        out = dataclasses.asdict(self)
        for name in RUN_ONLY_FIELDS:
            out.pop(name)
        out["target_modules"] = list(self.target_modules)
        return out


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")
