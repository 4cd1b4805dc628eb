"""jlora: a JAX research engine for serving many LoRA adapters on one base model.

The package imports nothing: ``jlora.kernels``, the bottom layer, which ``models`` uses, lives in
it, so a package that imported the engine would import ``models`` from inside ``models``' own
imports. The public names are in their modules::

    from jlora.config import EngineConfig
    from jlora.engine import Engine
    from jlora.sampling_params import SamplingParams
"""

__version__ = "0.1.0"
