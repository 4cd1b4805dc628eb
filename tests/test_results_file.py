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
