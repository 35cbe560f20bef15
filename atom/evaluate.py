"""``python -m atom.evaluate CONFIG [key=value ...]``: the evaluation table for a policy and the baselines.

Builds the pieces with ``atom.pipeline`` (samples, tokenizer, embedder, chunker) and the policy, runs the methods
of ``eval.methods`` on the validation samples (on the GPU when one exists) and writes ``results.json``,
``results.md``, ``episodes.jsonl``, ``trajectories.html`` and the resolved ``config.yaml`` into
``<run.out_dir>/<run.name>/eval``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from atom import pipeline
from atom.config import Config, load_config, save_config
from atom.eval.report import markdown_table


def run(cfg: Config, progress: bool = True) -> dict[str, dict]:
    out_dir = cfg.run.dir / "eval"
    save_config(cfg, out_dir)
    if cfg.eval.checkpoint:  # a saved policy (atom.fit's runs/<name>/policy) replaces model.name_or_path
        model = dataclasses.replace(cfg.model, name_or_path=cfg.eval.checkpoint, gguf_file="")
        cfg = dataclasses.replace(cfg, model=model)
    p = pipeline.build(cfg)
    model = pipeline.load_policy(p) if any(m != "oracle" for m in cfg.eval.methods) else None
    rows = pipeline.evaluate(model, p, out_dir, progress=progress)
    n = min(len(p.data.val_samples), cfg.eval.max_samples or len(p.data.val_samples))
    print(f"{n} samples of {cfg.data.dataset} at {cfg.data.num_docs} documents -> {out_dir}")
    print(markdown_table(rows))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m atom.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="experiment YAML (e.g. experiments/eval_cpu.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. eval.methods=[atommem,rag]")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run(load_config(args.config, args.overrides))


if __name__ == "__main__":
    main()
