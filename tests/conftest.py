"""Test set-up: everything runs on the CPU."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

HF_FIXTURES = Path(__file__).parent / "fixtures" / "hf"


@pytest.fixture(scope="session")
def hf_manifest() -> dict:
    return json.loads((HF_FIXTURES / "manifest.json").read_text())


@pytest.fixture(scope="session")
def hf_reference() -> dict[str, np.ndarray]:
    with np.load(HF_FIXTURES / "reference.npz") as npz:
        return {k: npz[k] for k in npz.files}
