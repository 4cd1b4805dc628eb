"""``jlora bench`` (also ``python -m jlora.bench``): SGLang's ``bench_serving`` against an
in-process engine. Flags come from :class:`~jlora.config.EngineConfig` and
:class:`~jlora.bench.config.BenchConfig`.

    jlora bench --model llama-3.1-8b --load-format dummy \\
        --lora-paths a0=dummy:8 a1=dummy:16 a2=dummy:64 --max-loras-per-batch 2 \\
        --num-prompts 200 --request-rate 4 --random-input-len 512 --random-output-len 512 \\
        --compare off sglang:lora_drain_wait_threshold=3,lora_drain_policy=sglang
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import time
import typing
from pathlib import Path

from jlora.bench.config import BenchConfig, build_workload, parse_step_range
from jlora.bench.driver import RunResult, run_workload
from jlora.bench.http_driver import run_http_workload
from jlora.bench.metrics import compute_metrics, per_adapter_ttft
from jlora.bench.plots import plot_slot_timeline, plot_ttft_cdf, plot_ttft_per_adapter
from jlora.bench.report import (
    describe_cost_model,
    format_block,
    format_compare,
    format_host_cache,
    format_per_adapter,
)
from jlora.bench.trace import ProfileSteps, SlotTimeline, TensorBoardTrace
from jlora.bench.workload import WorkloadRequest
from jlora.config import EngineConfig
from jlora.flags import FlagParser, add_dataclass_flags, dataclass_from_args, nearest, run_command
from jlora.text import load_tokenizer


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(
        prog="jlora bench",
        description="Serving benchmark of the in-process engine (SGLang bench_serving's flags).",
    )
    add_dataclass_flags(
        parser, EngineConfig, aliases={"model": ("--model-path",)}, group_title="engine"
    )
    add_dataclass_flags(parser, BenchConfig, group_title="benchmark")
    return parser


def parse_setting(text: str) -> tuple[str, dict[str, object]]:
    """``NAME`` or ``NAME:field=value,...`` -> (name, EngineConfig overrides, typed). A bad item
    raises ``ValueError`` naming it (and the nearest field to a misspelt one)."""
    name, _, rest = text.partition(":")
    if not name:
        raise ValueError(f"--compare setting {text!r} has no name (NAME or NAME:field=value,...)")
    where = f"--compare setting {text!r}"
    hints = typing.get_type_hints(EngineConfig)
    fields = [f.name for f in dataclasses.fields(EngineConfig)]
    overrides: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{where}: {item!r} is not field=value")
        if key not in fields:
            raise ValueError(f"{where}: {key!r} is not a field of the engine{nearest(key, fields)}")
        tp = hints[key]
        args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        base = args[0]
        if base is bool:
            if value.lower() not in _BOOLS:
                raise ValueError(f"{where}: {key}={value!r} is not true or false")
            overrides[key] = _BOOLS[value.lower()]
        elif base in (int, float, str):
            try:
                overrides[key] = float(value) if base is float else base(value)
            except ValueError:
                raise ValueError(f"{where}: {key}={value!r} is not {_A[base]}") from None
        else:
            raise ValueError(f"{where}: --compare cannot set {key!r} (type {tp})")
    return name, overrides


_BOOLS = {"1": True, "true": True, "yes": True, "on": True} | {
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}
_A = {int: "an integer", float: "a number", str: "a string"}


# Settings that only change host-side scheduling: an engine for one of them can take over the
# device runner (weights, KV cache, adapter slot buffers, compiled steps) of the previous setting.
SCHEDULING_FIELDS = frozenset(
    {
        "lora_drain_wait_threshold",
        "lora_drain_policy",
        "lora_eviction_policy",
        "base_model_uses_slot",
        "max_loaded_loras",
        "lora_prefetch",
    }
)


class RunnerCache:
    """The device runner of the last real engine built, for the next setting to take over when
    they differ only in scheduling (:data:`SCHEDULING_FIELDS`). :func:`run_bench` keeps one for its
    settings and drops it when it returns; a script that calls ``run_bench`` several times (e.g.
    once per request rate) can pass one of its own to share the runner across the calls, and
    calls :meth:`clear` when done."""

    def __init__(self) -> None:
        self._key: EngineConfig | None = None
        self._runner = None

    def take(self, config: EngineConfig):
        """The cached runner if it serves ``config``, else None; either way the cache lets go of
        it (a runner not reused must be freed before the next engine allocates its own)."""
        key = _runner_key(config)
        runner = self._runner if self._key == key else None
        self.clear()
        return runner

    def put(self, config: EngineConfig, runner) -> None:
        self._key, self._runner = _runner_key(config), runner

    def clear(self) -> None:
        self._key = self._runner = None


def _runner_key(config: EngineConfig) -> EngineConfig:
    defaults = EngineConfig(model=config.model)
    return dataclasses.replace(config, **{f: getattr(defaults, f) for f in SCHEDULING_FIELDS})


def make_engine(config: EngineConfig, bench: BenchConfig, runners: RunnerCache | None = None):
    """The engine of one setting. With ``runners``, successive settings that differ only in
    scheduling share one device runner: building and compiling the 8B model again would cost a
    minute or more each. The new engine's adapter pool starts empty and rewrites each slot it
    uses; its page pool starts empty, so what the cache held is never read."""
    from jlora.engine import Engine

    if bench.backend == "sim":
        from jlora.sim import make_sim_engine

        return make_sim_engine(config, bench.sim_cost_model)
    engine = Engine(config, runner=runners.take(config) if runners else None)
    if runners is not None:
        runners.put(config, engine.runner)
    return engine


def run_bench(
    config: EngineConfig,
    bench: BenchConfig,
    *,
    quiet: bool = False,
    runners: RunnerCache | None = None,
) -> dict:
    """Run the workload under each setting; print and write the reports; return the metrics.
    ``runners``: share device runners with other calls (see :class:`RunnerCache`); by default the
    settings of this call share one, released when it returns."""
    own_runners = runners is None
    runners = RunnerCache() if own_runners else runners
    settings = [parse_setting(s) for s in bench.compare] or [("run", {})]
    model = config.model_config()
    names = list(bench.lora_name) or list(config.lora_paths) or [None]
    for n in names:
        if n is not None and n not in config.lora_paths and bench.backend != "http":
            raise ValueError(
                f"--lora-name {n!r} is not among --lora-paths ({', '.join(config.lora_paths)})"
            )
    workload: list[WorkloadRequest] = build_workload(
        bench,
        vocab_size=model.vocab_size,
        lora_names=names,
        context_length=config.resolved_context_length(model),
        tokenizer=_tokenizer(config) if bench.dataset_name == "sharegpt" else None,
    )
    results: dict[str, RunResult] = {}
    metrics: dict[str, dict] = {}
    timelines: dict[str, SlotTimeline] = {}
    ranks: dict[str, int] = {}
    configs: dict[str, EngineConfig] = {}
    for name, overrides in settings:  # every setting checked before the first runs
        if name in configs:
            raise ValueError(f"--compare names the setting {name!r} twice")
        try:
            configs[name] = dataclasses.replace(config, **overrides)
        except ValueError as e:
            raise ValueError(f"--compare setting {name!r}: {e}") from e
    # A fresh TensorBoard directory per invocation: a second run must not extend the first's
    # curves (they would go back in time).
    stamp = _fresh_stamp(Path(bench.tensorboard_dir or "."))
    for name, cfg in configs.items():
        if bench.backend == "http":
            results[name] = result = run_http_workload(
                bench.base_url, workload, progress=not bench.disable_tqdm, desc=name
            )
            metrics[name] = compute_metrics(result.outputs, result.duration)
            adapters = per_adapter_ttft(result.outputs)
            if not quiet:
                print(format_block(name, metrics[name], bench.request_rate))
                print(format_per_adapter(adapters))
            _write_outputs(bench, name, cfg, metrics[name], adapters, result)
            continue
        engine = make_engine(cfg, bench, runners)
        observers: list = [timelines.setdefault(name, SlotTimeline())]
        if bench.tensorboard_dir:
            run_dir = Path(bench.tensorboard_dir) / stamp / name
            recorded = {"setting": name} | _settings(cfg, bench)
            observers.append(TensorBoardTrace(run_dir, names, settings=recorded))
            if bench.profile_steps:
                lo, hi = parse_step_range(bench.profile_steps)
                observers.append(ProfileSteps(run_dir, lo, hi))
        result = run_workload(
            engine, workload, observers=tuple(observers), progress=not bench.disable_tqdm, desc=name
        )
        for o in observers:
            o.finish(result)
        results[name] = result
        metrics[name] = compute_metrics(result.outputs, result.duration)
        adapters = per_adapter_ttft(result.outputs)
        ranks.update({n: a.rank for n, a in engine.adapters.host.items()})
        if not quiet:
            print(format_block(name, metrics[name], bench.request_rate, _simulated(engine)))
            print(format_per_adapter(adapters))
            print(format_host_cache(engine.adapters.host_bytes()))
        _write_outputs(bench, name, cfg, metrics[name], adapters, result)
        # Free this setting's weights and KV cache before the next engine allocates its own.
        del engine, result
        gc.collect()
    if len(settings) > 1 and not quiet:
        print(format_compare(metrics))
    if bench.plot_dir:
        out = Path(bench.plot_dir)
        out.mkdir(parents=True, exist_ok=True)
        thresholds = {n: c.lora_drain_wait_threshold for n, c in configs.items()}
        plot_ttft_cdf(results, out / "ttft_cdf.png", thresholds)
        plot_ttft_per_adapter(results, out / "ttft_per_adapter.png", ranks)
        x_max = max(r.duration for r in results.values())
        for name, tl in timelines.items():
            cfg = configs[name]
            policy = f"{cfg.lora_drain_policy} at {thresholds[name]:g} s"
            plot_slot_timeline(
                tl,
                f"device slots over time: {name} ({policy if thresholds[name] else 'drainer off'})",
                out / f"slots_{name}.png",
                ranks=ranks,
                x_max=x_max,
            )
    if bench.tensorboard_dir and not quiet:
        print(f"\ntensorboard --logdir {bench.tensorboard_dir}   (this run: {stamp}/)")
    if own_runners:
        runners.clear()  # the device memory of the last setting is the caller's again
    return {"metrics": metrics, "results": results, "timelines": timelines, "ranks": ranks}


def _fresh_stamp(root: Path) -> str:
    """``YYYYMMDD-HHMMSS`` of now, with ``-1``, ``-2`` ... when a run of the same second has it."""
    stamp = name = time.strftime("%Y%m%d-%H%M%S")
    i = 0
    while (root / name).exists():
        i += 1
        name = f"{stamp}-{i}"
    return name


def _settings(cfg: EngineConfig, bench: BenchConfig) -> dict[str, object]:
    """The fields of a run's settings that differ from their defaults, engine's then benchmark's,
    with the few that say what ran always included."""
    always = {"model", "lora_drain_policy", "lora_drain_wait_threshold", "max_loras_per_batch"}
    always |= {"backend", "request_rate", "num_prompts"}
    out: dict[str, object] = {}
    for obj in (cfg, bench):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            default = f.default if f.default is not dataclasses.MISSING else None
            if f.name in always or value != default:
                out[f.name] = value
    return out


def _simulated(engine) -> str | None:
    """The cost model behind a simulated engine's times, described; None for a real engine."""
    cost = getattr(engine.runner, "cost", None)
    if cost is None:
        return None
    from jlora.sim import calibrated_step_settings

    return describe_cost_model(dict(cost.info), calibrated_step_settings(cost))


