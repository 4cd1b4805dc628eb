"""Every code block of the README runs as written, on the CPU: Python blocks in this process,
bash blocks in a shell, each in a fresh directory (their relative paths are their own outputs).
A block preceded by ``<!-- readme-test: skip (REASON) -->`` (GPU only, a server, the whole
notebook) is skipped with its reason; ``text`` blocks are expected output, checked where a Python
block prints it."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(
    r"(?:<!-- readme-test: skip \((?P<skip>[^)]*)\) -->\n)?"
    r"^(?P<indent> *)```(?P<lang>\w+)\n(?P<body>.*?)^(?P=indent)```",
    re.S | re.M,
)


def readme_blocks() -> list[tuple[str, str, str | None]]:
    """(language, code, skip reason or None) of each fenced block, in order."""
    text = (ROOT / "README.md").read_text()
    out = []
    for m in FENCE.finditer(text):
        body = "\n".join(line[len(m["indent"]) :] for line in m["body"].splitlines())
        out.append((m["lang"], body, m["skip"]))
    return out


BLOCKS = [(i, b) for i, b in enumerate(readme_blocks()) if b[0] in ("python", "bash")]


def test_the_readme_has_its_recipes_and_marks_each_skip():
    langs = [lang for lang, _, _ in readme_blocks()]
    assert langs.count("python") >= 4 and langs.count("bash") >= 5
    for _, (_, body, skip) in BLOCKS:
        if skip is not None:
            assert skip.strip(), body  # a skip always says why
    # The quick start's two commands set up the shared environment: never run here.
    assert any("make demo" in body and skip for _, (_, body, skip) in BLOCKS)


@pytest.mark.parametrize(
    ("index", "block"), BLOCKS, ids=[f"{i}-{b[0]}-{b[1].split(chr(10))[0][:40]}" for i, b in BLOCKS]
)
def test_readme_block_runs(index, block, tmp_path, monkeypatch):
    lang, body, skip = block
    if skip is not None:
        pytest.skip(skip)
    monkeypatch.chdir(tmp_path)
    if lang == "python":
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(body, f"README.md block {index}", "exec"), {"__name__": "__readme__"})
        expected = _expected_output(index)
        if expected is not None:
            assert out.getvalue().strip() == expected.strip()
        return
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # jlora, python
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", body],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "Traceback" not in done.stderr and "warning" not in done.stderr.lower(), done.stderr


def _expected_output(index: int) -> str | None:
    """The ``text`` block right after block ``index``, if any: what it prints."""
    blocks = readme_blocks()
    if index + 1 < len(blocks) and blocks[index + 1][0] == "text":
        return blocks[index + 1][1]
    return None
