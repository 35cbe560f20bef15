"""Notebooks run top to bottom (on a tiny overlay) and are stored without outputs."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import FIXTURE_FILES, TINY_EXPERIMENT

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


# Per notebook: extra tiny settings, the files it must write, and text its outputs must print.
TINY_EXTRA = {
    "training_dynamics.ipynb": ["run.stages=[grpo]", "grpo.max_steps=2"],  # two points per curve
    "length_scaling.ipynb": [
        "sweep.datasets=[hotpotqa]",
        f"sweep.paths.hotpotqa={FIXTURE_FILES['hotpotqa']}",
        "sweep.num_docs=[4,8]",
        "eval.methods=[oracle]",
    ],
}
EXPECTED = {
    "ablations.ipynb": (["ablations.png", "no_update_vs_no_scratchpad.png"],
                        ["no_scratchpad", "| method | EM (SQuAD) |", "| full | nothing |", "0.56 -> 0.65"]),
    "training_dynamics.ipynb": (["training_dynamics.png"], ["| run | steps | grpo/reward", "| dynamics | 2 |"]),
    "length_scaling.ipynb": (["length_scaling.png"],
                             ["| method | run | hotpotqa 4 | hotpotqa 8 | avg |", "| Oracle teacher | sweep_cpu |"]),
}  # fmt: skip


def test_every_notebook_has_expectations():
    assert {p.name for p in NOTEBOOKS} == set(EXPECTED)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
@pytest.mark.slow
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("ATOM_NOTEBOOK_OVERLAY", json.dumps(TINY_EXPERIMENT + TINY_EXTRA.get(path.name, [])))
    monkeypatch.setenv("ATOM_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    files, texts = EXPECTED[path.name]
    for name in files:
        assert (tmp_path / name).is_file(), name
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    for text in texts:
        assert text in printed, text