def _tokenizer(config: EngineConfig):
    """The model's tokenizer, for datasets of text (``sharegpt``)."""
    where = config.resolved_tokenizer_path
    tokenizer = None if where is None else load_tokenizer(where)
    if tokenizer is None:
        raise ValueError(
            f"dataset_name='sharegpt' needs the model's tokenizer: {config.model!r} has no "
            "tokenizer.json (pass a model directory with one, or --tokenizer-path)"
        )
    return tokenizer


def _write_outputs(bench, name, cfg, metrics, adapters, result) -> None:
    if bench.output_file:
        line = {
            "setting": name,
            **metrics,
            "per_adapter": adapters,
            "engine_config": dataclasses.asdict(cfg),
            "bench_config": dataclasses.asdict(bench),
        }
        with open(bench.output_file, "a") as f:
            f.write(json.dumps(line, default=str) + "\n")
    if bench.output_details:
        with open(bench.output_details, "a") as f:
            for i, o in enumerate(result.outputs):
                itl = [b - a for a, b in zip(o.token_times, o.token_times[1:], strict=False)]
                f.write(
                    json.dumps(
                        {
                            "setting": name,
                            "index": i,
                            "lora_name": o.lora_name,
                            "prompt_len": o.prompt_len,
                            "output_len": len(o.token_ids),
                            "arrival_s": o.arrival_time - result.start,
                            "ttft_ms": None if o.ttft is None else o.ttft * 1e3,
                            "e2e_ms": None if o.e2e is None else o.e2e * 1e3,
                            "itl_ms": [x * 1e3 for x in itl],
                            "num_preemptions": o.num_preemptions,
                            "error": o.error,
                        }
                    )
                    + "\n"
                )


def main(argv: list[str] | None = None) -> None:
    """``jlora bench``: bad input prints one line and exits with code 2 (``--debug``: the
    traceback)."""
    run_command("jlora bench", _main, sys.argv[1:] if argv is None else list(argv))


def _main(argv: list[str]) -> None:
    from jlora.distributed import initialize_from_env

    args = build_parser().parse_args(argv)
    initialize_from_env()  # several processes when JAX_COORDINATOR_ADDRESS is set
    config = dataclass_from_args(EngineConfig, args)
    bench = dataclass_from_args(BenchConfig, args)
    run_bench(config, bench)
