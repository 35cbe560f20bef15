"""``python -m atom.fit CONFIG [key=value ...]``: run the stages of ``run.stages`` (sft, grpo, eval) in order.

The pieces are built once (``atom.pipeline.build``), then the model goes through each stage and comes back
trained and unsharded. The run directory ``<run.out_dir>/<run.name>/`` holds ``config.yaml`` (resolved),
``tb/<stage>/`` (TensorBoard), ``checkpoints/<stage>/last.ckpt``, ``policy/`` (the trained model, loadable by
transformers and atom.evaluate), ``eval/<tag>/`` for each evaluation (``before``, ``after_sft``,
``after_sft_grpo``, ...), ``results.{json,md}``, the table of every evaluation of the run, and with several
evaluations ``paired.json`` (exact McNemar tests of per-question EM between consecutive evaluations and first ->
last, also in ``results.md``). Running the same command again resumes each stage from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from atom import pipeline
from atom.cli import entry_point
from atom.cli import parser as cli_parser
from atom.config import Config, ConfigError, load_config, save_config
from atom.data.records import DataError
from atom.eval.report import markdown_table
from atom.eval.stats import PairedTest, paired_evaluations, paired_markdown
from atom.rundir import hold

log = logging.getLogger("atom.fit")


@entry_point("atom.fit")
def main(argv: list[str] | None = None) -> dict:
    parser = cli_parser("python -m atom.fit", __doc__)
    parser.add_argument("config", help="experiment YAML, e.g. experiments/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. grpo.max_steps=2")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return fit(load_config(args.config, args.overrides))


def fit(cfg: Config) -> dict:
    """Run ``cfg.run.stages`` in order, owning the run directory (``atom.rundir.hold``) while it runs."""
    with hold(cfg.run.dir):
        return _fit(cfg)


def _fit(cfg: Config) -> dict:
    """Run ``cfg.run.stages`` in order. ``eval`` may appear more than once (e.g. ``[sft, eval, grpo, eval]``); each
    evaluation is labelled by the training stages run before it: ``(before)``, ``(after sft)``, ``(after sft+grpo)``,
    or no label when the run trains nothing. Evaluation and saving run on global rank zero only."""
    if cfg.model.backend != "hf":
        raise ConfigError("atom.fit trains local weights: model.backend must be hf (a served model: atom.evaluate)")
    p = pipeline.build(cfg)
    for stage, split in (("sft", "train"), ("grpo", "train"), ("eval", "val")):  # fail before any stage runs
        if stage in cfg.run.stages and not (stage == "sft" and cfg.sft.demos):
            p.data.require(split, stage)
    if "sft" in cfg.run.stages and cfg.sft.demos and not Path(cfg.sft.demos).is_file():
        raise DataError(f"sft.demos={cfg.sft.demos!r}: file not found; write one with python -m atom.collect")
    save_config(cfg, p.run_dir)
    model = pipeline.load_policy(p)
    table: dict[str, dict] = {}
    trained: list[str] = []
    trains = any(s in cfg.run.stages for s in ("sft", "grpo"))

    evaluated: list[tuple[str, str]] = []  # (label, tag) of each evaluation, in order

    def evaluation(label: str, tag: str) -> None:
        if p.rank == 0:
            if (p.run_dir / "eval" / tag / "results.json").is_file():  # a re-run of this run (resume): say so
                log.info("replacing %s from an earlier attempt of this run", p.run_dir / "eval" / tag)
            rows = pipeline.evaluate(model, p, p.run_dir / "eval" / tag)
            table.update({f"{m}{label}": r for m, r in rows.items()})
            evaluated.append((label, tag))

    if cfg.eval.before_training and "eval" in cfg.run.stages and trains:
        evaluation(" (before)", "before")
    for stage in cfg.run.stages:
        if stage == "sft":
            model = pipeline.sft(model, p)
            trained.append("sft")
            pipeline.free_memory()  # the sharded input model (FSDP hooks make cycles): before the next stage allocates
        elif stage == "grpo":
            model = pipeline.grpo(model, p, restart_adapters=bool(trained))
            trained.append("grpo")
            pipeline.free_memory()
        elif trained:
            evaluation(f" (after {'+'.join(trained)})", "after_" + "_".join(trained))
        else:
            evaluation(" (before)" if trains else "", "before" if trains else "final")
    if p.rank != 0:
        return table
    if trains:
        log.info("policy saved to %s", pipeline.save_policy(model, p))
    if table:
        (p.run_dir / "results.json").write_text(json.dumps(table, indent=2))
        paired = _paired(p.run_dir, evaluated, cfg.eval.methods)
        text = markdown_table(table) + ("\n\n" + paired_markdown(paired) if paired else "")
        (p.run_dir / "results.md").write_text(text + "\n")
        if paired:
            (p.run_dir / "paired.json").write_text(json.dumps({k: t.as_dict() for k, t in paired.items()}, indent=2))
        print(text)
    return table


def _paired(run_dir: Path, evaluated: list[tuple[str, str]], methods: list[str]) -> dict[str, PairedTest]:
    """Exact McNemar tests of per-question EM between consecutive evaluations of the run (and first -> last):
    every evaluation of one run is on the same held-out samples, so the questions pair up. A comparison that
    cannot be made is logged and left out; the run's results are already written."""
    tags = list(dict(evaluated).items())  # one entry per distinct label, in order
    pairs = list(zip(tags, tags[1:])) + ([(tags[0], tags[-1])] if len(tags) > 2 else [])
    out = {}
    for (a, ta), (b, tb) in pairs:
        for m in methods:
            try:
                out[f"{m}{a} -> {m}{b}"] = paired_evaluations(run_dir / "eval" / ta, run_dir / "eval" / tb, m)
            except (OSError, ValueError) as exc:
                log.warning("no paired test %s%s -> %s%s: %s", m, a, m, b, exc)
    return out


if __name__ == "__main__":
    main()
