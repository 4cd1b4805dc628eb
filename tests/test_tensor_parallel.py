"""Tensor parallelism: tp 2 and 4 give the outputs of tp 1, two jax.distributed processes give
those of one, the compiled steps hold exactly the collectives jlora.tensor_parallel writes down.

The multi-device checks run in subprocesses (``tests/tp_worker.py``) with fake CPU devices, since
XLA_FLAGS must be set before JAX starts and this process runs the suite on one device.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from jlora.adapters.dummy import random_adapter
from jlora.adapters.slots import adapter_to_groups
from jlora.config import EngineConfig
from jlora.distributed import distributed_env
from jlora.engine import Engine
from jlora.tensor_parallel import check_tp, local_config
from models.llama import fused_column_order
from models.presets import get_preset
from tests.tp_worker import MODEL, ROOT, child_env, run_workers

LAYERS = MODEL["num_hidden_layers"]


@pytest.fixture(scope="module")
def equivalence(tmp_path_factory) -> dict:
    return run_workers("equivalence", tmp_path_factory.mktemp("tp"))[0]


@pytest.fixture(scope="module")
def distributed(tmp_path_factory) -> list[dict]:
    return run_workers("distributed", tmp_path_factory.mktemp("dist"))


def _max_diff(a: list, b: list) -> float:
    return max(
        float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(a, b, strict=True)
    )


# ---------------------------------------------------------------- tp 2 and 4 against tp 1
@pytest.mark.parametrize("key", ["xla/tp2", "xla/tp4", "pallas/tp2"])
def test_tp_matches_tp1(equivalence, key):
    ref, got = equivalence["xla/tp1"], equivalence[key]
    # Guards the workload itself: adapters that changed nothing, or no swaps, would prove little.
    assert ref["adapter_effect"] > 0.1 and ref["slot_loads"] >= 6
    assert got["tokens"] == ref["tokens"]  # greedy and seeded sampling, token for token
    assert _max_diff(got["scores"], ref["scores"]) < 1e-5  # float32 logits, mixed adapters
    assert got["slot_loads"] == ref["slot_loads"]
    assert got["recompiled"] == 0  # adapter swaps and a second run compile nothing new


@pytest.mark.parametrize("tp", [2, 4])
def test_arrays_are_split_as_documented(equivalence, tp):
    shards = equivalence[f"xla/tp{tp}"]["shards"]
    qkv = MODEL["num_attention_heads"] * MODEL["head_dim"] + 2 * MODEL["num_key_value_heads"] * 8
    assert shards["kv"][3] == MODEL["num_key_value_heads"] // tp  # KV heads
    assert shards["w_qkv"] == [MODEL["hidden_size"], qkv // tp]  # column-parallel
    assert shards["w_o"][0] == MODEL["num_attention_heads"] * MODEL["head_dim"] // tp  # row
    assert shards["lm_head"][1] == MODEL["vocab_size"] // tp
    assert shards["lora_qkv_b"][2] == qkv // tp  # LoRA B [L, S, O, R] split with its column base
    assert shards["lora_down_a"][4] == MODEL["intermediate_size"] // tp  # LoRA A with its row
    # after serving (slot writes, donated steps) the arrays are still split the same way
    assert "'tp'" in shards["kv_spec"] and "'tp'" in shards["lora_qkv_b_spec"]
    assert "'tp'" in shards["lora_down_a_spec"]


@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("kind", ["decode", "prefill"])
def test_compiled_step_collectives(equivalence, tp, kind):
    # Two all-reduces per layer (o and down, LoRA folded in), one all-gather of the logits.
    counts = equivalence[f"xla/tp{tp}"]["collectives"][kind]
    assert counts == {"all-reduce": 2 * LAYERS, "all-gather": 1}
    assert equivalence["xla/tp1"]["collectives"][kind] == {}


@pytest.mark.parametrize("case", ["llama", "qwen2"])
def test_tp2_hf_checkpoint_matches_transformers(equivalence, case):
    # Safetensors loaded split over 2 devices (qwen2: q/k/v biases, tied head) against HF+PEFT.
    assert equivalence["hf_parity"][case] <= 1e-4


# ---------------------------------------------------------------- two processes
def test_two_processes_match_one(equivalence, distributed):
    assert distributed[0]["clock"] == distributed[1]["clock"]  # one clock for both schedulers
    for i, r in enumerate(distributed):
        assert (r["process"], r["processes"], r["devices"], r["local_devices"]) == (i, 2, 4, 2)
        assert r["synced_clock"]
        got, ref = r["workload"], equivalence["xla/tp1"]
        assert got["tokens"] == ref["tokens"] == equivalence["xla/tp4"]["tokens"]
        assert _max_diff(got["scores"], ref["scores"]) < 1e-5
        assert got["slot_loads"] == ref["slot_loads"]
        assert "the processes diverged at the load of slot 0" in r["divergence"]


# ---------------------------------------------------------------- the GPU benchmark script
def test_benchmark_script_runs_at_tiny_scale(tmp_path):
    # experiments/tensor_parallel.py's GPU part, on the tiny preset and 2 fake CPU devices.
    env = child_env(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    args = "--parts 8b-tp2 --model tiny --num-prompts 6 --rate inf --batches 16 --steps 2"
    out = subprocess.run(
        [sys.executable, "experiments/tensor_parallel.py", *args.split()]
        + ["--json", str(tmp_path / "tp.json"), "--out", str(tmp_path / "tp.md")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = json.loads((tmp_path / "tp.json").read_text())["8b-tp2"]
    assert run["tp"] == 2 and run["workload"]["completed"] == 6
    tiny_layers = get_preset("tiny").num_layers
    for shape, counts in run["collectives"].items():
        assert counts == {"all-reduce": 2 * tiny_layers, "all-gather": 1}, shape
    assert "| 8b-tp2 | tiny |" in (tmp_path / "tp.md").read_text()


# ---------------------------------------------------------------- in this process
def test_fused_column_order():
    # q|k|v of sizes 4, 2, 2 over 2 shards: shard 0 gets q[0:2] k[0:1] v[0:1], shard 1 the rest.
    assert fused_column_order((4, 2, 2), 2).tolist() == [0, 1, 4, 6, 2, 3, 5, 7]
    assert fused_column_order((4, 2, 2), 1).tolist() == list(range(8))
    with pytest.raises(ValueError, match="divisible by tp=4"):
        fused_column_order((4, 2, 2), 4)


def test_adapter_b_laid_out_per_shard():
    cfg = get_preset("tiny")
    adapter = random_adapter("x", cfg, 4, seed=0)
    plain = adapter_to_groups(adapter, cfg, 4, "float32")
    split = adapter_to_groups(adapter, cfg, 4, "float32", tp=2)
    for group, sizes in (("qkv", (cfg.q_size, cfg.kv_size, cfg.kv_size)), ("gate_up", None)):
        sizes = sizes or (cfg.intermediate_size,) * 2
        order = fused_column_order(sizes, 2)
        np.testing.assert_array_equal(split[0][group][1], plain[0][group][1][order])
        np.testing.assert_array_equal(split[0][group][0], plain[0][group][0])  # A replicated
    for group in ("o", "down"):  # row-parallel groups keep the plain layout (A split in place)
        for got, want in zip(split[1][group], plain[1][group], strict=True):
            np.testing.assert_array_equal(got, want)


def test_refusals_name_the_values():
    tiny = get_preset("tiny")  # 2 KV heads
    with pytest.raises(ValueError, match="num_key_value_heads=2"):
        check_tp(tiny, 4)
    with pytest.raises(ValueError, match="tp_size=0"):
        EngineConfig(model="tiny", tp_size=0)
    with pytest.raises(ValueError, match="num_key_value_heads=2"):
        Engine(EngineConfig(model="tiny", load_format="dummy", tp_size=4, warmup=False))
    with pytest.raises(ValueError, match="tp_size=2 needs 2 devices, but jax sees 1"):
        Engine(EngineConfig(model="tiny", load_format="dummy", tp_size=2, warmup=False))
    shard = local_config(tiny, 2)
    assert (shard.num_heads, shard.num_kv_heads, shard.intermediate_size) == (2, 1, 64)


def test_distributed_env():
    assert distributed_env({}) is None
    assert distributed_env({"RANK": "1", "WORLD_SIZE": "2"}) is None  # no coordinator: one process
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4"}
    assert distributed_env({**env, "JAX_PROCESS_ID": "3"}) == ("10.0.0.1:1234", 4, 3)
    assert distributed_env({**env, "RANK": "2"}) == ("10.0.0.1:1234", 4, 2)
    with pytest.raises(ValueError, match="JAX_PROCESS_ID, RANK"):
        distributed_env(env)
    with pytest.raises(ValueError, match="JAX_PROCESS_ID=4 is outside"):
        distributed_env({**env, "JAX_PROCESS_ID": "4"})
    with pytest.raises(ValueError, match="must be an integer"):
        distributed_env({**env, "JAX_PROCESS_ID": "one"})
