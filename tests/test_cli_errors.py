"""Bad command lines: one line naming the bad value (and the nearest name to a misspelt one), exit
code 2, no traceback; ``--debug`` shows the traceback. Run in-process against the simulator, so
that the whole file takes seconds."""

from __future__ import annotations

import pytest

from jlora.cli import main
from jlora.sampling_params import SamplingParams

SKILLS_BASE = "jlora/assets/skills/base"
# The simulator on the tiny model in the setting its cost model was calibrated with (no warning).
BENCH = [
    "bench",
    "--backend",
    "sim",
    "--model",
    "tiny",
    "--dtype",
    "float32",
    "--max-loras-per-batch",
    "3",
    "--num-prompts",
    "4",
    "--disable-tqdm",
]
A = ["--lora-paths", "a=dummy:8"]

# (extra arguments, what the one line must contain)
MALFORMED = [
    (["--request-rate", "fast"], ["'fast'", "--request-rate", "not a number"]),
    (["--num-prompts", "ten"], ["'ten'", "--num-prompts", "not an integer"]),
    (["--num-prompts", "0"], ["num_prompts=0"]),
    (["--max-lora-per-batch", "3"], ["'--max-lora-per-batch'", "'--max-loras-per-batch'"]),
    (["--lora-paths", "a=dummy:abc"], ["'dummy:abc'", "dummy:RANK"]),
    (["--lora-paths", "a=/no/such/adapter"], ["'/no/such/adapter'", "nothing is there"]),
    (["--lora-paths", f"a={SKILLS_BASE}"], [f"'{SKILLS_BASE}'", "--model"]),
    (["--lora-paths", "a"], ["'a'", "NAME=VALUE"]),
    (["--lora-paths", "a=dummy:128", "--max-lora-rank", "64"], ["rank=128", "max_lora_rank=64"]),
    ([*A, "--compare", "x:lora_drain_wait_threshold=abc"], ["lora_drain_wait_threshold='abc'"]),
    ([*A, "--compare", "x:lora_drain_wait_treshold=1"], ["'lora_drain_wait_threshold'"]),
    ([*A, "--compare", "off", "x:lora_drain_policy=fiar"], ["'x'", "'fiar'", "'fair'"]),
    ([*A, "--compare", "off", "off"], ["'off' twice"]),
    ([*A, "--compare", "x:overlap_schedule=maybe"], ["overlap_schedule='maybe'"]),
    (["--model", "llama-3.1-8"], ["'llama-3.1-8'", "'llama-3.1-8b'"]),
    (["--lora-drain-policy", "fiar"], ["'fiar'", "'fair'"]),
    (["--dataset-name", "sharegpt"], ["'sharegpt'"]),
    (["--backend", "gpu"], ["'gpu'"]),
    (["--lora-request-distribution", "zipf"], ["'zipf'"]),
    (["--profile-steps", "5"], ["'5'", "A:B"]),
    ([*A, "--lora-name", "zz"], ["'zz'", "--lora-paths"]),
    (["--max-loaded-loras", "1"], ["max_loaded_loras=1"]),
    (["--dataset-name", "trace", "--dataset-path", "no.csv"], ["'no.csv'"]),
    (["--context-length", "100000"], ["context_length=100000"]),
]


@pytest.mark.parametrize(("extra", "needles"), MALFORMED, ids=[" ".join(e) for e, _ in MALFORMED])
def test_a_malformed_command_line_prints_one_line_and_exits_2(extra, needles, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*BENCH, *extra])
    out, err = capsys.readouterr()
    lines = (out + err).strip().splitlines()
    assert exit_.value.code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("jlora bench: error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in out + err


def test_an_unknown_command_names_itself_and_the_nearest_one(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bnech"])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "'bnech'" in lines[0] and "'bench'" in lines[0]


def test_debug_shows_the_traceback():
    with pytest.raises(ValueError, match="lora_drain_policy='fiar'"):
        main([*BENCH, "--lora-drain-policy", "fiar", "--debug"])


def test_sampling_params_take_max_tokens_and_name_the_accepted_keywords():
    assert SamplingParams(max_tokens=8) == SamplingParams(max_new_tokens=8)
    with pytest.raises(TypeError, match="another name for max_new_tokens"):
        SamplingParams(max_tokens=8, max_new_tokens=8)
    with pytest.raises(TypeError, match=r"'temprature' \(did you mean 'temperature'\?\).*top_k"):
        SamplingParams(temprature=0.5)
    with pytest.raises(TypeError, match="keywords only"):
        SamplingParams(8)
