"""``PolicyStage``: the lifecycle SFT and GRPO share as Lightning modules that train one policy, ``self.model``.

- ``configure_model``: under FSDP, keep the policy's module tree on the meta device (``skeleton``, a plain
  attribute, never in a checkpoint) and shard the policy from rank zero's weights (``atom.train.sharding``);
  ``shard_alongside(source)`` lets a stage shard more modules from the same weights first (GRPO's reference).
- ``trained_model()``: after ``fit``, the trained policy unsharded on rank zero (a meta skeleton elsewhere).
- ``on_fit_start``: train mode (``from_pretrained`` returns eval mode, which Lightning would keep).
- ``configure_optimizers``: AdamW with linear warm-up from the stage's config (``lr``, ``weight_decay``,
  ``warmup_steps``), named by ``stage``.
"""

from __future__ import annotations

import lightning as L
import torch

from atom.train.sharding import RankZeroState, is_fsdp, meta_copy, unshard
from atom.train.trainer import adamw_with_warmup


class PolicyStage(L.LightningModule):
    """Base of ``SFTModule`` and ``GRPOModule`` (see the module docstring). ``cfg`` has ``lr``, ``weight_decay``
    and ``warmup_steps``."""

    stage = ""  # "sft" | "grpo": names the optimizer in warnings

    def __init__(self, model, cfg):
        super().__init__()
        self.model, self.cfg = model, cfg
        self._hold("skeleton", None)  # FSDP: the policy's module tree on the meta device

    def _hold(self, name: str, module: torch.nn.Module | None) -> None:
        # A plain attribute, not a submodule: never in state_dict, the optimizer or a checkpoint.
        object.__setattr__(self, name, module)

    def configure_model(self) -> None:
        if not is_fsdp(self.trainer.strategy) or self.skeleton is not None:
            return
        self._hold("skeleton", meta_copy(self.model))
        source = RankZeroState(self.model, self.global_rank)
        self.shard_alongside(source)
        self.trainer.strategy.shard(self.model, source)

    def shard_alongside(self, source: RankZeroState) -> None:
        """FSDP: shard other modules from the policy's starting weights (``source``), before the policy."""

    def trained_model(self) -> torch.nn.Module:
        """The trained policy, unsharded (under FSDP: on rank zero; a meta skeleton elsewhere). A collective."""
        return unshard(self.model, self.skeleton, self.global_rank) if self.skeleton is not None else self.model

    def on_fit_start(self) -> None:
        # from_pretrained returns eval mode, which Lightning preserves: train mode before its start-of-training check
        self.model.train()  # modules held as plain attributes (a frozen reference) keep their mode

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        return adamw_with_warmup(params, self.cfg.lr, self.cfg.weight_decay, self.cfg.warmup_steps, self.stage)
