"""How an engine is put together: one factory function per part, each taking the configuration
and what the one before it returned.

::

    model = config.model_config()
    buckets = make_buckets(config, model)                 # the step shapes
    runner = make_model_runner(config, model, buckets)    # mesh, weights, slot buffers, KV cache
    pages = PagePool(runner.num_pages, config.page_size)  # or kv_capacity_pages(...) for a runner
                                                          # that holds no KV cache (the fake one)
    scheduler = make_scheduler(config, model, buckets, pages, AdapterPool(...), make_policy(config))

:class:`~jlora.engine.Engine` calls them in this order (a runner passed in replaces
:func:`make_model_runner`); the simulator (:func:`jlora.sim.make_sim_engine`) builds its runner
with the same buckets and sizes its KV cache with the same :func:`kv_capacity_pages`, from the
memory of the device it models (:func:`weights_and_slots_bytes`) instead of the memory in use.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np

from jlora.adapters.pool import AdapterPool
from jlora.adapters.slots import SlotBuffers, slot_buffer_bytes
from jlora.config import EngineConfig
from jlora.runner.buckets import ShapeBuckets, geometric
from jlora.runner.kv_cache import kv_bytes_per_page
from jlora.runner.model_runner import ModelRunner
from jlora.scheduler.pages import PagePool
from jlora.scheduler.policies import (
    FCFS,
    FairDrainer,
    PreemptDrainer,
    ReserveDrainer,
    SGLangDrainer,
)
from jlora.scheduler.scheduler import Policy, Scheduler, SchedulerConfig
from jlora.tensor_parallel import make_mesh
from models.config import ModelConfig
from models.weights import DTYPES, init_dummy_weights, load_hf_weights


def make_buckets(config: EngineConfig, model: ModelConfig) -> ShapeBuckets:
    """The step shapes this configuration compiles (one owner: :class:`ShapeBuckets`)."""
    context = config.resolved_context_length(model)
    pages_per_seq = -(-context // config.page_size)
    kv_tokens = config.kv_len_buckets or geometric(256, context, 4)
    attention_backend = config.resolved_attention_backend(jax.default_backend())
    if config.kv_len_buckets is None and attention_backend == "pallas":
        # The kernel reads each sequence's own pages whatever the table width: one width suffices.
        kv_tokens = (context,)
    kv_pages = tuple(sorted({min(pages_per_seq, -(-t // config.page_size)) for t in kv_tokens}))
    if kv_pages[-1] < pages_per_seq:
        kv_pages += (pages_per_seq,)
    return ShapeBuckets(
        prefill_tokens=config.prefill_token_buckets or geometric(64, config.max_prefill_tokens, 4),
        decode_batch=config.decode_batch_buckets or geometric(8, config.max_running_requests, 4),
        kv_pages=kv_pages,
        prefix_pages=pages_per_seq,
        prefill_rows=min(config.max_running_requests, config.max_prefill_tokens),
    )


@dataclass(frozen=True)
class DeviceMemory:
    """What the KV cache is sized from: one device's memory pool and what is in it already."""

    bytes_limit: int | None
    """The device's memory pool; None where it reports none (a CPU)."""
    bytes_in_use: int
    """Taken already on that device (the weights and the adapter slots, this engine's share)."""


