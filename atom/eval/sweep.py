"""The length-scaling sweep's grid and results tree (the command is ``python -m atom.sweep``).

A sweep evaluates ``eval.methods`` on every (dataset, document count) cell of ``sweep.datasets`` x
``sweep.num_docs`` (the paper: 3 datasets x {200, 400, 800}). Results tree under the run directory:

    <run>/sweep/config.yaml                     the sweep's resolved config
    <run>/sweep/<dataset>/<num_docs>/           one finished cell: the evaluation files of ``atom.eval.harness``
                                                (results.json, results.md, episodes.jsonl, trajectories.html)
                                                and its own resolved config.yaml
    <run>/sweep/results.json, results.md        every cell, one table (methods x cells, with the average)

A cell is evaluated into ``<num_docs>.partial`` and renamed when complete, so an interrupted sweep leaves no
half-written cell; re-running the command skips finished cells.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from atom.data.records import DATASETS

CELL_FILES = ("results.json", "results.md", "episodes.jsonl", "trajectories.html", "config.yaml")


@dataclass
class SweepConfig:
    datasets: list[str] = field(default_factory=list)  # datasets of the grid; [] = data.dataset only
    paths: dict[str, str] = field(default_factory=dict)  # data.path per dataset name; a missing one = data.path
    num_docs: list[int] = field(default_factory=list)  # document counts of the grid; [] = data.num_docs only
    label: str = ""  # training stage of the evaluated policy in report rows, e.g. "sft+grpo"; "" = none

    def __post_init__(self) -> None:
        bad = [d for d in [*self.datasets, *self.paths] if d not in DATASETS]
        if bad:
            raise ValueError(f"sweep.datasets / sweep.paths: unknown dataset(s) {bad}; valid: {list(DATASETS)}")
        if any(n <= 0 for n in self.num_docs):
            raise ValueError(f"sweep.num_docs must be positive, got {self.num_docs}")
        if len(set(self.datasets)) != len(self.datasets) or len(set(self.num_docs)) != len(self.num_docs):
            raise ValueError(f"sweep: repeated cells in datasets {self.datasets} x num_docs {self.num_docs}")


@dataclass(frozen=True)
class Cell:
    dataset: str
    path: str  # data.path of the cell
    num_docs: int

    def dir(self, root: Path) -> Path:
        return root / self.dataset / str(self.num_docs)


def cells(sweep: SweepConfig, dataset: str, path: str, num_docs: int) -> list[Cell]:
    """The grid, datasets outer; ``dataset``/``path``/``num_docs`` (the data config's) fill empty lists."""
    out = []
    for d in sweep.datasets or [dataset]:
        cell_path = sweep.paths.get(d, path if d == dataset else "")
        if not cell_path and d != "synthetic":
            raise ValueError(f"sweep: dataset '{d}' needs a file: set sweep.paths.{d}=<file or hub id>")
        out += [Cell(d, cell_path, n) for n in sweep.num_docs or [num_docs]]
    return out


def finished(cell: Cell, root: Path) -> bool:
    return (cell.dir(root) / "results.json").is_file()


def collect(root: Path) -> list[dict]:
    """Every finished cell under ``root`` as ``{"dataset", "num_docs", "methods": {method: summary row}}``."""
    out = []
    for results in sorted(root.glob("*/*/results.json")):
        if not results.parent.name.isdigit():
            continue
        rows = json.loads(results.read_text())
        out.append({"dataset": results.parent.parent.name, "num_docs": int(results.parent.name),
                    "methods": rows["methods"]})  # fmt: skip
    return out
