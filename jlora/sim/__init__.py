"""The simulator: the real engine, scheduler, drainer, adapter pool and page accounting, with the
runner replaced by a cost model and the clock by a virtual one.

::

    engine = make_sim_engine(EngineConfig(model="llama-3.1-8b", lora_paths={"a": "dummy:16"}))
    # then exactly as the real engine: add_request / step, or jlora.bench.driver.run_workload

Nothing is computed on a device and nothing sleeps: a step advances a
:class:`~jlora.clock.FakeClock` by the calibrated time of the step the real engine would have run
(:mod:`jlora.sim.cost_model`), so thousands of requests take seconds of CPU, and the same inputs
give the same per-request times. The cost model is a JSON file per (device, model); by default the
one shipped for the model preset on the H100 (``cost_models/h100__<model>.json``, or the only one
shipped for that model), or any file given. The KV cache is sized as that device would size it
(unless ``max_total_tokens`` is set).
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np

from jlora.clock import FakeClock
from jlora.config import EngineConfig
from jlora.engine import Engine, make_buckets
from jlora.kernels.types import MODULE_GROUPS
from jlora.runner.kv_cache import kv_bytes_per_page
from jlora.sim.adapters import AdapterStub, stub_loader
from jlora.sim.cost_model import CostModel, StepLayout
from jlora.sim.runner import SimRunner, sim_token
from models.config import ModelConfig
from models.presets import PRESETS
from models.weights import DTYPES

COST_MODELS = Path(__file__).parent / "cost_models"
DEFAULT_DEVICE = "h100"

__all__ = [
    "AdapterStub",
    "CostModel",
    "SimRunner",
    "StepLayout",
    "calibrated_setting",
    "default_cost_model_path",
    "load_cost_model",
    "make_sim_engine",
    "sim_token",
]


def default_cost_model_path(model: str) -> Path:
    """The shipped cost model of a preset: on the H100, else the only one shipped for it."""
    how = (
        "Calibrate one with experiments/calibrate_costs.py and pass it with --sim-cost-model "
        "FILE (Python: make_sim_engine(config, cost_model_path=FILE))"
    )
    if model not in PRESETS:
        raise ValueError(f"no shipped cost model for model {model!r} (not a preset). {how}")
    want = COST_MODELS / f"{DEFAULT_DEVICE}__{model}.json"
    if want.is_file():
        return want
    shipped = sorted(COST_MODELS.glob(f"*__{model}.json"))
    if len(shipped) == 1:
        return shipped[0]
    raise ValueError(
        f"no shipped cost model for model preset {model!r}: {want} does not exist. {how}"
    )


def calibrated_setting(cost: CostModel) -> dict:
    """The engine fields the cost model was calibrated with (dtype, backend, context, buckets,
    batch limits), as :class:`~jlora.config.EngineConfig` keyword arguments: a simulated setting
    built on them runs the very step shapes that were measured."""
    cal = dict(cost.info.get("calibrated_with") or {})
    out = {
        k: cal[k]
        for k in (
            "dtype",
            "lora_backend",
            "max_lora_rank",
            "page_size",
            "context_length",
            "max_running_requests",
            "max_prefill_tokens",
        )
        if k in cal
    }
    for key, field in (
        ("prefill_token_buckets", "prefill_token_buckets"),
        ("decode_batch_buckets", "decode_batch_buckets"),
    ):
        if key in cal:
            out[field] = tuple(cal[key])
    if "kv_pages_buckets" in cal and "page_size" in cal:
        out["kv_len_buckets"] = tuple(p * cal["page_size"] for p in cal["kv_pages_buckets"])
    out.update(calibrated_step_settings(cost))
    return out


# Engine settings that change a GPU step's time, and what every engine ran with before each
# existed (a cost model calibrated then does not record it).
_STEP_SETTINGS_BEFORE = {"graph_scheduling": "serialize", "stage_host_inputs": False}


def calibrated_step_settings(cost: CostModel) -> dict:
    """The settings of :data:`_STEP_SETTINGS_BEFORE` that a cost model's engine ran with: as
    recorded, else (a GPU model that predates the setting) the setting before it existed. A CPU
    model gives only what it recorded."""
    cal = cost.info.get("calibrated_with") or {}
    gpu = cost.info.get("device") != "cpu"
    return {
        key: cal.get(key, before)
        for key, before in _STEP_SETTINGS_BEFORE.items()
        if key in cal or gpu
    }


def slot_bytes(config: EngineConfig, model: ModelConfig) -> int:
    """Bytes of the LoRA slot buffers of ``config`` (:class:`~jlora.adapters.SlotBuffers`)."""
    shapes = model.module_shapes()
    item = np.dtype(DTYPES[config.dtype]).itemsize
    per_layer = 0
    for modules in MODULE_GROUPS.values():
        d_in = shapes[modules[0]][0]
        out = sum(shapes[m][1] for m in modules)
        per_layer += len(modules) * config.max_lora_rank * d_in * item
        per_layer += out * config.max_lora_rank * item + len(modules) * 4
    return model.num_layers * config.max_loras_per_batch * per_layer


def device_kv_pages(config: EngineConfig, model: ModelConfig, cost: CostModel) -> int:
    """KV pages the calibrated device would give ``config`` (as
    :func:`~jlora.engine.kv_capacity_pages` sizes them there)."""
    context = config.resolved_context_length(model)
    if config.max_total_tokens is not None:
        return -(-config.max_total_tokens // config.page_size) + 1
    limit = cost.memory.get("bytes_limit")
    if not limit:  # a CPU: room for 64 full contexts
        return 64 * -(-context // config.page_size) + 1
    item = np.dtype(DTYPES[config.dtype]).itemsize
    tp = getattr(config, "tp_size", 1)  # weights, slots and each page split over the devices
    in_use = (model.num_params() * item + slot_bytes(config, model)) // tp
    per_page = kv_bytes_per_page(model, config.page_size, DTYPES[config.dtype]) // tp
    pages = int(limit * config.mem_fraction_static - in_use) // per_page
    if pages < 2:
        raise ValueError(
            f"mem_fraction_static={config.mem_fraction_static} leaves no room for a KV cache on "
            f"the simulated device ({limit / 2**30:.1f} GiB); raise it or set max_total_tokens"
        )
    return pages


def load_cost_model(config: EngineConfig, cost_model_path: str | Path | None) -> CostModel:
    path = default_cost_model_path(config.model) if cost_model_path is None else cost_model_path
    cost = CostModel.load_file(path)
    _warn_if_other_setting(config, cost, path)
    return cost


def _warn_if_other_setting(config: EngineConfig, cost: CostModel, path) -> None:
    cal = cost.info.get("calibrated_with") or {}
    differ = [
        f"{k}={getattr(config, k)!r} (calibrated: {cal[k]!r})"
        for k in ("dtype", "lora_backend", "max_loras_per_batch", "max_lora_rank")
        if k in cal and getattr(config, k) != cal[k]
    ]
    platform = "cpu" if cost.info.get("device") == "cpu" else "gpu"
    ours = {
        "graph_scheduling": config.graph_scheduling,
        "stage_host_inputs": config.resolved_stage_host_inputs(platform),
    }
    defaults = {f.name: f.default for f in dataclasses.fields(EngineConfig)}
    for key, calibrated in calibrated_step_settings(cost).items():
        # Left at its default, a GPU graph setting is no request of the user's: the step is
        # simulated as calibrated, which the simulated report states, rather than a warning on
        # every default run.
        if ours[key] != calibrated and getattr(config, key) != defaults[key]:
            differ.append(f"{key}={ours[key]!r} (calibrated: {calibrated!r})")
    model = cost.info.get("model")
    if model is not None and model != config.model:
        differ.insert(0, f"model={config.model!r} (calibrated: {model!r})")
    if differ:
        warnings.warn(
            f"the cost model {path} was calibrated with another setting: {', '.join(differ)}; "
            "its step times are those of the calibrated setting",
            stacklevel=3,
        )


def make_sim_engine(
    config: EngineConfig,
    cost_model_path: str | Path | None = None,
    *,
    cost: CostModel | None = None,
) -> Engine:
    """The real :class:`~jlora.engine.Engine` on a :class:`SimRunner` and a virtual clock.

    ``cost`` (a :class:`CostModel` object) takes precedence over ``cost_model_path`` (a JSON file;
    default: the shipped one of the model preset, see :func:`default_cost_model_path`).
    """
    if cost is None:
        cost = load_cost_model(config, cost_model_path)
    if config.overlap_schedule:
        warnings.warn(
            "overlap_schedule=True is not modelled by the simulator: it runs the engine loop "
            "without overlap (its cost models are calibrated that way)",
            stacklevel=2,
        )
    model = config.model_config()
    pages = device_kv_pages(config, model, cost)
    config = dataclasses.replace(
        config, max_total_tokens=(pages - 1) * config.page_size, warmup=False
    )
    clock = FakeClock()
    runner = SimRunner(
        clock, cost, make_buckets(config, model), config.page_size, config.max_loras_per_batch
    )
    charging = False

    def charge_host_load(rank: int) -> None:
        if charging:  # reads at start-up (registration) happen before the clock starts
            runner._spend("host_load", cost.host_load_time(rank))

    engine = Engine(
        config,
        runner=runner,
        clock=clock,
        adapter_loader=stub_loader(config.max_lora_rank, charge_host_load),
    )
    charging = True
    scheduler = engine.scheduler
    runner.waiting = lambda: len(scheduler.waiting)
    return engine