def device_memory() -> DeviceMemory:
    """The first local device's memory, as it reports it now (a CPU reports nothing)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return DeviceMemory(stats.get("bytes_limit"), stats.get("bytes_in_use", 0))


def weights_and_slots_bytes(config: EngineConfig, model: ModelConfig) -> int:
    """Bytes the weights and the adapter slots of ``config`` take on each device (what
    :func:`make_model_runner` places before the KV cache is sized): for a device that is only
    modelled (the simulator)."""
    item = np.dtype(DTYPES[config.dtype]).itemsize
    slots = slot_buffer_bytes(model, config.max_loras_per_batch, config.max_lora_rank, config.dtype)
    return (model.num_params() * item + slots) // config.tp_size


def kv_capacity_pages(config: EngineConfig, model: ModelConfig, memory: DeviceMemory) -> int:
    """Pages of KV cache: from ``max_total_tokens``, or as SGLang sizes its pool: the weights, the
    adapter slots and the KV cache together take ``mem_fraction_static`` of the device's memory
    pool, the rest is left for activations. Under tensor parallelism a page takes
    ``1 / tp_size`` of its bytes on each device (its KV heads). A device that reports no memory
    (a CPU) gets room for 64 full contexts."""
    if config.max_total_tokens is not None:
        return -(-config.max_total_tokens // config.page_size) + 1
    if not memory.bytes_limit:
        context = config.resolved_context_length(model)
        return 64 * -(-context // config.page_size) + 1
    per_page = kv_bytes_per_page(model, config.page_size, DTYPES[config.dtype]) // config.tp_size
    budget = memory.bytes_limit * config.mem_fraction_static - memory.bytes_in_use
    pages = int(budget) // per_page
    if pages < 2:
        raise ValueError(
            f"mem_fraction_static={config.mem_fraction_static} leaves no room for a KV cache "
            f"({memory.bytes_in_use / 2**30:.1f} GiB in use of "
            f"{memory.bytes_limit / 2**30:.1f} GiB); raise it or set max_total_tokens"
        )
    return pages


def make_model_runner(
    config: EngineConfig, model: ModelConfig, buckets: ShapeBuckets
) -> ModelRunner:
    """The real runner: the mesh (tensor parallelism), the weights and the slot buffers placed
    first, then the KV cache in what memory they leave; compiled now unless ``warmup=False``."""
    mesh = make_mesh(config.tp_size) if config.tp_size > 1 else None
    if config.uses_files:
        params = load_hf_weights(config.model, model, config.dtype, mesh)
    else:
        params = init_dummy_weights(model, config.dtype, config.random_seed, mesh)
    slots = None  # LoRA off: no slot buffers, steps without LoRA ops
    if config.lora_enabled:
        slots = SlotBuffers(
            model, config.max_loras_per_batch, config.max_lora_rank, config.dtype, mesh
        )
        if config.lora_load_mb_per_step is not None:
            slots.send_bytes_per_step = int(config.lora_load_mb_per_step * 2**20)
    runner = ModelRunner(
        params,
        model,
        slots,
        buckets,
        kv_capacity_pages(config, model, device_memory()),
        config.page_size,
        config.resolved_lora_backend(jax.default_backend()),
        mesh,
        attention_backend=config.resolved_attention_backend(jax.default_backend()),
        graph_scheduling=config.graph_scheduling,
        stage_host_inputs=config.resolved_stage_host_inputs(jax.default_backend()),
    )
    if config.warmup:
        runner.warmup()
    return runner


def make_policy(config: EngineConfig) -> Policy:
    """The policy an engine configuration asks for: FCFS when the drain threshold is 0."""
    threshold = config.lora_drain_wait_threshold
    if threshold == 0:
        return FCFS()
    cls = {
        "sglang": SGLangDrainer,
        "reserve": ReserveDrainer,
        "preempt": PreemptDrainer,
        "fair": FairDrainer,
    }
    return cls[config.lora_drain_policy](threshold)


def make_scheduler(
    config: EngineConfig,
    model: ModelConfig,
    buckets: ShapeBuckets,
    pages: PagePool,
    adapters: AdapterPool,
    policy: Policy,
) -> Scheduler:
    """The scheduler over the engine's page pool and adapter pool."""
    return Scheduler(
        SchedulerConfig(
            max_running_requests=config.max_running_requests,
            max_prefill_tokens=config.max_prefill_tokens,
            chunked_prefill_size=config.chunked_prefill_size or config.max_prefill_tokens,
            max_prefill_seqs=buckets.prefill_rows,
            base_uses_slot=config.base_model_uses_slot,
            context_length=config.resolved_context_length(model),
            prefetch=config.lora_prefetch,
        ),
        pages,
        adapters,
        policy,
    )
