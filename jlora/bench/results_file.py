"""Results files (``experiments/results/*.md``) as the project keeps them: a ``## Current``
section rewritten by each run, then ``## Log``, newest first, each entry headed
``### YYYY-MM-DD <commit>: <verdict>``."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path


def git_commit(root: Path) -> str:
    """The short commit of ``root``'s checkout (``unknown`` outside git)."""
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
    )
    return out.stdout.strip() or "unknown"


def write_results_file(path: Path, current: str, verdict: str | None, root: Path) -> None:
    """Write ``current`` (the title and ``## Current``) over the file's old one, keep its Log, and
    put a Log entry for ``verdict`` (at today's date and ``root``'s commit) on top of it."""
    log = ""
    if path.exists() and "## Log" in path.read_text():
        log = path.read_text().split("## Log", 1)[1].lstrip("\n")
    if verdict:
        entry = f"### {datetime.date.today().isoformat()} {git_commit(root)}: {verdict}\n\n"
        log = entry + log
    path.write_text(current + "## Log\n\n" + log)
