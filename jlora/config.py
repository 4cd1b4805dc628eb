"""Engine configuration: one frozen dataclass, a docstring under every field.

Field names follow SGLang's ``ServerArgs`` wherever the concept is the same, so the command line
derived from this class (``--max-loras-per-batch`` ...) reads as SGLang's does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from models.config import ModelConfig
from models.presets import PRESETS, get_preset

LORA_BACKENDS = ("xla", "pallas")
LOAD_FORMATS = ("auto", "dummy")
DTYPES = ("bfloat16", "float32")


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """Everything the engine needs to start. Invalid values raise ``ValueError`` naming them."""

    model: str
    """A Hugging Face model directory (config.json + safetensors) or a preset name
    (``llama-3.1-8b``, ``llama-3.1-70b``, ``llama-3.2-1b``, ``tiny``)."""
    load_format: str = "auto"
    """``auto``: read the directory's safetensors (a preset has no files: random weights);
    ``dummy``: random weights of the right shapes and scales, no files read."""
    dtype: str = "bfloat16"
    """Weights and activations: ``bfloat16`` or ``float32``."""
    lora_paths: dict[str, str] = field(default_factory=dict)
    """Adapters by name: a PEFT directory, or ``dummy:RANK`` for a random adapter of that rank on
    all seven target modules."""
    max_loras_per_batch: int = 8
    """Device slots: the most distinct adapters one batch can mix."""
    max_loaded_loras: int | None = None
    """Adapters kept in host memory (None: all of ``lora_paths``)."""
    max_lora_rank: int = 64
    """Rank of the device slot buffers; an adapter above it is refused at load."""
    lora_backend: str = "xla"
    """LoRA math: ``xla`` (reference, one-hot einsum) or ``pallas`` (kernels for the platform;
    interpret mode on CPU)."""
    seed: int = 0
    """Seed of dummy weights and dummy adapters."""
    max_score_tokens: int = 2048
    """Most tokens one ``score`` batch runs at once (longer prompt lists are split)."""

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model={self.model!r} must be a model directory or a preset name")
        if self.model not in PRESETS and not Path(self.model).is_dir():
            raise ValueError(
                f"model={self.model!r} is neither a directory nor a preset ({', '.join(PRESETS)})"
            )
        _choice("load_format", self.load_format, LOAD_FORMATS)
        _choice("dtype", self.dtype, DTYPES)
        _choice("lora_backend", self.lora_backend, LORA_BACKENDS)
        _positive_int("max_loras_per_batch", self.max_loras_per_batch)
        _positive_int("max_lora_rank", self.max_lora_rank)
        _positive_int("max_score_tokens", self.max_score_tokens)
        if self.max_loaded_loras is not None:
            _positive_int("max_loaded_loras", self.max_loaded_loras)
            if self.max_loaded_loras < self.max_loras_per_batch:
                raise ValueError(
                    f"max_loaded_loras={self.max_loaded_loras} must be at least "
                    f"max_loras_per_batch={self.max_loras_per_batch}"
                )
        if not isinstance(self.lora_paths, dict):
            raise ValueError(f"lora_paths={self.lora_paths!r} must be a dict of name -> path")
        for name, path in self.lora_paths.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"lora_paths has an invalid adapter name {name!r}")
            if not isinstance(path, str) or not path:
                raise ValueError(f"lora_paths[{name!r}]={path!r} must be a path or 'dummy:RANK'")

    def model_config(self) -> ModelConfig:
        if Path(self.model).is_dir():
            return ModelConfig.from_hf_dir(self.model)
        return get_preset(self.model)

    @property
    def uses_files(self) -> bool:
        """Whether weights come from the model directory."""
        return self.load_format == "auto" and Path(self.model).is_dir()


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(choices)}")


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")
