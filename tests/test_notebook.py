"""The drainer notebook runs headless, start to end; a failing cell fails the test. Its outputs
are saved in the file, so that a reader on the web sees the tables and plots without running it
(re-save them with the notebook's own Run All after changing it)."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[1] / "experiments" / "notebooks" / "drainer.ipynb"


def _images(nb) -> int:
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    return sum("image/png" in o.get("data", {}) for o in outputs)


def test_drainer_notebook_executes():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert _images(nb) == 5, "the saved notebook must keep its outputs (5 plots)"
    NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert _images(nb) == 5, "a plot was not drawn, or drawn twice"
    assert any("P99 TTFT ms" in o.get("data", {}).get("text/markdown", "") for o in outputs)
