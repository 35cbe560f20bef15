"""``python -m atom.sweep CONFIG [key=value ...]``: evaluate a policy and the baselines over datasets x documents.

The grid is ``sweep.datasets`` x ``sweep.num_docs`` (``sweep.paths.<dataset>`` gives each dataset's file); every
cell runs the methods of ``eval.methods`` on its validation samples through ``atom.eval.harness.evaluate`` into
``<run>/sweep/<dataset>/<num_docs>/`` (layout: ``atom/eval/sweep.py``). The policy is loaded once. Finished cells
are skipped, so re-running the command resumes; a cell computed under a different config is an error rather than
a silent mix. Example (the paper's grid on real data, with a trained policy):

    python -m atom.sweep experiments/sweep_paper.yaml eval.checkpoint=runs/grpo_2wiki/policy sweep.label=sft+grpo
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

from tqdm.auto import tqdm

from atom import pipeline
from atom.cli import entry_point
from atom.cli import parser as cli_parser
from atom.config import Config, load_config, save_config, to_yaml
from atom.data.datamodule import AtomDataModule
from atom.eval.runs import find_results
from atom.eval.sweep import Cell, SweepConfig, cells, collect, finished
from atom.eval.tables import main_table

log = logging.getLogger("atom.sweep")


def cell_config(cfg: Config, cell: Cell) -> Config:
    """The config one cell is evaluated under: the sweep's, with the cell's data and no grid."""
    data = dataclasses.replace(cfg.data, dataset=cell.dataset, path=cell.path, num_docs=cell.num_docs)
    return dataclasses.replace(cfg, data=data, sweep=SweepConfig(label=cfg.sweep.label))


def _check_same(cfg: Config, cell_dir: Path) -> None:
    saved = cell_dir / "config.yaml"
    if saved.is_file() and saved.read_text() != to_yaml(cfg):
        raise ValueError(
            f"{cell_dir} was evaluated under another config (compare {saved} with this sweep's); use another "
            "run.name or delete that cell to re-run it"
        )


def run(cfg: Config, progress: bool = True) -> Path:
    """Evaluate every unfinished cell; returns the sweep's ``results.json``."""
    root = cfg.run.dir / "sweep"
    if cfg.eval.checkpoint:  # a saved policy replaces model.name_or_path, as in atom.evaluate
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name_or_path=cfg.eval.checkpoint,
                                                                 gguf_file=""))  # fmt: skip
    save_config(cfg, root)
    grid = cells(cfg.sweep, cfg.data.dataset, cfg.data.path, cfg.data.num_docs)
    pieces, model = None, None  # built once, at the first unfinished cell: the policy is loaded once
    for cell in (bar := tqdm(grid, desc="sweep cells", unit="cell", disable=not progress)):
        bar.set_postfix_str(f"{cell.dataset} {cell.num_docs} docs")
        ccfg = cell_config(cfg, cell)
        _check_same(ccfg, cell.dir(root))
        if finished(cell, root):
            continue
        if pieces is None:
            pieces = pipeline.build(ccfg)
            model = pipeline.load_policy(pieces) if any(m != "oracle" for m in cfg.eval.methods) else None
        else:
            data = AtomDataModule(
                ccfg.data, prompts_per_step=cfg.grpo.prompts_per_step, val_samples=cfg.grpo.val_samples
            )
            data.setup()
            pieces = dataclasses.replace(pieces, cfg=ccfg, data=data)
        partial = cell.dir(root).with_name(f"{cell.num_docs}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        pipeline.evaluate(model, pieces, partial, progress=progress)
        save_config(ccfg, partial)
        shutil.rmtree(cell.dir(root), ignore_errors=True)  # an unfinished leftover (no results.json)
        partial.rename(cell.dir(root))
        log.info("cell %s/%d done", cell.dataset, cell.num_docs)
    out = root / "results.json"
    out.write_text(json.dumps({"label": cfg.sweep.label, "cells": collect(root)}, indent=2))
    (root / "results.md").write_text(main_table([r for r in find_results(cfg.run.dir) if "sweep" in r.path.parts])
                                     + "\n")  # fmt: skip
    return out


@entry_point("atom.sweep")
def main(argv: list[str] | None = None) -> Path:
    parser = cli_parser("python -m atom.sweep", __doc__)
    parser.add_argument("config", help="experiment YAML, e.g. experiments/sweep_cpu.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. sweep.num_docs=[20,40]")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = run(load_config(args.config, args.overrides))
    print((out.parent / "results.md").read_text())
    print(f"sweep results in {out.parent}")
    return out


if __name__ == "__main__":
    main()
