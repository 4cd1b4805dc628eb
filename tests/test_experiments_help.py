"""Every experiment script answers ``--help`` (issue #20: one experiment per script, each runnable
with ``--help``): an import error or a broken argument parser shows here, not on the GPU. The
scripts run in one subprocess (jax is imported once), each as ``__main__`` with ``--help``."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "experiments").glob("*.py") if not p.name.startswith("_"))

RUN_EACH = """
import contextlib, io, json, runpy, sys, traceback
results = {}
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(path, run_name="__main__")
        results[path] = "no SystemExit: --help was not handled"
    except SystemExit as e:
        results[path] = None if e.code in (0, None) and "usage:" in out.getvalue() else (
            f"exit {e.code!r}; stdout: {out.getvalue()[-500:]}"
        )
    except BaseException:
        results[path] = traceback.format_exc()[-2000:]
print(json.dumps(results))
"""


def test_every_experiment_script_answers_help():
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-c", RUN_EACH, *map(str, SCRIPTS)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    failed = {Path(p).name: why for p, why in results.items() if why is not None}
    assert len(results) == len(SCRIPTS) and not failed, failed
