"""The results-file harness keeps a file's Log, newest first, and rewrites only its Current."""

from __future__ import annotations

import re

from jlora.bench.results_file import write_results_file


def test_write_results_file_rewrites_current_and_keeps_the_log_newest_first(tmp_path):
    path = tmp_path / "sub" / "topic.md"
    write_results_file(path, "# T\n\n## Current\n\n- one\n\n", "first", body="| a |\n")
    write_results_file(path, "# T\n\n## Current\n\n- two\n\n", None)  # a render: no new entry
    write_results_file(path, "# T\n\n## Current\n\n- three\n\n", "second", body="details")
    text = path.read_text()
    current, log = text.split("## Log", 1)
    assert "- three" in current and "- one" not in current and "- two" not in current
    heads = re.findall(r"^### \d{4}-\d\d-\d\d \S+: (.*)$", log, re.M)
    assert heads == ["second", "first"]
    assert log.index("details") < log.index("first") < log.index("| a |")


def _log_entries(text: str) -> list[str]:
    """The Log's entries of a results file, each its heading and body."""
    log = text.split("## Log", 1)[1]
    return ["### " + e.strip() for e in re.split(r"^### ", log, flags=re.M)[1:]]


def test_calibration_summary_keeps_the_log_and_adds_one_entry_on_top(tmp_path):
    from types import SimpleNamespace

    from jlora.bench.results_file import REPO_ROOT
    from jlora.sim import CostModel
    from jlora.sim.calibration_run import write_outputs

    committed = (REPO_ROOT / "experiments/results/cost_model_cpu__tiny.md").read_text()
    md = tmp_path / "cost_model.md"
    md.write_text(committed)
    cost = CostModel.load_file(REPO_ROOT / "jlora/sim/cost_models/cpu__tiny.json")
    old = _log_entries(committed)
    for loads_only in (False, True):
        args = SimpleNamespace(out=tmp_path / "cost.json", summary=md, loads_only=loads_only)
        write_outputs(cost, args, "cpu")
        text = md.read_text()
        current, _ = text.split("## Log", 1)
        assert current.startswith("# Cost model") and "## Current" in current
        assert len(current.splitlines()) <= 25
        entries = _log_entries(text)
        assert entries[-len(old) :] == old  # every committed entry, unchanged, below the new
    assert len(entries) == len(old) + 2
    assert "re-measured" in entries[0] and "| feature |" in entries[1]
    assert text.count("- load terms re-measured:") == 1


def test_train_skills_results_keep_the_log_and_add_one_entry_on_top(tmp_path):
    """``train_skills.py`` trains for minutes: its writer is checked on a fake result."""
    import importlib.util

    from jlora.bench.results_file import REPO_ROOT

    spec = importlib.util.spec_from_file_location(
        "train_skills", REPO_ROOT / "experiments/train_skills.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (REPO_ROOT / "experiments/results/skills.md").read_text()
    path = tmp_path / "skills.md"
    path.write_text(committed)
    table = (
        "| adapter | copy | a |\n| --- | ---: | ---: |\n| none | 1.00 | 0.00 |\n| a | 0.0 | 0.99 |"
    )
    module.write_results(path, table, "python x.py", 7, True, (1.0, 2.0, 3.0))
    text = path.read_text()
    current = text.split("## Log", 1)[0]
    assert "## Current" in current and "| a | 0.0 | 0.99 |" in current
    assert len(current.splitlines()) <= 25
    old, new = _log_entries(committed), _log_entries(text)
    assert new[1:] == old and "1 skills adapters on 7 held-out prompts" in new[0]
