"""The Lightning Trainer of a stage: strategy, precision, TensorBoard logger and checkpoints, from config.

Run directory of a stage (``<run>/`` = ``<run.out_dir>/<run.name>``):
``<run>/tb/<stage>/`` TensorBoard events, ``<run>/checkpoints/<stage>/last.ckpt`` (+ periodic ones).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from atom.train.preemption import SaveOnSignal, resume_checkpoint

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "ddp", "fsdp", "fsdp_grad_op")


@dataclass
class TrainerConfig:
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int = 1  # processes (GPUs) per node; >1 needs strategy ddp or fsdp
    num_nodes: int = 1  # machines
    strategy: str = "auto"  # auto (single device) | ddp | fsdp (FULL_SHARD) | fsdp_grad_op (SHARD_GRAD_OP)
    precision: str = "32-true"  # Lightning precision: 32-true | bf16-mixed | bf16-true
    log_every: int = 1  # optimizer steps between logged scalars
    resume: bool = True  # continue a stage from <run>/checkpoints/<stage>/last.ckpt when it exists
    resume_intact: bool = False  # if last.ckpt is damaged, resume from the newest intact periodic one (else stop)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"trainer.strategy must be one of {list(STRATEGIES)}, got '{self.strategy}'")
        if self.devices <= 0 or self.num_nodes <= 0:
            raise ValueError("trainer.devices and trainer.num_nodes must be > 0")


def _strategy(cfg: TrainerConfig):
    if cfg.strategy in ("fsdp", "fsdp_grad_op"):
        from lightning.pytorch.strategies import FSDPStrategy

        # Wrap each decoder layer. GRPO generates on an unsharded replica (GRPOModule._generator), not here.
        return FSDPStrategy(
            auto_wrap_policy=_decoder_layer_classes(),
            sharding_strategy="FULL_SHARD" if cfg.strategy == "fsdp" else "SHARD_GRAD_OP",
            state_dict_type="full",
        )
    if cfg.strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=False)
    return "auto"


def _decoder_layer_classes() -> set[type]:
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

    return {LlamaDecoderLayer, Qwen3DecoderLayer}


def checkpoint_path(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / "checkpoints" / stage / "last.ckpt"


def resume_path(cfg: TrainerConfig, run_dir: str | Path, stage: str) -> str | None:
    last = checkpoint_path(run_dir, stage)
    if not cfg.resume:
        if last.parent.is_dir() and any(last.parent.iterdir()):
            log.warning(
                "trainer.resume=false: %s starts over; its checkpoints in %s will be replaced", stage, last.parent
            )
        return None
    path = resume_checkpoint(last, cfg.resume_intact)
    return str(path) if path is not None else None


def build_trainer(cfg: TrainerConfig, run_dir: str | Path, stage: str, every_n_epochs: int, **kwargs) -> L.Trainer:
    """A Trainer that logs to TensorBoard under the run and keeps ``last.ckpt`` plus one every ``every_n_epochs``."""
    ckpt = ModelCheckpoint(
        dirpath=Path(run_dir) / "checkpoints" / stage,
        filename=stage + "-{epoch}-{step}",
        every_n_epochs=max(every_n_epochs, 1),
        save_last=True,
        save_top_k=-1,
        enable_version_counter=False,  # the run lock keeps writers out; a fresh start replaces, never last-v1
    )
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=_strategy(cfg),
        precision=cfg.precision,
        logger=TensorBoardLogger(save_dir=str(run_dir), name="tb", version=stage, default_hp_metric=False),
        callbacks=[ckpt, SaveOnSignal(checkpoint_path(run_dir, stage))],
        log_every_n_steps=cfg.log_every,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def clip_grad_norm(strategy, model: torch.nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm of ``model`` to ``max_norm`` (0 = no clipping); return the norm before.

    Under FSDP the root module's ``clip_grad_norm_`` reduces over all shards (Lightning's FSDP precision plugin
    refuses norm clipping, and a per-parameter norm would only see the local shard).
    """
    limit = max_norm if max_norm > 0 else float("inf")
    if is_fsdp(strategy):
        return float(strategy.model.clip_grad_norm_(limit))
    params = [p for p in model.parameters() if p.grad is not None]
    return float(torch.nn.utils.clip_grad_norm_(params, limit)) if params else 0.0


def is_fsdp(strategy) -> bool:
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(strategy, FSDPStrategy)


def full_state_dict(strategy, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """FSDP: the unsharded weights of the LightningModule's ``prefix`` attribute, on CPU, on every rank.

    A collective: every rank must call it. Keys are those of the unwrapped module (``prefix`` stripped), so
    ``load_state_dict`` of a freshly loaded model of the same config accepts them.
    """
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    root = strategy.model
    with FSDP.state_dict_type(root, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=True)):
        state = root.state_dict()
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def warn_if_updates_round_away(params, lr: float, stage: str) -> None:
    """Warn when trainable weights are 16-bit and ``lr`` is small: an AdamW step (about ``lr``) below a weight's
    rounding step is lost (bf16 has 8 significant bits: w - 1e-6 == w for |w| >= ~3e-4). LoRA adapters are fp32."""
    low = {p.dtype for p in params if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)}
    if low and lr < 1e-4:
        log.warning(
            "%s: trainable weights are %s and lr=%g: most AdamW updates round to nothing; load the model in "
            "float32 (model.dtype=float32) with trainer.precision=bf16-mixed, or train LoRA adapters",
            stage, sorted(str(d) for d in low), lr,
        )  # fmt: skip


def adamw_with_warmup(params, lr: float, weight_decay: float, warmup_steps: int, stage: str) -> dict:
    """AdamW over ``params`` with a linear warm-up over ``warmup_steps`` optimizer steps, then constant lr; in
    the form ``configure_optimizers`` returns (the scheduler steps once per optimizer step)."""
    params = list(params)
    warn_if_updates_round_away(params, lr, stage)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = max(warmup_steps, 0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm) if warm else 1.0)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
