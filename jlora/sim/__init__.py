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

from jlora.build import DeviceMemory, kv_capacity_pages, make_buckets, weights_and_slots_bytes
from jlora.clock import FakeClock
from jlora.config import EngineConfig
from jlora.engine import Engine
from jlora.sim.adapters import AdapterStub, stub_loader
from jlora.sim.cost_model import CostModel, StepLayout
from jlora.sim.runner import SimRunner, sim_token
from models.config import ModelConfig
from models.presets import PRESETS

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


def simulated_memory(config: EngineConfig, model: ModelConfig, cost: CostModel) -> DeviceMemory:
    """The memory of the device the cost model was calibrated on, with ``config``'s weights and
    adapter slots in it (what the real engine would find when it sizes its KV cache)."""
    return DeviceMemory(cost.memory.get("bytes_limit"), weights_and_slots_bytes(config, model))


def load_cost_model(config: EngineConfig, cost_model_path: str | Path | None) -> CostModel:
    path = default_cost_model_path(config.model) if cost_model_path is None else cost_model_path
    cost = CostModel.load_file(path)
    _warn_if_other_setting(config, cost, path)
    return cost


def _warn_if_other_setting(config: EngineConfig, cost: CostModel, path) -> None:
    cal = cost.info.get("calibrated_with") or {}
    platform = "cpu" if cost.info.get("device") == "cpu" else "gpu"
    ours = {
        "dtype": config.dtype,
        "lora_backend": config.resolved_lora_backend(platform),
        "max_loras_per_batch": config.max_loras_per_batch,
        "max_lora_rank": config.max_lora_rank,
    }
    differ = [
        f"{k}={ours[k]!r} (calibrated: {cal[k]!r})" for k in ours if k in cal and ours[k] != cal[k]
    ]
    step_settings = {
        "graph_scheduling": config.graph_scheduling,
        "stage_host_inputs": config.resolved_stage_host_inputs(platform),
    }
    for key, calibrated in calibrated_step_settings(cost).items():
        if step_settings[key] != calibrated:
            differ.append(f"{key}={step_settings[key]!r} (calibrated: {calibrated!r})")
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
    # Overlap as the simulated device would run it (on by default with a GPU), where the cost
    # model calibrated overlapped steps.
    overlap = config.resolved_overlap_schedule("cpu" if cost.info.get("device") == "cpu" else "gpu")
    if overlap and not cost.models_overlap:
        warnings.warn(
            f"overlap_schedule={config.overlap_schedule!r}: the cost model has no overlapped "
            "decode steps (decode_overlap), so the simulation runs the engine loop without overlap",
            stacklevel=2,
        )
        overlap = False
    model = config.model_config()
    config = dataclasses.replace(config, overlap_schedule=overlap)
    clock = FakeClock()
    runner = SimRunner(
        clock,
        cost,
        make_buckets(config, model),
        config.page_size,
        config.max_loras_per_batch,
        num_pages=kv_capacity_pages(config, model, simulated_memory(config, model, cost)),
    )
    engine = Engine(
        config,
        runner=runner,
        clock=clock,
        adapter_loader=stub_loader(config.max_lora_rank, runner.charge_host_load),
    )
    runner.start(waiting=lambda: len(engine.scheduler.waiting))
    return engine
