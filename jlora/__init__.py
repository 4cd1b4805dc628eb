"""jlora: a JAX research engine for serving many LoRA adapters on one base model.

The public names are imported on first use, so that ``models`` (which uses ``jlora.kernels``) and
the engine (which uses ``models``) can import each other's submodules without a cycle.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["Engine", "EngineConfig", "SamplingParams"]

_WHERE = {
    "Engine": "jlora.engine",
    "EngineConfig": "jlora.config",
    "SamplingParams": "jlora.sampling",
}

if TYPE_CHECKING:
    from jlora.config import EngineConfig
    from jlora.engine import Engine
    from jlora.sampling import SamplingParams


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'jlora' has no attribute {name!r}")
