"""The Lightning data module: records -> train/validation split -> long-context samples.

With ``eval_path`` the evaluation data is a file (or hub split) of its own, as the paper had it: training
questions are the first ``max_records`` of ``path`` and evaluation questions the first ``eval_max_records`` of
``eval_path``, and each side draws its distractors from the whole of its own file. Without it, one file is split.
The split is made on records, before grouping, by a seeded permutation: ``round(val_fraction * n)`` records
(at least one when val_fraction > 0) go to validation, the rest to training, and both keep file order so
questions are grouped in file order as the protocol says. The distractor pool of both splits is every
paragraph of every loaded record. The synthetic task can instead validate on a second world
(``synthetic.val_seed``), with its own distractor pool. Batches are plain lists of ``LongContextSample``
(episodes are built from them by the rollout engine).
"""

from __future__ import annotations

import dataclasses
import logging
import random

import lightning
import torch
from torch.utils.data import DataLoader, Sampler

from atom.data.loaders import DataConfig, load_records
from atom.data.longcontext import LongContextSample, build_samples, paragraph_pool
from atom.data.memory_benchmarks import load_samples
from atom.data.records import SAMPLE_DATASETS, DataError, QARecord
from atom.data.synthetic import generate

log = logging.getLogger(__name__)


def _same_source(cfg: DataConfig) -> bool:
    return cfg.eval_path == cfg.path and cfg.eval_hub_split == cfg.hub_split


def split_records(records: list[QARecord], val_fraction: float, seed: int) -> tuple[list[QARecord], list[QARecord]]:
    """(train, validation) by a seeded permutation of ``records``; each part keeps file order."""
    n = len(records)
    n_val = min(n, max(1, round(val_fraction * n))) if val_fraction > 0 and n else 0
    held_out = set(random.Random(seed).sample(range(n), n)[:n_val])  # the first n_val of a seeded permutation
    train = [r for i, r in enumerate(records) if i not in held_out]
    return train, [r for i, r in enumerate(records) if i in held_out]


