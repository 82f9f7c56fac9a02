"""notebooks/quickstart.ipynb runs end to end (convert -> train -> evaluate -> MD -> relax).

Executed with nbclient in a fresh kernel, with the training budget cut to 10 s (the notebook
reads MLIP_QUICKSTART_TRAIN_SECONDS; users get 45 s) so the test stays in the default run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def cell_text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_quickstart_notebook_runs_end_to_end(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("MLIP_QUICKSTART_TRAIN_SECONDS", "10")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError (with the cell's traceback) if any cell fails

    outputs = "\n".join(cell_text(cell) for cell in notebook.cells if cell.cell_type == "code")
    assert "structures -> molecules.h5" in outputs
    assert "exported model:" in outputs
    assert "| all |" in outputs  # the mlip-eval table
    assert any(output.get("output_type") == "display_data" and "image/png" in output.get("data", {})
               for cell in notebook.cells for output in cell.get("outputs", []))
    assert "NVE" in outputs and "stable" in outputs
    assert "BFGS steps" in outputs and "FIRE steps" in outputs
