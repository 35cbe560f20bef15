"""Notebooks run top to bottom (on a tiny overlay) and are stored without outputs."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import TINY_EXPERIMENT

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
@pytest.mark.slow
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("ATOM_NOTEBOOK_OVERLAY", json.dumps(TINY_EXPERIMENT))
    monkeypatch.setenv("ATOM_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    assert (tmp_path / "ablations.png").is_file()
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "no_scratchpad" in printed and "| method | EM (SQuAD) |" in printed
