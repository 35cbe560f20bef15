"""``python -m atom.fit CONFIG [key=value ...]``: run the stages of ``run.stages`` (sft, grpo, eval) in order.

Every piece is built here, explicitly, from the config: samples (AtomDataModule), tokenizer and policy
(``load_model``), embedder, chunker, the rollout engine, then the stage's LightningModule and Trainer. The run
directory ``<run.out_dir>/<run.name>/`` holds ``config.yaml`` (resolved), ``tb/<stage>/`` (TensorBoard),
``checkpoints/<stage>/last.ckpt``, ``policy/`` (the trained model, loadable by transformers and atom.evaluate),
``eval/<tag>/`` for each evaluation (``before``, ``after_sft``, ``after_sft_grpo``, ...) and ``results.{json,md}``, the
table of every evaluation of the run. Running the same command again resumes each stage from its last checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader

from atom.agent.oracle import OraclePolicy
from atom.agent.rollout import RolloutEngine, atommem_episode
from atom.config import Config, load_config, save_config
from atom.data.chunker import TokenChunker
from atom.data.datamodule import AtomDataModule
from atom.eval.harness import evaluate, markdown_table
from atom.memory.embedder import build_embedder
from atom.train.grpo import GRPOModule
from atom.train.models import context_window, load_model, load_tokenizer, restart_lora
from atom.train.sft import DemoDataModule, SFTModule, demos_from_trajectories, read_demos
from atom.train.trainer import build_trainer, resume_path

log = logging.getLogger("atom.fit")


class Pipeline:
    """The pieces every stage (and atom.evaluate, atom.collect) shares, built once from the config.

    ``with_model=False`` skips loading the policy (the oracle and baselines that need no model).
    """

    def __init__(self, cfg: Config, with_model: bool = True):
        self.cfg = cfg
        self.run_dir = cfg.run.dir
        L.seed_everything(cfg.run.seed, verbose=False)
        self.data = AtomDataModule(cfg.data)
        self.data.setup()
        self.tokenizer = load_tokenizer(cfg.model)
        self.model = load_model(cfg.model, seed=cfg.run.seed) if with_model else None
        self.window = context_window(cfg.model, self.model) if with_model else cfg.model.max_context_tokens or 8192
        self.embedder = build_embedder(cfg.memory)
        self.chunker = TokenChunker(self.tokenizer, cfg.data.chunk_tokens, cfg.data.chunk_overlap, cfg.data.max_chunks)
        self.trained: list[str] = []  # training stages run so far on self.model

    @property
    def device(self) -> torch.device:
        """Where evaluation runs: this process's GPU when the trainer uses GPUs, else the CPU."""
        if self.cfg.trainer.accelerator != "cpu" and torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")

    def fresh_model(self):
        """A new copy of the configured model with the same structure (LoRA included) as ``self.model``."""
        return load_model(self.cfg.model, seed=self.cfg.run.seed)

    def unshard(self, state: dict | None) -> None:
        """After an FSDP stage ``self.model``'s layers stay wrapped: continue with an unwrapped model holding the
        trained weights (``state`` from the module's ``on_train_end``; None for other strategies)."""
        if state is not None:
            model = self.fresh_model()
            model.load_state_dict(state)
            self.model = model

    def engine(self, policy) -> RolloutEngine:
        return RolloutEngine(policy, self.embedder, self.chunker, self.cfg.memory, atommem_episode(self.cfg.agent))

    @property
    def max_prompt_tokens(self) -> int:
        return self.window - self.cfg.sampling.max_new_tokens


def run_sft(p: Pipeline) -> None:
    cfg = p.cfg
    if cfg.sft.demos:
        demos = read_demos(cfg.sft.demos, cfg.sft.min_reward)
    else:
        trajectories = p.engine(OraclePolicy()).run(p.data.train_samples)
        demos = demos_from_trajectories(trajectories, cfg.sft.min_reward)
    if not demos:
        raise ValueError("SFT: no demonstration passed sft.min_reward; lower it or collect better trajectories")
    log.info("SFT on %d turns", len(demos))
    data = DemoDataModule(demos, p.tokenizer, min(cfg.sft.max_tokens, p.window), cfg.sft.batch_size, cfg.run.seed)
    trainer = build_trainer(
        cfg.trainer, p.run_dir, "sft", every_n_epochs=1, max_epochs=cfg.sft.epochs,
        accumulate_grad_batches=cfg.sft.accumulate, gradient_clip_val=cfg.sft.grad_clip or None,
    )  # fmt: skip
    module = SFTModule(p.model, cfg.sft)
    trainer.fit(module, datamodule=data, ckpt_path=resume_path(cfg.trainer, p.run_dir, "sft"), weights_only=True)
    p.unshard(module.final_state)
    p.trained.append("sft")


