"""The randomized run of issue #19 (``tests/fuzz_engine.py``): every configuration, seeded, a few
hundred operations each. ``JLORA_FUZZ_OPS`` sets the operations per configuration and
``JLORA_FUZZ_SEED`` the seed; with ``JLORA_FUZZ_REPORT`` each configuration's figures are appended
to that file as a JSON line (the long run, ``experiments/fuzz_engine.py``, reads them)."""

from __future__ import annotations

import json
import os

import pytest

from jlora.scheduler.scheduler import Scheduler
from tests.fuzz_engine import CONFIGS, DUMMY, Fuzzer, Oracle

OPS = int(os.environ.get("JLORA_FUZZ_OPS", "100"))
SEED = int(os.environ.get("JLORA_FUZZ_SEED", "0"))
REPORT = os.environ.get("JLORA_FUZZ_REPORT")


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    return Oracle(dict(DUMMY))


@pytest.mark.parametrize("index", range(len(CONFIGS)), ids=[c.name for c in CONFIGS])
def test_randomized_run_finds_nothing(index, oracle, tmp_path):
    cfg = CONFIGS[index]
    report = Fuzzer(cfg, SEED * 1000 + index, tmp_path, oracle).run(
        max(10, int(OPS * cfg.ops_scale))
    )
    if REPORT:
        with open(REPORT, "a") as f:
            f.write(json.dumps({**report.as_dict(), "seed": SEED}) + "\n")
    assert not report.violations, "\n".join(str(v) for v in report.violations[:20])
    assert report.requests > 0 and report.ops["step"] > 0 and report.greedy_checked > 0


# The checks can fail: the same run against an engine broken on purpose reports it.
def _sabotaged(monkeypatch, what: str) -> None:
    finish = Scheduler.finish
    if what == "leak_pages":

        def leaky(self, req):
            req.pages = req.pages[:-1] if len(req.pages) > 1 else req.pages
            finish(self, req)

        monkeypatch.setattr(Scheduler, "finish", leaky)
    elif what == "wrong_token":
        from jlora.engine import Engine

        append = Engine._append

        def off_by_one(self, sampled, now):
            return append(self, [(r, (t + 1) % 256 if r.rid == 3 else t) for r, t in sampled], now)

        monkeypatch.setattr(Engine, "_append", off_by_one)
    elif what == "lost_output":
        from jlora.engine import Engine

        step = Engine.step

        def lossy(self):
            return [o for o in step(self) if o.rid % 2]  # even requests' outputs are lost

        monkeypatch.setattr(Engine, "step", lossy)


@pytest.mark.parametrize(
    "what, needle",
    [
        ("leak_pages", "held +"),
        ("wrong_token", "request 3 "),
        ("lost_output", "(Status.FINISHED) ended 0 times"),
    ],
)
def test_the_checks_can_fail(monkeypatch, oracle, tmp_path, what, needle):
    _sabotaged(monkeypatch, what)
    report = Fuzzer(CONFIGS[1], 7, tmp_path, oracle).run(60)
    assert any(needle in str(v) for v in report.violations), report.violations[:5]
