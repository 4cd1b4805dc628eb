"""The drainer notebook runs headless, start to end; a failing cell fails the test."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[1] / "experiments" / "notebooks" / "drainer.ipynb"


def test_drainer_notebook_executes():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no plot was drawn"
    assert any("P99 TTFT ms" in o.get("data", {}).get("text/markdown", "") for o in outputs)
