"""``python -m atom.evaluate CONFIG [key=value ...]``: the evaluation table for a policy and the baselines.

Builds every piece from the config through ``atom.fit.Pipeline`` (samples, tokenizer, model, embedder, chunker),
runs the methods of ``eval.methods`` on the validation samples and writes ``results.json``, ``results.md``,
``episodes.jsonl``, ``trajectories.html`` and the resolved ``config.yaml`` into ``<run.out_dir>/<run.name>/eval``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from atom.config import Config, load_config, save_config
from atom.eval.harness import evaluate, markdown_table
from atom.eval.judge import build_judge
from atom.fit import Pipeline


def run(cfg: Config, progress: bool = True) -> dict[str, dict]:
    out_dir = cfg.run.dir / "eval"
    save_config(cfg, out_dir)
    if cfg.eval.checkpoint:  # a saved policy (atom.fit's runs/<name>/policy) replaces model.name_or_path
        model = dataclasses.replace(cfg.model, name_or_path=cfg.eval.checkpoint, gguf_file="")
        cfg = dataclasses.replace(cfg, model=model)
    served = cfg.model.backend == "openai"  # the policy behind model.server: no local weights
    p = Pipeline(cfg, with_model=not served and any(m != "oracle" for m in cfg.eval.methods))
    samples = p.data.val_samples[: cfg.eval.max_samples or None]
    judge = build_judge(cfg.eval.judge)
    rows, _ = evaluate(
        samples, cfg.eval.methods, agent=cfg.agent, ecfg=cfg.eval, sampling=cfg.sampling, chunker=p.chunker,
        embedder=p.embedder, memory_cfg=cfg.memory, model=p.model, tokenizer=p.tokenizer, window_tokens=p.window,
        out_dir=out_dir, progress=progress, server=cfg.model.server if served else None, judge=judge,
    )  # fmt: skip
    if judge is not None:
        judge.close()
    print(f"{len(samples)} samples of {cfg.data.dataset} at {cfg.data.num_docs} documents -> {out_dir}")
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
