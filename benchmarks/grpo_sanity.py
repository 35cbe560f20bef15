"""GRPO sanity run: does the loss have the right sign and scale? (``atom.train.sanity`` describes the task.)

    python benchmarks/grpo_sanity.py                 # ~25 minutes on 2 cores: start, GRPO, flipped-sign control
    python benchmarks/grpo_sanity.py --probe         # start success rates only, for 2..5 facts per prompt

Measures the embedded SmolLM2-135M-Instruct's greedy success on ``--heldout`` held-out prompts, then runs
``--steps`` GRPO rollout steps (``GRPOModule``, the memory agent's own stage, full fine-tuning) twice from the same
start: once with the task's reward, once with the reward flipped (advantages negated), and measures greedy success
again after each. The sign is right when the real run rises and the control falls; both are paired against the
start on the same prompts (exact McNemar). Prints a table and writes JSON (``--out``) with the per-step training
reward of each run; TensorBoard logs land in ``--run-dir``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402

from atom.data.chunker import TokenChunker  # noqa: E402
from atom.env.rollout import RolloutEngine  # noqa: E402
from atom.eval.stats import paired_test  # noqa: E402
from atom.memory.embedder import MemoryConfig, build_embedder  # noqa: E402
from atom.policy.hf import HFPolicy, SamplingConfig  # noqa: E402
from atom.policy.models import ModelConfig, load_model, load_tokenizer  # noqa: E402
from atom.train.grpo import GRPOConfig, GRPOModule  # noqa: E402
from atom.train.sanity import FactData, FactEpisode, fact_samples  # noqa: E402


class Task:
    """The tokenizer, chunker and embedder the rollout engine needs (the task itself embeds nothing)."""

    def __init__(self, model_name: str):
        self.model_cfg = ModelConfig(name_or_path=model_name)
        self.tokenizer = load_tokenizer(self.model_cfg)
        self.memory = MemoryConfig(embedder="minilm")
        self.embedder = build_embedder(self.memory)
        self.chunker = TokenChunker(self.tokenizer, 4000, 100, 0)

    def engine_factory(self, flip: bool = False):
        def make(policy) -> RolloutEngine:
            episode = lambda sample, chunks, store: FactEpisode(sample, flip)  # noqa: E731
            return RolloutEngine(policy, self.embedder, self.chunker, self.memory, episode)

        return make

    def success(self, model, samples, temperature: float = 0.0, seed: int = 0) -> list[float]:
        """Per-prompt success (0/1) of one reply each, greedy unless ``temperature`` > 0."""
        sampling = SamplingConfig(temperature=temperature, max_new_tokens=12, batch_size=64, seed=seed)
        engine = self.engine_factory()(HFPolicy(model.eval(), self.tokenizer, sampling))
        with torch.no_grad():
            return [t.result.em[0] for t in engine.run(samples)]


def grpo_run(task: Task, model, train, cfg: GRPOConfig, flip: bool, run_dir: Path, seed: int, temperature: float):
    """``cfg.max_steps`` GRPO rollout steps on ``model`` in place; returns the mean training reward per step."""
    sampling = SamplingConfig(temperature=temperature, max_new_tokens=12, batch_size=64, seed=seed)
    module = GRPOModule(model, task.tokenizer, cfg, sampling, task.engine_factory(flip), seed=seed)
    rewards: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            rewards.append(float(trainer.callback_metrics["grpo/reward"]))

    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=cfg.max_steps, limit_val_batches=0, num_sanity_val_steps=0,
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False, callbacks=[Record()],
        logger=TensorBoardLogger(save_dir=str(run_dir), name="tb", version="flipped" if flip else "grpo"),
        log_every_n_steps=1, use_distributed_sampler=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=FactData(train, [], cfg.prompts_per_step, seed=seed))
    return rewards


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--facts", type=int, default=3, help="people (and cities) per prompt")
    ap.add_argument("--steps", type=int, default=16, help="GRPO rollout steps per run")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per rollout step")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--temperature", type=float, default=1.0, help="rollout sampling temperature")
    ap.add_argument("--heldout", type=int, default=200, help="held-out prompts measured before and after")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--probe", action="store_true", help="only the start success rates for 2..5 facts")
    ap.add_argument("--run-dir", default="runs/grpo_sanity")
    ap.add_argument("--out", default="benchmarks/results/grpo_sanity.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    L.seed_everything(args.seed, verbose=False)
    task = Task(args.model)
    start = load_model(task.model_cfg, seed=args.seed)

    if args.probe:
        for facts in (2, 3, 4, 5):
            held = fact_samples(args.heldout, facts, seed=10_000 + args.seed, split="val")
            greedy = task.success(start, held)
            sampled = task.success(start, held, temperature=1.0, seed=args.seed)
            print(f"facts={facts}: greedy {100 * sum(greedy) / len(greedy):.1f}%  "
                  f"sampled (T=1) {100 * sum(sampled) / len(sampled):.1f}%  on {len(held)} prompts")  # fmt: skip
        return

    train = fact_samples(args.steps * args.prompts, args.facts, seed=args.seed, split="train")
    held = fact_samples(args.heldout, args.facts, seed=10_000 + args.seed, split="val")
    cfg = GRPOConfig(
        group_size=args.group_size, prompts_per_step=args.prompts, max_steps=args.steps, lr=args.lr,
        warmup_steps=0, micro_batch_size=16, kl_coef=0.0, checkpoint_every=args.steps,
    )  # fmt: skip
    before = task.success(start, held)
    sampled = task.success(start, held, temperature=args.temperature, seed=args.seed)
    flags = " ".join(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items())
    result = {
        "command": f"python benchmarks/grpo_sanity.py {flags}", "model": args.model, "facts": args.facts,
        "heldout": len(held), "steps": args.steps, "group_size": args.group_size, "prompts_per_step": args.prompts,
        "lr": args.lr, "temperature": args.temperature, "kl_coef": cfg.kl_coef, "threads": torch.get_num_threads(),
        "start": {"greedy": sum(before) / len(held), "sampled": sum(sampled) / len(held)},
    }  # fmt: skip
    print(f"start: greedy {100 * result['start']['greedy']:.1f}%, sampled {100 * result['start']['sampled']:.1f}%")
    for flip in (False, True):
        name = "flipped" if flip else "grpo"
        model = copy.deepcopy(start)
        t0 = time.perf_counter()
        rewards = grpo_run(task, model, train, cfg, flip, Path(args.run_dir), args.seed, args.temperature)
        wall = time.perf_counter() - t0
        after = task.success(model, held)
        test = paired_test(before, after)
        # the flipped run's logged reward is 1 - success: report success for both
        success = [1 - r for r in rewards] if flip else rewards
        result[name] = {"train_success_per_step": success, "wall_s": wall, **test.as_dict()}
        print(f"{name}: greedy held-out {test}  ({wall:.0f} s)")
        del model
    print("\n| run | greedy success on held-out | gained / lost vs start | p (exact McNemar) |")
    print("|---|---|---|---|")
    print(f"| start (untrained) | {100 * result['start']['greedy']:.1f}% | | |")
    for name in ("grpo", "flipped"):
        r = result[name]
        label = f"{args.steps} GRPO steps" + (", advantage sign flipped" if name == "flipped" else "")
        print(f"| {label} | {100 * r['after']:.1f}% | +{r['gained']} / -{r['lost']} | {r['p']:.2g} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
