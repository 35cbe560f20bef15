"""SFT cold start: per-turn (prompt, completion) demonstrations, loss on completion tokens only.

Demonstrations come from trajectories (any policy; the oracle teacher by default) kept when their reward is at
least ``sft.min_reward`` (the paper kept >= 0.5). Each turn is one example: the prompt is the chat template of the
turn's messages exactly as the policy would see it (``encode_prompt``, centre-truncated like at rollout time), the
completion is the teacher's reply followed by EOS. Labels are -100 on prompt tokens, so only the completion is
learned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from atom import jsonl
from atom.data.datamodule import EpochShuffler
from atom.data.records import DataError
from atom.env.rollout import Trajectory
from atom.policy.hf import centre_truncate, encode_prompt
from atom.train.batches import TurnSequence, pad_batch, prefix_sharing, shared_prefix, token_logprobs, unshared
from atom.train.collection import TeacherConfig
from atom.train.preemption import ResumableLoader
from atom.train.sharding import is_fsdp
from atom.train.stage import PolicyStage
from atom.train.trainer import clip_grad_norm

IGNORE = -100


@dataclass
class SFTConfig:
    demos: str = ""  # JSONL of collected trajectories (python -m atom.collect); "" = oracle demos from train samples
    min_reward: float = 0.5  # keep trajectories whose reward is at least this (rejection filtering)
    epochs: int = 3  # passes over the demonstrations
    lr: float = 1e-5  # AdamW learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 0  # linear warm-up (optimizer steps), then constant
    batch_size: int = 4  # turns per micro-batch
    accumulate: int = 1  # micro-batches per optimizer step
    grad_clip: float = 1.0  # max global grad norm (0 = off)
    max_tokens: int = 8192  # prompt + completion cap per example (> data.chunk_tokens); prompts centre-truncated
    teacher: TeacherConfig = field(default_factory=TeacherConfig)  # served teacher of atom.collect --policy openai

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0 or self.accumulate <= 0 or self.max_tokens <= 16:
            raise ValueError("sft.epochs, sft.batch_size, sft.accumulate must be > 0 and sft.max_tokens > 16")
        if self.lr <= 0:
            raise ValueError(f"sft.lr must be > 0, got {self.lr}")


def demos_from_trajectories(trajectories: Sequence[Trajectory], min_reward: float) -> list[dict]:
    """One demonstration per turn of every trajectory whose reward >= ``min_reward``."""
    return [
        {
            "messages": turn.messages,
            "completion": turn.reply.text,
            "reward": t.reward,
            "sample_id": t.sample_id,
        }
        for t in trajectories
        if t.reward >= min_reward
        for turn in t.turns
    ]


def read_demos(path: str | Path, min_reward: float) -> list[dict]:
    """Demonstrations from a trajectories JSONL; a malformed line is an error naming the file and line.

    A line collected with a judge (``judge_reward`` present) is kept on its judged reward, as the paper did: the
    judge accepts paraphrases that exact match rejects, so filtering on both would drop exactly those. A line whose
    judging failed (``judge_reward`` null) is not kept.
    """

    def parse(row: dict) -> tuple[float, list[tuple]]:
        reward = float(row["reward"])
        if "judge_reward" in row:
            reward = -1.0 if row["judge_reward"] is None else float(row["judge_reward"])
        return reward, [(t["messages"], str(t["completion"])) for t in row["turns"]]

    demos = []
    for reward, turns in jsonl.read(path, parse, "a trajectory record", DataError):
        if reward >= min_reward:
            demos += [{"messages": m, "completion": c, "reward": reward} for m, c in turns]
    return demos


def tokenize_demo(tokenizer, messages, completion: str, max_tokens: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with labels = IGNORE on the prompt; the completion ends with EOS."""
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    completion_ids = completion_ids[: max_tokens // 2]
    prompt_ids = centre_truncate(encode_prompt(tokenizer, messages), max_tokens - len(completion_ids))
    return prompt_ids + completion_ids, [IGNORE] * len(prompt_ids) + completion_ids


class DemoDataset(Dataset):
    def __init__(self, demos: Sequence[dict], tokenizer, max_tokens: int):
        self.examples = [tokenize_demo(tokenizer, d["messages"], d["completion"], max_tokens) for d in demos]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        return self.examples[i]


def collate(batch: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """``pad_batch`` of the examples: left-padded, the labelled tokens in ``mask``, the prompt prefix common to
    the batch (the system prompt at least) in ``prefix_ids`` so that the forward runs it once."""
    seqs = []
    for ids, labels in batch:
        mask = torch.tensor(labels) != IGNORE
        seqs.append(TurnSequence(torch.tensor(ids), mask, torch.zeros(int(mask.sum()))))
    return pad_batch(seqs, pad_id, shared_prefix(seqs, minimum=16))


class DemoDataModule(L.LightningDataModule):
    """Tokenized demonstrations for ``SFTModule``, in a permutation drawn from ``seed + epoch``.

    The order of epoch k depends only on the seed and k, so a run resumed from an epoch checkpoint sees the same
    batches as one that ran straight through. Under several processes each global batch of ``batch_size x
    world`` demonstrations is split over the ranks (``EpochShuffler``).
    """

    def __init__(self, demos: Sequence[dict], tokenizer, max_tokens: int, batch_size: int, seed: int):
        super().__init__()
        self.demos, self.tokenizer, self.max_tokens = demos, tokenizer, max_tokens
        self.batch_size, self.seed = batch_size, seed
        self.dataset: DemoDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.dataset = DemoDataset(self.demos, self.tokenizer, self.max_tokens)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        sampler = EpochShuffler(len(self.dataset), self.seed, self.batch_size, rank, world)
        return ResumableLoader(  # exact resume from a checkpoint saved mid-epoch (on SIGTERM)
            self.dataset, batch_size=self.batch_size, sampler=sampler,
            collate_fn=partial(collate, pad_id=self.tokenizer.pad_token_id),
        )  # fmt: skip


class SFTModule(PolicyStage):
    """Next-token cross-entropy on completion tokens (token mean over the micro-batch).

    Under FSDP the policy is sharded in ``configure_model`` and ``trained_model()`` streams it back into one
    unsharded model on rank zero after ``fit`` (``atom.train.stage``).
    """

    stage = "sft"

    def __init__(self, model, cfg: SFTConfig):
        super().__init__(model, cfg)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # Whole sequences without a KV cache in training (activation checkpointing) and under FSDP (FSDP2 frees
        # the gathered weights after each forward, and the prefix forward's backward then fails).
        if not prefix_sharing(self.model) or is_fsdp(self.trainer.strategy):
            batch = unshared(batch)
        logprobs, _ = token_logprobs(self.model, batch, 1.0)
        loss = sft_loss(logprobs, batch["mask"])
        tokens = batch["mask"].sum()
        self.log("sft/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        self.log("sft/completion_tokens", tokens.float(), reduce_fx="sum", batch_size=len(batch["input_ids"]))
        return loss

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # By hand rather than Lightning's: its FSDP precision plugin refuses norm clipping; this also logs the norm.
        norm = clip_grad_norm(self.model, float(gradient_clip_val or 0.0))
        self.log("sft/grad_norm", norm, batch_size=1)


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the labelled tokens (``token_logprobs`` at temperature 1 and ``mask``):
    next-token cross-entropy, token mean over the micro-batch."""
    return -(logprobs * mask).sum() / mask.sum().clamp(min=1)
