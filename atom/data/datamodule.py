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
from atom.data.records import QARecord
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
    """A permutation of ``range(n)`` drawn from ``seed + epoch``.

    Lightning calls ``set_epoch`` at the start of every epoch, so the order of epoch k is the same whether
    training ran straight through or resumed from a checkpoint taken at an epoch boundary.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


def collate_samples(batch: list[LongContextSample]) -> list[LongContextSample]:
    """Batches stay lists of samples: episodes, not tensors, are built from them."""
    return list(batch)


class AtomDataModule(lightning.LightningDataModule):
    """Loads the records once, splits them, and serves long-context samples in lists of ``batch_size``."""

    def __init__(self, cfg: DataConfig):
        super().__init__()
        self.cfg = cfg
        self.records: list[QARecord] = []
        self.train_records: list[QARecord] = []
        self.val_records: list[QARecord] = []
        self.train_samples: list[LongContextSample] = []
        self.val_samples: list[LongContextSample] = []
        self._ready = False

    def setup(self, stage: str | None = None) -> None:
        if self._ready:  # Lightning calls setup once per stage; the samples must not change between them
            return
        self.records = [] if self.cfg.eval_path else load_records(self.cfg)
        synthetic = self.cfg.synthetic
        if self.cfg.dataset == "synthetic" and synthetic.val_seed >= 0:
            # Validation from a world of its own: no entity or fact of it was trained on, so EM measures the
            # memory skill rather than memorised world facts. Its size is val_fraction of the training records.
            n_val = max(1, round(self.cfg.val_fraction * len(self.records))) if self.cfg.val_fraction > 0 else 0
            self.train_records = self.records
            held_out = dataclasses.replace(synthetic, seed=synthetic.val_seed, val_seed=-1, num_records=max(n_val, 1))
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
        self._ready = True

    def all_samples(self) -> list[LongContextSample]:
        """Samples built from every loaded record (file order, no split), as an evaluation set would be."""
        self.setup()
        return build_samples(self.records, self.cfg, paragraph_pool(self.records), split="all")

    def train_dataloader(self) -> DataLoader:
        self.setup()
        sampler = EpochShuffler(len(self.train_samples), self.cfg.seed)
        return DataLoader(
            self.train_samples, batch_size=self.cfg.batch_size, sampler=sampler, collate_fn=collate_samples
        )

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.val_samples, batch_size=self.cfg.batch_size, shuffle=False, collate_fn=collate_samples)

    def transfer_batch_to_device(self, batch: list[LongContextSample], device: torch.device, dataloader_idx: int):
        # Samples hold text, not tensors. Lightning's default transfer rebuilds every dataclass field by
        # field, which fails on frozen dataclasses; episodes put their own tensors on the model's device.
        return batch