def run_grpo(p: Pipeline) -> None:
    cfg = p.cfg
    if cfg.model.lora.enabled and p.trained:
        p.model = restart_lora(p.model, cfg.model)  # the KL reference (adapters off) must be the post-SFT policy
    ref = None
    if cfg.grpo.kl_coef > 0 and not cfg.model.lora.enabled:
        ref = copy.deepcopy(p.model)  # full fine-tuning: the reference is a frozen copy of the starting policy
    module = GRPOModule(
        p.model, p.tokenizer, cfg.grpo, cfg.sampling, p.engine, p.data.train_samples, p.data.val_samples,
        ref_model=ref, seed=cfg.run.seed, max_prompt_tokens=p.max_prompt_tokens, make_replica=p.fresh_model,
        make_rollout_engine=vllm_engine_factory(p) if cfg.grpo.rollout_engine == "vllm" else None,
    )  # fmt: skip
    # One Lightning "epoch" per rollout step (a one-item loader; the module's schedule picks the prompts), so the
    # epoch counter is the rollout step: checkpoints and resume line up with it whatever updates_per_batch is.
    steps = DataLoader([0], batch_size=1)
    trainer = build_trainer(
        cfg.trainer, p.run_dir, "grpo", every_n_epochs=cfg.grpo.checkpoint_every, max_epochs=cfg.grpo.max_steps,
    )  # fmt: skip
    trainer.fit(module, steps, ckpt_path=resume_path(cfg.trainer, p.run_dir, "grpo"), weights_only=True)
    p.unshard(module.final_state)
    p.trained.append("grpo")


def vllm_engine_factory(p: Pipeline):
    """Builds this rank's colocated vLLM engine (atom.agent.vllm_engine) for the configured model's weights."""

    def make():
        from atom.agent.vllm_engine import build_vllm_policy
        from atom.train.models import pretrained_dir

        try:
            source = str(pretrained_dir(p.cfg.model))
        except ValueError:  # a hub id: vLLM loads it by name (the trained weights are streamed in anyway)
            source = p.cfg.model.name_or_path
        rank = int(os.environ.get("RANK", 0))
        return build_vllm_policy(source, p.tokenizer, p.cfg.sampling, p.cfg.grpo.vllm, p.max_prompt_tokens,
                                 seed=p.cfg.run.seed + rank)  # fmt: skip

    return make


def run_eval(p: Pipeline, tag: str) -> dict[str, dict]:
    cfg = p.cfg
    if cfg.model.quantization == "none":
        p.model.to(p.device)  # Lightning's teardown leaves the trained model on the CPU
    samples = p.data.val_samples[: cfg.eval.max_samples or None]
    rows, _ = evaluate(
        samples, cfg.eval.methods, agent=cfg.agent, ecfg=cfg.eval, sampling=cfg.sampling, chunker=p.chunker,
        embedder=p.embedder, memory_cfg=cfg.memory, model=p.model, tokenizer=p.tokenizer, window_tokens=p.window,
        out_dir=p.run_dir / "eval" / tag,
    )  # fmt: skip
    return rows


def save_policy(p: Pipeline) -> Path:
    """Save the policy so plain transformers (and atom.evaluate eval.checkpoint=...) can load it."""
    out = p.run_dir / "policy"
    model = p.model
    if p.cfg.model.lora.enabled and p.cfg.model.lora.merge_on_save:
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(out)
    p.tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m atom.fit", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="experiment YAML, e.g. experiments/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. grpo.max_steps=2")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return fit(load_config(args.config, args.overrides))


def fit(cfg: Config) -> dict:
    """Run ``cfg.run.stages`` in order. ``eval`` may appear more than once (e.g. ``[sft, eval, grpo, eval]``); each
    evaluation is labelled by the training stages run before it: ``(before)``, ``(after sft)``, ``(after sft+grpo)``,
    or no label when the run trains nothing."""
    if cfg.model.backend != "hf":
        raise ValueError("atom.fit trains local weights: model.backend must be hf (a served model: atom.evaluate)")
    p = Pipeline(cfg)
    save_config(cfg, p.run_dir)
    table: dict[str, dict] = {}
    trains = any(s in cfg.run.stages for s in ("sft", "grpo"))
    if cfg.eval.before_training and "eval" in cfg.run.stages and trains:
        table.update({f"{m} (before)": r for m, r in run_eval(p, "before").items()})
    for stage in cfg.run.stages:
        if stage == "sft":
            run_sft(p)
        elif stage == "grpo":
            run_grpo(p)
        elif rank_zero_only.rank != 0:
            continue  # evaluation runs once, on global rank zero, after multi-process training
        elif stage == "eval":
            if p.trained:
                label, tag = f" (after {'+'.join(p.trained)})", "after_" + "_".join(p.trained)
            elif trains:
                label, tag = " (before)", "before"
            else:
                label, tag = "", "final"
            table.update({f"{m}{label}": r for m, r in run_eval(p, tag).items()})
    if rank_zero_only.rank != 0:
        return table
    if trains:
        log.info("policy saved to %s", save_policy(p))
    if table:
        (p.run_dir / "results.json").write_text(json.dumps(table, indent=2))
        (p.run_dir / "results.md").write_text(markdown_table(table) + "\n")
        print(markdown_table(table))
    return table


if __name__ == "__main__":
    main()
