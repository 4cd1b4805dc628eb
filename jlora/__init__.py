"""jlora: a JAX research engine for serving many LoRA adapters on one base model."""

from jlora.config import EngineConfig
from jlora.engine import Engine
from jlora.sampling import SamplingParams

__all__ = ["Engine", "EngineConfig", "SamplingParams"]
__version__ = "0.1.0"