class EpochShuffler(Sampler[int]):
    """A permutation of ``range(n)`` drawn from ``seed + epoch``, split over ``world`` ranks batch by batch.

    Lightning calls ``set_epoch`` at the start of every epoch, so the order of epoch k is the same whether
    training ran straight through or resumed from a checkpoint taken at an epoch boundary. With several ranks,
    global batch k is items ``[k * batch_size * world, (k + 1) * batch_size * world)`` of the permutation and rank
    r iterates over its r-th slice of ``batch_size`` items (the permutation wraps around to fill the last global
    batch, so every rank runs as many batches). One process with ``accumulate = world`` therefore sees exactly
    the batches of the ranks, in rank order.

    ``start`` (set by ``ResumableLoader`` when an epoch resumes) counts the items of the permutation all ranks
    together already trained on: the rest of the epoch is cut into global batches from there, so a run resumed
    at another world size trains on exactly the items the interrupted one had not reached.
    """

    def __init__(self, n: int, seed: int, batch_size: int = 1, rank: int = 0, world: int = 1):
        if n <= 0:
            raise ValueError("EpochShuffler needs at least one item")
        self.n, self.seed, self.epoch = n, seed, 0
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.start = 0  # items of this epoch's permutation already trained on, by all ranks together

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=generator).tolist()
        if self.world == 1:
            return iter(order[self.start :])
        span = self.batch_size * self.world
        total = -(-max(self.n - self.start, 0) // span) * span  # the rest of the epoch in whole global batches
        stream = (order * -(-(self.start + total) // self.n))[self.start : self.start + total]  # wrapped around
        mine = self.rank * self.batch_size
        return iter([i for g in range(0, total, span) for i in stream[g + mine :][: self.batch_size]])

    def __len__(self) -> int:
        if self.world == 1:
            return self.n
        span = self.batch_size * self.world
        return -(-self.n // span) * self.batch_size


class RolloutSampler(Sampler[int]):
    """GRPO's sampler: epoch e yields this rank's share of rollout step e's prompts, one batch of ``len(self)``.

    Step e's ``per_step`` prompts are items ``[e * per_step, (e + 1) * per_step)`` of the concatenated seeded
    permutations of the training samples (a new permutation per pass, so every sample is used once per pass);
    rank r takes prompts r, r + world, ... of them, each prompt with its whole group of rollouts. The batch
    depends only on (seed, step, rank, world), so a resumed run sees the same prompts.
    """

    def __init__(self, n: int, per_step: int, seed: int, rank: int = 0, world: int = 1):
        if n <= 0:
            raise ValueError("GRPO needs at least one training sample")
        if per_step < world:
            raise ValueError(
                f"grpo.prompts_per_step ({per_step}) must be >= the number of processes ({world}): every rank "
                "rolls out whole groups of at least one prompt"
            )
        self.n, self.per_step, self.seed, self.rank, self.world = n, per_step, seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def step_prompts(self, step: int) -> list[int]:
        """Indices of all ranks' prompts of rollout step ``step``."""
        out = []
        for k in range(step * self.per_step, (step + 1) * self.per_step):
            rounds, pos = divmod(k, self.n)
            order = list(range(self.n))
            random.Random(self.seed * 1_000_003 + rounds).shuffle(order)
            out.append(order[pos])
        return out

    def __iter__(self):
        return iter(self.step_prompts(self.epoch)[self.rank :: self.world])

    def __len__(self) -> int:
        return len(range(self.rank, self.per_step, self.world))


class RankShare(Sampler[list[int]]):
    """One batch: this rank's share (r, r + world, ...) of the first ``limit`` items (greedy validation)."""

    def __init__(self, n: int, limit: int, rank: int = 0, world: int = 1):
        self.indices = list(range(min(n, limit) if limit else n))[rank::world]

    def __iter__(self):
        yield self.indices

    def __len__(self) -> int:
        return 1


def collate_samples(batch: list[LongContextSample]) -> list[LongContextSample]:
    """Batches stay lists of samples: episodes, not tensors, are built from them."""
    return list(batch)


class AtomDataModule(lightning.LightningDataModule):
    """Loads the records once, splits them, and serves GRPO's rollout batches and validation batches.

    ``train_dataloader`` yields one batch per epoch (an epoch is a GRPO rollout step): this rank's share of the
    step's ``prompts_per_step`` samples (``RolloutSampler``). ``val_dataloader`` yields this rank's share of the
    first ``val_samples`` validation samples. Batches are lists of ``LongContextSample``.
    """

    def __init__(self, cfg: DataConfig, prompts_per_step: int = 1, val_samples: int = 0):
        super().__init__()
        self.cfg = cfg
        self.prompts_per_step = prompts_per_step  # samples per rollout step, all ranks together
        self.val_limit = val_samples  # validation samples per validation; 0 = all
        self.records: list[QARecord] = []
        self.train_records: list[QARecord] = []
        self.val_records: list[QARecord] = []
        self.train_samples: list[LongContextSample] = []
        self.val_samples: list[LongContextSample] = []
        self.rl_samples: list[LongContextSample] = []  # GRPO's prompts when they differ from SFT's (synthetic.rl_seed)
        self._ready = False

    def setup(self, stage: str | None = None) -> None:
        if self._ready:  # Lightning calls setup once per stage; the samples must not change between them
            return
        if self.cfg.dataset in SAMPLE_DATASETS:
            self._setup_samples()
            return
        self.records = [] if self.cfg.eval_path else load_records(self.cfg)
        synthetic = self.cfg.synthetic
        if self.cfg.dataset == "synthetic" and synthetic.val_seed >= 0:
            # Validation from a world of its own: no entity or fact of it was trained on, so EM measures the
            # memory skill rather than memorised world facts. Its size is synthetic.val_records, else val_fraction
            # of the training records.
            n_val = max(1, round(self.cfg.val_fraction * len(self.records))) if self.cfg.val_fraction > 0 else 0
            n_val = synthetic.val_records or n_val
            self.train_records = self.records
            held_out = dataclasses.replace(
                synthetic, seed=synthetic.val_seed, val_seed=-1, val_records=0, num_records=max(n_val, 1)
            )
            self.val_records = generate(held_out) if n_val else []
            train_pool, val_pool = paragraph_pool(self.train_records), paragraph_pool(self.val_records)
        elif self.cfg.eval_path:
            # Two files, as the paper: each split's distractors come from the whole of its own file, and its
            # questions are the first max_records / eval_max_records of it (val_fraction is not used).
            train_all = load_records(dataclasses.replace(self.cfg, max_records=0))
            eval_cfg = dataclasses.replace(
                self.cfg, path=self.cfg.eval_path, hub_split=self.cfg.eval_hub_split, max_records=0
            )
            eval_all = load_records(eval_cfg)
            if _same_source(self.cfg):
                log.warning("data.path and data.eval_path name the same data: evaluation questions are trained on")
            self.train_records = train_all[: self.cfg.max_records or None]
            self.val_records = eval_all[: self.cfg.eval_max_records or None]
            self.records = self.train_records + self.val_records
            train_pool, val_pool = paragraph_pool(train_all), paragraph_pool(eval_all)
        else:
            self.train_records, self.val_records = split_records(self.records, self.cfg.val_fraction, self.cfg.seed)
            train_pool = val_pool = paragraph_pool(self.records)
        self.train_samples = build_samples(self.train_records, self.cfg, train_pool, split="train")
        self.val_samples = build_samples(self.val_records, self.cfg, val_pool, split="val")
        if self.cfg.dataset == "synthetic" and synthetic.rl_seed >= 0:
            # GRPO on questions of a third world: neither SFT's demonstrations nor the evaluation's questions, so a
            # held-out gain after GRPO is not a gain on SFT's memorised samples.
            rl = dataclasses.replace(
                synthetic, seed=synthetic.rl_seed, val_seed=-1, val_records=0, rl_seed=-1,
                num_records=synthetic.rl_records or synthetic.num_records,
            )  # fmt: skip
            rl_records = generate(rl)
            self.rl_samples = build_samples(rl_records, self.cfg, paragraph_pool(rl_records), split="rl")
        self._ready = True

    def _setup_samples(self) -> None:
        """A sample dataset: its file's samples split by source record (the samples of one record, e.g. a LoCoMo
        conversation's questions, stay on one side), or all of them trained on and eval_path's evaluated."""
        self._loaded = load_samples(self.cfg)
        if self.cfg.eval_path:
            held_out = dataclasses.replace(
                self.cfg, path=self.cfg.eval_path, hub_split=self.cfg.eval_hub_split,
                max_records=self.cfg.eval_max_records,
            )  # fmt: skip
            self.train_samples, self.val_samples = self._loaded, load_samples(held_out)
        else:
            by_record: dict[str, list[LongContextSample]] = {}
            for sample in self._loaded:
                by_record.setdefault(sample.record_ids[0].rsplit("#", 1)[0], []).append(sample)
            train, val = split_records(list(by_record), self.cfg.val_fraction, self.cfg.seed)
            self.train_samples = [s for key in train for s in by_record[key]]
            self.val_samples = [s for key in val for s in by_record[key]]
        self._ready = True

    def require(self, split: str, purpose: str) -> list[LongContextSample]:
        """The ``split`` ("train" or "val") samples, or a DataError saying why there are none and what to change."""
        self.setup()
        samples = self.train_samples if split == "train" else self.val_samples
        if not samples:
            fix = "lower data.val_fraction" if split == "train" else "raise data.val_fraction above 0"
            raise DataError(
                f"{purpose} needs {split} samples but there are none ({len(self.records)} records, "
                f"data.val_fraction={self.cfg.val_fraction}); {fix}"
            )
        return samples

    def all_samples(self) -> list[LongContextSample]:
        """Samples built from every loaded record (file order, no split), as an evaluation set would be."""
        self.setup()
        if self.cfg.dataset in SAMPLE_DATASETS:
            return list(self._loaded)
        return build_samples(self.records, self.cfg, paragraph_pool(self.records), split="all")

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        # A sampler, not a batch sampler: Lightning calls set_epoch (the rollout step) on a loader's sampler only.
        samples = self.rl_samples or self.train_samples  # GRPO's prompts (SFT reads train_samples directly)
        sampler = RolloutSampler(len(samples), self.prompts_per_step, self.cfg.seed, *self._rank())
        return DataLoader(samples, batch_size=len(sampler), sampler=sampler, collate_fn=collate_samples)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        sampler = RankShare(len(self.val_samples), self.val_limit, *self._rank())
        return DataLoader(self.val_samples, batch_sampler=sampler, collate_fn=collate_samples)

    def transfer_batch_to_device(self, batch: list[LongContextSample], device: torch.device, dataloader_idx: int):
        # Samples hold text, not tensors. Lightning's default transfer rebuilds every dataclass field by
        # field, which fails on frozen dataclasses; episodes put their own tensors on the model's device.
        return batch
