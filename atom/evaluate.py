"""``python -m atom.evaluate CONFIG [key=value ...]``: the evaluation table for a policy and the baselines.

Builds every piece from the config explicitly (samples, tokenizer, model, embedder, chunker), runs the methods of
``eval.methods`` on the validation samples and writes ``results.json``, ``results.md``, ``episodes.jsonl`` and the
resolved ``config.yaml`` into ``<run.out_dir>/<run.name>/eval``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

import lightning

from atom.config import Config, load_config, save_config
from atom.data.chunker import TokenChunker
from atom.data.datamodule import AtomDataModule
from atom.eval.harness import evaluate, markdown_table
from atom.memory.embedder import build_embedder
from atom.train.models import context_window, load_model, load_tokenizer


def run(cfg: Config, progress: bool = True) -> dict[str, dict]:
    lightning.seed_everything(cfg.run.seed, verbose=False)
    data = AtomDataModule(cfg.data)
    data.setup()
    samples = data.val_samples[: cfg.eval.max_samples or None]
    model_cfg = cfg.model
    if cfg.eval.checkpoint:
        model_cfg = dataclasses.replace(cfg.model, name_or_path=cfg.eval.checkpoint, gguf_file="")
    tokenizer = load_tokenizer(model_cfg)
    needs_model = any(m != "oracle" for m in cfg.eval.methods)
    model = load_model(model_cfg, seed=cfg.run.seed) if needs_model else None
    window = context_window(model_cfg, model) if model is not None else 8192
    out_dir = cfg.run.dir / "eval"
    save_config(cfg, out_dir)
    rows, _ = evaluate(
        samples,
        cfg.eval.methods,
        agent=cfg.agent,
        ecfg=cfg.eval,
        sampling=cfg.sampling,
        chunker=TokenChunker(tokenizer, cfg.data.chunk_tokens, cfg.data.chunk_overlap, cfg.data.max_chunks),
        embedder=build_embedder(cfg.memory),
        memory_cfg=cfg.memory,
        model=model,
        tokenizer=tokenizer,
        window_tokens=window,
        out_dir=out_dir,
        progress=progress,
    )
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
