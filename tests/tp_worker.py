"""The tensor-parallel checks, run in processes of their own: XLA_FLAGS (the number of fake CPU
devices) must be set before JAX starts, and the rest of the suite runs on one device.
``tests/test_tensor_parallel.py`` starts these and reads the JSON they write.

    python -m tests.tp_worker equivalence OUT.json      # 8 fake CPU devices: tp 1, 2, 4
    python -m tests.tp_worker odd_vocab OUT.json        # 4 fake CPU devices: vocabulary 257
    python -m tests.tp_worker distributed OUT.json      # one of two jax.distributed processes,
                                                        # 2 fake CPU devices each, tp 4 over both
                                                        # (JAX_COORDINATOR_ADDRESS etc. in the env)

Both run :func:`workload` on the same model, so their outputs compare with each other.
:func:`run_workers` starts them (``experiments/tensor_parallel.py --parts cpu`` runs them too,
through :func:`jlora.distributed.run_workers`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MODEL = {  # a Llama with 4 KV heads (tp 4 needs them) and an untied, vocabulary-split head
    "model_type": "llama",
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 8,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "eos_token_id": 2,
}
ADAPTERS = {"a0": "dummy:8", "a1": "dummy:4", "a2": "dummy:8", "a3": "dummy:2"}


def engine_config(model_dir: str, tp: int, backend: str = "xla"):
    from jlora.config import EngineConfig

    return EngineConfig(
        model=model_dir,
        load_format="dummy",
        dtype="float32",
        tp_size=tp,
        lora_paths=ADAPTERS,
        max_loras_per_batch=2,  # 4 adapters through 2 slots: swaps
        max_lora_rank=8,
        lora_backend=backend,
        context_length=64,
        page_size=4,  # many pages per sequence
        max_running_requests=4,
        max_prefill_tokens=32,
        chunked_prefill_size=8,  # long prompts prefill in chunks, reading back their pages
        prefill_token_buckets=(32,),
        decode_batch_buckets=(4,),
        kv_len_buckets=(64,),
        warmup=False,
    )


def workload(engine) -> dict:
    """Scores and generations with mixed adapters, more adapters than slots, paged KV, chunked
    prefill; greedy and seeded sampling. Returns tokens and logits as lists."""
    import numpy as np

    from jlora.sampling_params import SamplingParams

    loads = []
    load_lora = engine.runner.load_lora
    engine.runner.load_lora = lambda slot, adapter: (loads.append(slot), load_lora(slot, adapter))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 256, n).tolist() for n in (5, 12, 3, 20, 9, 17)]
    names = ["a0", None, "a1", "a2", "a3", "a0"]
    scores = engine.score(prompts[:5], names[:5])
    greedy = SamplingParams(max_new_tokens=10, ignore_eos=True)
    sampled = SamplingParams(max_new_tokens=10, ignore_eos=True, temperature=1.0, seed=7)
    outs = engine.generate(prompts, [greedy] * 5 + [sampled], ["a0", "a1", None, "a2", "a3", "a1"])
    compiled = engine.runner.compiled_count()
    again = engine.generate(prompts[:4], greedy, ["a3", "a2", "a1", "a0"])  # same shapes again
    base = engine.score([prompts[0]])[0]
    return {
        "scores": [s.tolist() for s in scores],
        "tokens": [o.token_ids for o in outs] + [o.token_ids for o in again],
        "slot_loads": len(loads),
        "recompiled": engine.runner.compiled_count() - compiled,
        "adapter_effect": float(np.abs(scores[0] - base).max()),
    }


def shard_shapes(engine) -> dict:
    """Per-device shapes of a few split arrays, and their PartitionSpecs after serving."""
    r = engine.runner

    def local(x):
        return list(x.addressable_shards[0].data.shape)

    def spec(x):
        return str(getattr(x.sharding, "spec", None))

    lp, lora = r.params.layers[0], r.slots.layers
    return {
        "kv": local(r.kv.k),
        "kv_spec": spec(r.kv.k),
        "w_qkv": local(lp.w_qkv),
        "w_o": local(lp.w_o),
        "lm_head": local(r.params.lm_head),
        "lora_qkv_b": local(lora["qkv"].b),
        "lora_qkv_b_spec": spec(lora["qkv"].b),
        "lora_down_a": local(lora["down"].a),
        "lora_down_a_spec": spec(lora["down"].a),
    }


def hf_parity(case_name: str, tp: int) -> float:
    """Worst error of the HF fixture's scores at ``tp``, relative to the reference's scale."""
    import numpy as np

    from jlora.config import EngineConfig
    from jlora.engine import Engine
    from tests.conftest import HF_FIXTURES

    case = json.loads((HF_FIXTURES / "manifest.json").read_text())["cases"][case_name]
    ref = np.load(HF_FIXTURES / "reference.npz")
    adapters = {name: str(HF_FIXTURES / path) for name, path in case["adapters"].items()}
    engine = Engine(
        EngineConfig(
            model=str(HF_FIXTURES / case["model_dir"]),
            dtype="float32",
            tp_size=tp,
            lora_paths=adapters,
            max_loras_per_batch=max(1, len(adapters)),
            max_lora_rank=16,
            warmup=False,
        )
    )
    prompts = [p["token_ids"] for p in case["prompts"]]
    out = engine.score(prompts, lora_name=[p["adapter"] for p in case["prompts"]])
    return max(
        float(np.abs(o - ref[p["npz_key"]]).max() / np.abs(ref[p["npz_key"]]).max())
        for p, o in zip(case["prompts"], out, strict=True)
    )


def equivalence(out: Path) -> None:
    from jlora.engine import Engine
    from jlora.tensor_parallel import count_collectives

    result: dict = {"timings": {}}
    with tempfile.TemporaryDirectory() as model_dir:
        (Path(model_dir) / "config.json").write_text(json.dumps(MODEL))
        for tp, backend in ((1, "xla"), (2, "xla"), (4, "xla"), (2, "pallas")):
            t = time.perf_counter()
            engine = Engine(engine_config(model_dir, tp, backend))
            key = f"{backend}/tp{tp}"
            result[key] = workload(engine)
            if backend == "xla":
                result[key]["shards"] = shard_shapes(engine)
                result[key]["collectives"] = {
                    shape[0]: count_collectives(engine.runner.compiled_text(shape))
                    for shape in engine.buckets.all_shapes()  # one of each kind here
                }
            result["timings"][key] = time.perf_counter() - t
    t = time.perf_counter()
    result["hf_parity"] = {name: hf_parity(name, 2) for name in ("llama", "qwen2")}
    result["timings"]["hf_parity"] = time.perf_counter() - t
    out.write_text(json.dumps(result))


def distributed(out: Path) -> None:
    import jax

    from jlora.distributed import SyncedClock, initialize_from_env
    from jlora.engine import Engine

    assert initialize_from_env()
    result = {
        "process": jax.process_index(),
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
    }
    with tempfile.TemporaryDirectory() as model_dir:
        (Path(model_dir) / "config.json").write_text(json.dumps(MODEL))
        engine = Engine(engine_config(model_dir, jax.device_count()))
        result["synced_clock"] = isinstance(engine.clock, SyncedClock)
        result["clock"] = engine.clock.now()  # process 0's reading, on both
        result["workload"] = workload(engine)
        # Processes that diverge must fail loudly, not serve from inconsistent shards.
        name = "a0" if jax.process_index() == 0 else "a1"
        try:
            engine.runner.load_lora(0, engine.adapters.get(name))
            result["divergence"] = "not detected"
        except RuntimeError as e:
            result["divergence"] = str(e)
    out.write_text(json.dumps(result))
    jax.distributed.shutdown()


def odd_vocab(out: Path) -> None:
    """A vocabulary that no tp_size divides (a fine-tune with one added token): tp 2 and 4, dummy
    weights at tp 4 and the same weights read back from a checkpoint at tp 2, against tp 1."""
    import numpy as np

    from jlora.engine import Engine
    from models.config import ModelConfig
    from models.save import save_hf_weights
    from models.weights import init_dummy_weights

    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, ckpt_dir = Path(tmp) / "dummy", Path(tmp) / "ckpt"
        model_dir.mkdir()
        (model_dir / "config.json").write_text(json.dumps({**MODEL, "vocab_size": 257}))
        cfg = ModelConfig.from_hf_dir(model_dir)
        save_hf_weights(init_dummy_weights(cfg, "float32", 0), cfg, ckpt_dir)
        runs = (("dummy", model_dir, 1), ("dummy", model_dir, 4), ("ckpt", ckpt_dir, 2))
        for source, path, tp in runs:
            config = engine_config(str(path), tp)
            if source == "ckpt":
                config = dataclasses.replace(config, load_format="auto")
            engine = Engine(config)
            res = workload(engine)
            scores = engine.score([[5, 6, 7, 256]])[0]  # the added token, in and out
            res["vocab"] = int(scores.shape[-1])
            res["added_token_logit"] = float(scores[-1, 256])
            lm_head = engine.runner.params.lm_head.addressable_shards[0].data
            res["lm_head_local"] = list(lm_head.shape)
            result[f"{source}/tp{tp}"] = res
            del engine
    out.write_text(json.dumps(result, default=lambda x: np.asarray(x).tolist()))


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a test's child process (:func:`jlora.distributed.child_env`)."""
    # jlora (and with it jax) is imported only when called: main() sets XLA_FLAGS first.
    from jlora.distributed import child_env as env_of_child

    return env_of_child(ROOT, **extra)


def run_workers(mode: str, out_dir: Path, timeout_s: float = 300) -> list[dict]:
    """Run ``mode`` of this module in fresh processes (:func:`jlora.distributed.run_workers`)."""
    from jlora.distributed import run_workers as run_module

    return run_module("tests.tp_worker", mode, out_dir, ROOT, timeout_s)


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    devices = {"equivalence": 8, "distributed": 2, "odd_vocab": 4}[mode]
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    {"equivalence": equivalence, "distributed": distributed, "odd_vocab": odd_vocab}[mode](out)


if __name__ == "__main__":
    main()
