"""The pieces every entry point shares, built once, and the stages as functions of the model.

``build(cfg)`` makes the samples, tokenizer, embedder and chunker; ``load_policy`` the model. Each stage takes
the model and returns the trained, unsharded one::

    pieces = build(cfg)
    model = load_policy(pieces)
    model = sft(model, pieces)
    model = grpo(model, pieces, restart_adapters=True)
    rows = evaluate(model, pieces, out_dir)

Under ``trainer.strategy=fsdp`` only global rank zero holds real weights between stages; the other ranks hold
the meta-device skeleton of the same model, and a stage shards and broadcasts it (``atom.train.sharding``).
Evaluation runs on rank zero, on this process's GPU when there is one.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from atom.config import Config
from atom.data.chunker import TokenChunker
from atom.data.datamodule import AtomDataModule
from atom.data.records import DataError
from atom.env.rollout import RolloutEngine, atommem_episode
from atom.eval import harness
from atom.eval.judge import build_judge
from atom.memory.embedder import Embedder, build_embedder
from atom.policy.factory import make_policy
from atom.policy.models import context_window, load_model, load_tokenizer, restart_lora
from atom.train.grpo import GRPOModule
from atom.train.sft import DemoDataModule, SFTModule, demos_from_trajectories, read_demos
from atom.train.sharding import materialize, stream_full_weights
from atom.train.trainer import TrainerConfig, build_trainer, detect_launch, resume_path

log = logging.getLogger(__name__)


def process_rank(trainer: TrainerConfig) -> int:
    """This process's global rank, known before the Trainer exists (Lightning's launcher, torchrun or SLURM)."""
    return detect_launch(trainer).rank


def device_for(trainer: TrainerConfig) -> torch.device:
    """Where this process computes outside Lightning (evaluation, collection, the embedder): its local GPU when
    the trainer may use GPUs and CUDA exists, else the CPU."""
    if trainer.accelerator != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", detect_launch(trainer).local_rank)
    return torch.device("cpu")


@dataclass
class Pieces:
    """What the stages share, built once from the config (the model is passed separately)."""

    cfg: Config
    data: AtomDataModule  # samples; GRPO's rollout and validation batches
    tokenizer: object
    embedder: Embedder  # on this rank's device
    chunker: TokenChunker
    device: torch.device  # where evaluation and collection run
    rank: int  # global rank of this process

    @property
    def run_dir(self) -> Path:
        return self.cfg.run.dir

    def window(self, model=None) -> int:
        """The policy's context window in tokens (``model.max_context_tokens`` or the model's position limit)."""
        return context_window(self.cfg.model, model) if model is not None else self.cfg.model.max_context_tokens or 8192

    def max_prompt_tokens(self, model) -> int:
        return self.window(model) - self.cfg.sampling.max_new_tokens

    @property
    def autocast(self) -> torch.dtype | None:
        """The dtype that generation outside a Lightning stage (evaluation, collection) autocasts to: that of
        ``trainer.precision`` bf16-mixed or 16-mixed, so it decodes with the numerics training used; else None.
        Lightning runs 16-mixed as bf16-mixed on CPU (float16 autocast is CUDA's), and so does this."""
        precision = self.cfg.trainer.precision
        if precision == "16-mixed":
            return torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.bfloat16 if precision == "bf16-mixed" else None

    def engine(self, policy) -> RolloutEngine:
        return RolloutEngine(
            policy, self.embedder, self.chunker, self.cfg.memory, atommem_episode(self.cfg.agent, self.tokenizer)
        )


def build(cfg: Config) -> Pieces:
    L.seed_everything(cfg.run.seed, verbose=False)
    data = AtomDataModule(cfg.data, prompts_per_step=cfg.grpo.prompts_per_step, val_samples=cfg.grpo.val_samples)
    data.setup()
    tokenizer = load_tokenizer(cfg.model)
    device = device_for(cfg.trainer)
    memory = cfg.memory
    if memory.device == "auto":  # each rank's embedder on that rank's device, not all on cuda:0
        memory = dataclasses.replace(memory, device=str(device))
    chunker = TokenChunker(
        tokenizer, cfg.data.chunk_tokens, cfg.data.chunk_overlap, cfg.data.max_chunks,
        cfg.data.chunk_margin, cfg.data.max_context_tokens,
    )  # fmt: skip
    return Pieces(cfg, data, tokenizer, build_embedder(memory), chunker, device, process_rank(cfg.trainer))


def load_policy(p: Pieces):
    """The configured policy. Under FSDP, ranks other than zero get its meta-device skeleton (no weights read):
    host memory per node then holds one copy of the model, whatever the number of ranks."""
    meta = p.cfg.trainer.strategy.startswith("fsdp") and p.rank != 0
    return load_model(p.cfg.model, seed=p.cfg.run.seed, meta=meta)


def free_memory() -> None:
    """Free what a finished stage left: its module and Trainer reference each other (and Lightning's loops, the
    strategy and the callbacks reference both), so only a collection frees them, with the optimizer state and,
    under FSDP, the shards. The stage drops its own references first (``del module, trainer``); ``atom.fit`` calls
    it again once the caller let go of the stage's (sharded, consumed) input model."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sft(model, p: Pieces):
    """SFT on demonstrations (``sft.demos``, else the oracle's trajectories on the training samples)."""
    cfg = p.cfg
    if cfg.sft.demos:
        demos = read_demos(cfg.sft.demos, cfg.sft.min_reward)
    else:
        trajectories = p.engine(make_policy("oracle")).run(p.data.require("train", "sft (oracle demonstrations)"))
        demos = demos_from_trajectories(trajectories, cfg.sft.min_reward)
    if not demos:
        raise DataError("SFT: no demonstration passed sft.min_reward; lower it or collect better trajectories")
    log.info("SFT on %d turns", len(demos))
    data = DemoDataModule(
        demos, p.tokenizer, min(cfg.sft.max_tokens, p.window(model)), cfg.sft.batch_size, cfg.run.seed
    )
    trainer = build_trainer(
        cfg.trainer, p.run_dir, "sft", every_n_epochs=1, max_epochs=cfg.sft.epochs,
        accumulate_grad_batches=cfg.sft.accumulate, gradient_clip_val=cfg.sft.grad_clip or None,
    )  # fmt: skip
    module = SFTModule(model, cfg.sft)
    trainer.fit(module, datamodule=data, ckpt_path=resume_path(cfg.trainer, p.run_dir, "sft"), weights_only=True)
    trained = module.trained_model()
    del module, trainer, data
    free_memory()
    return trained


def grpo(model, p: Pieces, restart_adapters: bool = False):
    """GRPO from ``model``, which is also the KL reference. ``restart_adapters``: LoRA adapters trained by an
    earlier stage are merged first and fresh ones attached, so that the reference (adapters off) is this start."""
    cfg = p.cfg
    if cfg.model.lora.enabled and restart_adapters:
        model = restart_lora(model, cfg.model)
    module = GRPOModule(
        model, p.tokenizer, cfg.grpo, cfg.sampling, p.engine, seed=cfg.run.seed,
        max_prompt_tokens=p.max_prompt_tokens(model),
        make_rollout_engine=vllm_engine_factory(p, model) if cfg.grpo.rollout_engine == "vllm" else None,
    )  # fmt: skip
    validate = bool(cfg.grpo.val_every and p.data.val_samples)
    trainer = build_trainer(
        cfg.trainer, p.run_dir, "grpo", every_n_epochs=cfg.grpo.checkpoint_every, max_epochs=cfg.grpo.max_steps,
        check_val_every_n_epoch=cfg.grpo.val_every or 1, limit_val_batches=1.0 if validate else 0,
    )  # fmt: skip
    trainer.fit(module, datamodule=p.data, ckpt_path=resume_path(cfg.trainer, p.run_dir, "grpo"), weights_only=True)
    total, mixed = module.groups["total"], module.groups["mixed"]
    if total and p.rank == 0:  # a group whose rewards are all equal has advantage 0 everywhere: it teaches nothing
        share = 100 * mixed / total
        log.info("GRPO: %d of %d groups had mixed rewards (non-zero advantages), %.0f%%", mixed, total, share)
    trained = module.trained_model()
    p.data.trainer = None  # Lightning attached the shared datamodule to this stage's Trainer
    del module, trainer
    free_memory()
    return trained


def vllm_engine_factory(p: Pieces, model):
    """Builds this rank's colocated vLLM engine (``atom.policy.vllm_engine``) for the configured model's weights;
    called by GRPO on first use, once the process group exists."""

    def make():
        from atom.policy.models import pretrained_dir
        from atom.policy.vllm_engine import build_vllm_policy

        try:
            source = str(pretrained_dir(p.cfg.model))
        except ValueError:  # a hub id: vLLM loads it by name (the trained weights are streamed in anyway)
            source = p.cfg.model.name_or_path
        limit, seed = p.max_prompt_tokens(model), p.cfg.run.seed + p.rank
        return build_vllm_policy(
            source, p.tokenizer, p.cfg.sampling, p.cfg.grpo.vllm, limit, seed=seed,
            local_rank=detect_launch(p.cfg.trainer).local_rank, context_tokens=p.cfg.model.max_context_tokens,
        )  # fmt: skip

    return make


def evaluation_model(model, p: Pieces):
    """The model evaluation generates with, on ``p.device``. On a GPU under bf16-mixed / 16-mixed: a copy in the
    compute dtype, streamed one parameter at a time (2N bytes on the GPU instead of the 4N of fp32 master weights;
    the trained model stays on the host for the next stage and ``policy/``). On the CPU the model itself, moved,
    which generates under autocast as training computed. A quantized model stays where it was loaded."""
    if model is None or p.cfg.model.quantization != "none":
        return model
    dtype = p.autocast
    floating = [t for t in model.parameters() if t.is_floating_point()]
    if p.device.type != "cpu" and dtype is not None and any(t.dtype != dtype for t in floating):
        copy_ = materialize(model, p.device, dtype)
        stream_full_weights(model, copy_)
        return copy_.eval()
    return model.to(p.device)


def kv_bytes_per_token(model, dtype: torch.dtype) -> int:
    """Bytes of KV cache one token takes: keys and values of every layer's KV heads (Qwen3-8B in bf16: 147 KB)."""
    c = model.config
    heads = c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    return 2 * c.num_hidden_layers * kv_heads * head_dim * torch.finfo(dtype).bits // 8


def evaluation_batch_size(model, p: Pieces) -> int:
    """``sampling.batch_size``, capped so one generate batch of full-window sequences keeps its KV cache within
    ``eval.kv_cache_gb`` (the paper YAML's 64 sequences of ~7k tokens at 8B would be ~66 GB)."""
    bs, budget = p.cfg.sampling.batch_size, p.cfg.eval.kv_cache_gb
    if model is None or not budget or not hasattr(getattr(model, "config", None), "num_hidden_layers"):
        return bs
    dtype = p.autocast or next(model.parameters()).dtype
    per_sequence = kv_bytes_per_token(model, dtype) * p.window(model)
    fits = max(1, int(budget * 1e9 // per_sequence))
    if fits < bs:
        log.info("evaluation: %d sequences per generate call (eval.kv_cache_gb=%g), not %d", fits, budget, bs)
    return min(bs, fits)


def evaluate(model, p: Pieces, out_dir: Path, progress: bool = True) -> dict[str, dict]:
    """The evaluation table of ``eval.methods`` on the first ``eval.max_samples`` validation samples, written to
    ``out_dir``. The model (None for the oracle alone) goes to ``p.device`` first (``evaluation_model``), its
    generate batches sized to the KV budget (``evaluation_batch_size``). The one evaluation that atom.fit,
    atom.evaluate and atom.collect's callers share."""
    cfg = p.cfg
    model = evaluation_model(model, p)
    samples = p.data.require("val", "evaluation")[: cfg.eval.max_samples or None]
    judge = build_judge(cfg.eval.judge)  # None unless eval.judge names a server
    sampling = dataclasses.replace(cfg.sampling, batch_size=evaluation_batch_size(model, p))
    rows, _ = harness.evaluate(
        samples, cfg.eval.methods, agent=cfg.agent, ecfg=cfg.eval, sampling=sampling,
        chunker=p.chunker, embedder=p.embedder, memory_cfg=cfg.memory, model=model, tokenizer=p.tokenizer,
        window_tokens=p.window(model), out_dir=out_dir, progress=progress, autocast=p.autocast,
        server=cfg.model.server if cfg.model.backend == "openai" else None, judge=judge,
    )  # fmt: skip
    if judge is not None:
        judge.close()
    return rows


def save_policy(model, p: Pieces) -> Path:
    """Save the policy so plain transformers (and atom.evaluate eval.checkpoint=...) can load it."""
    out = p.run_dir / "policy"
    if p.cfg.model.lora.enabled and p.cfg.model.lora.merge_on_save:
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(out)
    p.tokenizer.save_pretrained(out)
    return out
