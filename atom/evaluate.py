"""``python -m atom.evaluate CONFIG [key=value ...] [--tag NAME] [--overwrite]``: the evaluation table.

Builds the pieces with ``atom.pipeline`` (samples, tokenizer, embedder, chunker) and the policy, runs the methods
of ``eval.methods`` on the validation samples (on the GPU when one exists) and writes ``results.json``,
``results.md``, ``episodes.jsonl``, ``trajectories.html`` and the resolved ``config.yaml`` into
``<run.out_dir>/<run.name>/eval/<tag>/``: a fresh ``evaluate-N`` by default, never over an earlier evaluation
unless ``--overwrite`` is given with its ``--tag``.
"""

from __future__ import annotations

import dataclasses
import logging

from atom import pipeline
from atom.cli import entry_point
from atom.cli import parser as cli_parser
from atom.config import Config, load_config, save_config
from atom.data.records import SAMPLE_DATASETS
from atom.eval.categories import category_table
from atom.eval.report import markdown_table
from atom.policy.models import check_model_dir
from atom.rundir import eval_dir


def run(cfg: Config, progress: bool = True, tag: str = "", overwrite: bool = False) -> dict[str, dict]:
    """Evaluate ``cfg.eval.methods`` into ``eval_dir(run dir, tag, overwrite)``; returns the table rows."""
    resolved = cfg
    if cfg.eval.checkpoint:  # a saved policy (atom.fit's runs/<name>/policy) replaces model.name_or_path
        check_model_dir(cfg.eval.checkpoint, "eval.checkpoint")
        model = dataclasses.replace(cfg.model, name_or_path=cfg.eval.checkpoint, gguf_file="")
        cfg = dataclasses.replace(cfg, model=model)
    p = pipeline.build(cfg)
    p.data.require("val", "evaluation")
    served = cfg.model.backend == "openai"  # the policy behind model.server: no local weights
    model = pipeline.load_policy(p) if not served and any(m != "oracle" for m in cfg.eval.methods) else None
    out_dir = eval_dir(cfg.run.dir, tag, overwrite)  # claimed only once the inputs have been checked
    save_config(resolved, out_dir)
    rows = pipeline.evaluate(model, p, out_dir, progress=progress)
    n = min(len(p.data.val_samples), cfg.eval.max_samples or len(p.data.val_samples))
    at = "" if cfg.data.dataset in SAMPLE_DATASETS else f" at {cfg.data.num_docs} documents"
    print(f"{n} samples of {cfg.data.dataset}{at} -> {out_dir}")
    print(markdown_table(rows))
    if category_table(rows):
        print(category_table(rows))
    return rows


@entry_point("atom.evaluate")
def main(argv: list[str] | None = None) -> None:
    parser = cli_parser("python -m atom.evaluate", __doc__)
    parser.add_argument("config", help="experiment YAML (e.g. experiments/eval_cpu.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. eval.methods=[atommem,rag]")
    parser.add_argument("--tag", default="", help="subfolder of <run>/eval/ (default: a fresh evaluate-N)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation with the same --tag")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run(load_config(args.config, args.overrides), tag=args.tag, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
