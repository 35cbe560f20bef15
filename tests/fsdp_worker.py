"""Two-process FSDP run for tests/test_fsdp.py: ``python tests/fsdp_worker.py OUT key=value ...``.

Lightning's launcher starts rank 1 by re-running this same command, so both ranks install the same recorders.
Runs SFT, then GRPO three times from the post-SFT policy: one rollout step into run ``b``, the same run resumed
to two steps (a new stage, reading only ``b``'s checkpoint: a killed run restarted), and two uninterrupted steps
into run ``a``. Rank zero saves each stage's returned (unsharded) weights; every rank saves what it saw.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import torch

from atom import pipeline
from atom.config import load_config
from atom.env.rollout import Trajectory
from atom.policy.models import restart_lora
from atom.train.grpo import GRPOModule
from atom.train.sft import SFTModule
from atom.train.sharding import meta_copy

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch < 2.5
    from torch.distributed._tensor import DTensor

# The reward of tests/test_grpo.py: parity of the first completion's ids, so that groups have signal.
Trajectory.reward = property(lambda self: float(int(self.turns[0].reply.completion_ids.sum()) % 2))


def main(out: Path, overrides: list[str]) -> None:
    cfg = load_config(None, [*overrides, f"run.out_dir={out}"])
    p = pipeline.build(cfg)
    seen: dict[str, list] = {"sft_loss": [], "trajectories": [], "grpo_metrics": [], "sharded": []}

    def sharded(module) -> bool:  # every policy parameter a DTensor shard of this rank, the generation copy not
        gen = getattr(module, "generation_model", None)
        plain = gen is None or not any(isinstance(t, DTensor) for t in gen.parameters())
        return all(isinstance(t, DTensor) for t in module.model.parameters()) and plain

    sft_step, rollout, update = SFTModule.training_step, GRPOModule.rollout, GRPOModule._update

    def sft_recorded(self, batch, batch_idx):
        loss = sft_step(self, batch, batch_idx)
        seen["sft_loss"].append(float(loss))
        seen["sharded"].append(sharded(self))
        return loss

    def rollout_recorded(self, samples, sampling, repeats):
        trajectories, engine = rollout(self, samples, sampling, repeats)
        seen["trajectories"].append(trajectories)
        seen["sharded"].append(sharded(self))
        return trajectories, engine

    def update_recorded(self, *args):
        metrics = update(self, *args)
        seen["grpo_metrics"].append(metrics)
        return metrics

    SFTModule.training_step, GRPOModule.rollout, GRPOModule._update = sft_recorded, rollout_recorded, update_recorded

    def save(name: str, model) -> None:
        if p.rank == 0:
            torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / f"{name}.pt")

    model = pipeline.load_policy(p)
    save("init", model)
    model = pipeline.sft(model, p)
    save("sft", model)
    # between stages: rank zero holds the real, unsharded weights; the others only the meta skeleton
    between = [t.is_meta for t in [*model.parameters(), *model.buffers()]]
    seen["meta_between_stages"] = all(between) if p.rank else not any(between)
    torch.save({"sft_loss": seen["sft_loss"]}, out / f"seen_rank{p.rank}.pt")
    if cfg.model.lora.enabled:
        model = restart_lora(model, cfg.model)
    save("grpo_start", model)

    def grpo(run: str, steps: int):
        start = copy.deepcopy(model) if p.rank == 0 else meta_copy(model)  # each stage shards its input in place
        run_cfg = dataclasses.replace(
            cfg, run=dataclasses.replace(cfg.run, name=run), grpo=dataclasses.replace(cfg.grpo, max_steps=steps)
        )
        return pipeline.grpo(start, dataclasses.replace(p, cfg=run_cfg))

    save("grpo_b1", grpo("b", 1))
    first_step = {"trajectories": seen["trajectories"][:1], "grpo_metrics": seen["grpo_metrics"][:1]}
    save("grpo_b2", grpo("b", 2))
    save("grpo_a2", grpo("a", 2))
    torch.save(
        {"sft_loss": seen["sft_loss"], "sharded": seen["sharded"], "meta_between_stages": seen["meta_between_stages"],
         **first_step}, out / f"seen_rank{p.rank}.pt",
    )  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
