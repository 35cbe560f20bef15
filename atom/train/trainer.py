"""The Lightning Trainer of a stage: strategy, precision, TensorBoard logger and checkpoints, from config.

Run directory of a stage (``<run>/`` = ``<run.out_dir>/<run.name>``):
``<run>/tb/<stage>/`` TensorBoard events, ``<run>/checkpoints/<stage>/last.ckpt`` (written every epoch, i.e. every
GRPO rollout step) plus the newest ``keep_checkpoints`` periodic ones. Checkpoints hold the policy, its optimizer
and the loop state, never a frozen reference or a generation copy; under FSDP each is a directory of per-rank
shards (torch.distributed.checkpoint) plus ``meta.pt``, otherwise one file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from atom.train.preemption import SaveOnSignal, resume_checkpoint, save_swapped

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "ddp", "fsdp", "fsdp_grad_op")
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")  # Lightning's names
# ``auto``: bf16-mixed where bfloat16 matmuls are native (a CUDA GPU that supports them, a CPU with AVX512-BF16 or
# AMX), else 32-true; resolved when the config is built, so the run's saved config.yaml names what ran


@dataclass
class TrainerConfig:
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int = 1  # processes (GPUs) per node; >1 needs strategy ddp or fsdp
    num_nodes: int = 1  # machines
    strategy: str = "auto"  # auto (one device) | ddp | fsdp (FSDP2) | fsdp_grad_op (FSDP2, no reshard after forward)
    # bf16-mixed (float32 weights, bf16 autocast; evaluation generates under it too) is also the fast CPU path on AMX
    # Lightning's others: bf16-true | 16-mixed | 16-true | 64-true
    precision: str = "32-true"  # auto (bf16-mixed where bf16 is native, else 32-true) | 32-true | bf16-mixed
    log_every: int = 1  # optimizer steps between logged scalars
    resume: bool = True  # continue a stage from <run>/checkpoints/<stage>/last.ckpt when it exists
    keep_checkpoints: int = 2  # periodic checkpoints kept besides last.ckpt (the newest); 0 = last.ckpt only
    resume_intact: bool = False  # if last.ckpt is damaged, resume from the newest intact periodic one (else stop)
    pg_timeout_s: int = 1800  # seconds a rank waits at a collective (ranks roll out independently) before failing

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"trainer.strategy must be one of {list(STRATEGIES)}, got '{self.strategy}'")
        if self.precision == "auto":
            self.precision = auto_precision(self.accelerator)
        if self.precision not in PRECISIONS:
            valid = ["auto", *PRECISIONS]
            raise ValueError(f"trainer.precision must be one of {valid}, got '{self.precision}'")
        if self.devices <= 0 or self.num_nodes <= 0:
            raise ValueError("trainer.devices and trainer.num_nodes must be > 0")
        if self.keep_checkpoints < 0:
            raise ValueError(f"trainer.keep_checkpoints must be >= 0, got {self.keep_checkpoints}")
        if self.pg_timeout_s <= 0:
            raise ValueError(f"trainer.pg_timeout_s must be > 0, got {self.pg_timeout_s}")


@dataclass(frozen=True)
class Launch:
    """Where this process sits in the job, known before the Trainer (or a process group) exists."""

    launcher: str  # slurm (srun started every task) | torchrun | lightning (Lightning spawns the local ranks)
    rank: int  # global rank
    local_rank: int  # rank on this node: the CUDA device index
    world_size: int  # processes in the job


def detect_launch(cfg: TrainerConfig, env: Mapping[str, str] | None = None) -> Launch:
    """This process's rank, local rank and world size from the launcher's environment, read as Lightning reads it.

    - SLURM (``srun``, one task per GPU): ``SLURM_PROCID`` / ``SLURM_LOCALID`` / ``SLURM_NTASKS``, unless the job is
      named ``bash`` or ``interactive`` (Lightning's rule for a shell on an allocation: then it launches itself).
    - torchrun (``TORCHELASTIC_RUN_ID`` or ``RANK`` set): ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE``.
    - Lightning's own launcher: it re-runs the command once per extra local rank with ``LOCAL_RANK`` (and
      ``NODE_RANK`` on other nodes) set, never ``RANK``: rank = node_rank x devices + local_rank.
    """
    env = os.environ if env is None else env
    planned = cfg.devices * cfg.num_nodes
    if "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        local = int(env.get("SLURM_LOCALID", 0))
        return Launch("slurm", int(env.get("SLURM_PROCID", 0)), local, int(env["SLURM_NTASKS"]))
    if "TORCHELASTIC_RUN_ID" in env or "RANK" in env:
        return Launch(
            "torchrun", int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", planned))
        )
    local = int(env.get("LOCAL_RANK", 0))
    return Launch("lightning", int(env.get("NODE_RANK", 0)) * cfg.devices + local, local, planned)


def _strategy(cfg: TrainerConfig):
    if cfg.strategy in ("fsdp", "fsdp_grad_op"):
        # FSDP2 through Lightning's ModelParallelStrategy: the stage module shards the policy in configure_model.
        # (Lightning's FSDPStrategy, FSDP1, runs training_step inside the root's forward, which breaks manual
        # optimization and any gather during a step.) fsdp_grad_op is the FSDP2 form of SHARD_GRAD_OP.
        from atom.train.sharding import FSDP2Strategy

        return FSDP2Strategy(
            reshard_after_forward=cfg.strategy == "fsdp",
            data_parallel_size=cfg.devices * cfg.num_nodes,
            timeout=timedelta(seconds=cfg.pg_timeout_s),
        )
    if cfg.strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=False, timeout=timedelta(seconds=cfg.pg_timeout_s))
    return "auto"


def checkpoint_path(run_dir: str | Path, stage: str) -> Path:
    """``last.ckpt`` of a stage: a file, or under FSDP a directory of per-rank shards plus ``meta.pt``."""
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


class LastCheckpoint(Checkpoint):
    """Writes ``last.ckpt`` at the end of every epoch (every GRPO rollout step): the one place a resume point is
    written. It is saved under a temporary name and swapped in, so a kill mid-write keeps the previous one.
    Listed after the periodic ModelCheckpoint (Lightning keeps checkpoint callbacks last, in order), so the
    saved callback state already names the periodic checkpoint of the same epoch, which a resumed run prunes."""

    def __init__(self, path: Path):
        self.path = path

    def save(self, trainer: L.Trainer) -> None:
        save_swapped(trainer, self.path)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.save(trainer)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's feature flags from ``cpuinfo`` (Linux), or None where it cannot be read."""
    try:
        line = next((ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("flags")), None)
    except OSError:
        return None
    return set(line.split(":", 1)[-1].split()) if line is not None else None


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU runs bfloat16 matmuls natively: the avx512_bf16 or amx_bf16 flag in ``cpuinfo`` (oneDNN's
    own check, ``torch.ops.mkldnn._is_mkldnn_bf16_supported``, already says yes from AVX512-core, which emulates
    bfloat16). Where ``cpuinfo`` cannot be read (not Linux), oneDNN's check."""
    flags = cpu_flags(cpuinfo)
    if flags is not None:
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def auto_precision(accelerator: str) -> str:
    """``trainer.precision=auto``: bf16-mixed where bfloat16 matmuls are native on the device the run uses (a CUDA
    GPU with bf16 support; a CPU with AVX512-BF16 or AMX), 32-true elsewhere (emulated bf16 is slower there)."""
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if gpu:
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def warn_if_bf16_is_emulated(cfg: TrainerConfig) -> None:
    """bf16 precision on a CPU without native bfloat16 matmuls runs slower than float32: say so, once per stage.
    (Lightning runs 16-mixed as bf16-mixed on CPU.)"""
    on_cpu = cfg.accelerator == "cpu" or (cfg.accelerator == "auto" and not torch.cuda.is_available())
    bf16 = cfg.precision.startswith("bf16") or cfg.precision == "16-mixed"
    if on_cpu and bf16 and not cpu_has_native_bf16():
        log.warning(
            "trainer.precision=%s on a CPU without AVX512-BF16/AMX: bfloat16 is emulated there and slower than "
            "float32; set trainer.precision=32-true",
            cfg.precision,
        )


