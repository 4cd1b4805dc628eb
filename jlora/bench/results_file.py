"""What every experiment shares (``experiments/*.py``): the header of a run, a timer, and the
results file as the project keeps them.

A results file (``experiments/results/*.md``) opens with a ``## Current`` section rewritten by each
run, then ``## Log``, newest first, each entry headed ``### YYYY-MM-DD <commit>: <verdict>``
(CONTRIBUTING.md). A run's header says what measured it::

    header = run_header()
    lines = [f"# {title}", "", "## Current", "", *header.lines(), ...]
    write_results_file(path, "\\n".join(lines) + "\\n\\n", verdict)
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout the experiments run from (their results and commands are relative to it)."""


def git_commit(root: Path = REPO_ROOT, mark_dirty: bool = False) -> str:
    """The short commit of ``root``'s checkout (``unknown`` outside git); ``mark_dirty``: with
    ``-dirty`` appended where tracked files differ from it.

    ``JLORA_COMMIT`` in the environment overrides it, for a copy of a working tree whose git
    metadata is not the source's (a benchmark machine handed the files, not the repository)."""
    if os.environ.get("JLORA_COMMIT"):
        return os.environ["JLORA_COMMIT"]

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return out.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = mark_dirty and git("status", "--porcelain", "--untracked-files=no")
    return head + ("-dirty" if dirty else "")


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that reruns this process from the repository root (``PYTHONPATH=. python
    experiments/x.py ARGS``)."""
    argv = sys.argv if argv is None else argv
    script = Path(argv[0]).resolve()
    name = script.relative_to(REPO_ROOT).as_posix() if script.is_relative_to(REPO_ROOT) else argv[0]
    return " ".join(["PYTHONPATH=. python", name, *map(shlex.quote, argv[1:])])


def device_name() -> str:
    """The device the run used: its kind and platform (``NVIDIA H100 80GB HBM3 (gpu)``); a CPU
    with its core count (a CPU figure is not a GPU figure)."""
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    return f"{device.device_kind} ({device.platform})"


@dataclass(frozen=True)
class RunHeader:
    """What measured a result: commit, date, device, versions, and the command that reruns it."""

    commit: str
    date: str
    device: str
    jax: str
    python: str
    command: str

    def lines(self) -> list[str]:
        """The header as the first bullets of a results file's ``## Current``."""
        return [
            f"- commit `{self.commit}`, {self.date}; device: {self.device}; jax {self.jax}; "
            f"python {self.python}",
            f"- command: `{self.command}`",
        ]

    def as_dict(self) -> dict[str, str]:
        """The header as fields of a raw-data record."""
        return dict(self.__dict__)


def run_header(argv: Sequence[str] | None = None, command: str | None = None) -> RunHeader:
    """The header of this run (the devices are read through jax, which it imports); ``command``:
    the one to show, where it is not this process's own (default :func:`command_line`)."""
    import jax

    return RunHeader(
        commit=git_commit(),
        date=datetime.date.today().isoformat(),
        device=device_name(),
        jax=jax.__version__,
        python=platform.python_version(),
        command=command or command_line(argv),
    )


def median_seconds(
    fn: Callable[[], object], repeats: int = 10, warmup: int = 1, timer=time.perf_counter
) -> float:
    """The median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones;
    ``fn`` must wait for its own result (``jax.block_until_ready``)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = timer()
        fn()
        times.append(timer() - start)
    return statistics.median(times)


def write_results_file(
    path: Path | str,
    current: str,
    verdict: str | None,
    root: Path = REPO_ROOT,
    body: str = "",
) -> None:
    """Write ``current`` (the title and ``## Current``) over the file's old one, keep its Log, and
    put a Log entry for ``verdict`` (at today's date and ``root``'s commit) on top of it,
    with ``body`` (the run's tables and details) under its heading."""
    path = Path(path)
    log = ""
    if path.exists() and "## Log" in path.read_text():
        log = path.read_text().split("## Log", 1)[1].lstrip("\n")
    if verdict:
        entry = f"### {datetime.date.today().isoformat()} {git_commit(root)}: {verdict}\n\n"
        if body.strip():
            entry += body.strip("\n") + "\n\n"
        log = entry + log
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(current + "## Log\n\n" + log)