def build_trainer(cfg: TrainerConfig, run_dir: str | Path, stage: str, every_n_epochs: int, **kwargs) -> L.Trainer:
    """A Trainer logging to TensorBoard under the run; ``last.ckpt`` every epoch plus the newest
    ``keep_checkpoints`` of the checkpoints taken every ``every_n_epochs`` epochs."""
    dirpath = Path(run_dir) / "checkpoints" / stage
    callbacks: list[Callback] = []
    if cfg.keep_checkpoints:
        callbacks.append(
            ModelCheckpoint(
                dirpath=dirpath,
                filename=stage + "-{epoch}-{step}",
                every_n_epochs=max(every_n_epochs, 1),
                save_top_k=cfg.keep_checkpoints,
                monitor="step",
                mode="max",
                save_last=False,
                save_on_train_epoch_end=True,  # not after validation: GRPO validates only every grpo.val_every steps
                enable_version_counter=False,  # the run lock keeps writers out: replace, never -v1
            )  # fmt: skip
        )
    callbacks += [LastCheckpoint(dirpath / "last.ckpt"), SaveOnSignal(dirpath / "last.ckpt")]
    warn_if_bf16_is_emulated(cfg)
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=_strategy(cfg),
        precision=cfg.precision,
        logger=TensorBoardLogger(save_dir=str(run_dir), name="tb", version=stage, default_hp_metric=False),
        callbacks=callbacks,
        log_every_n_steps=cfg.log_every,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the samplers split batches over ranks themselves (resume-exact orders)
        **kwargs,
    )


def clip_grad_norm(model: torch.nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm of ``model`` to ``max_norm`` (0 = no clipping); return the norm before.

    Under FSDP2 the gradients are DTensor shards and the norm is reduced over all of them (a collective: every
    rank calls it). By hand because Lightning refuses norm clipping with manual optimization and FSDP.
    """
    limit = max_norm if max_norm > 0 else float("inf")
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, limit)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


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
