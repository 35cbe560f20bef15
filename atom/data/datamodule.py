"""The Lightning data module: records -> train/validation split -> long-context samples.

The split is made on records, before grouping, by a seeded permutation: ``round(val_fraction * n)`` records
(at least one when val_fraction > 0) go to validation, the rest to training, and both keep file order so
questions are grouped in file order as the protocol says. The distractor pool of both splits is every
paragraph of every loaded record. The synthetic task can instead validate on a second world
(``synthetic.val_seed``), with its own distractor pool. Batches are plain lists of ``LongContextSample``
(episodes are built from them by the rollout engine).
"""

from __future__ import annotations

import dataclasses
import random

import lightning
import torch
from torch.utils.data import DataLoader, Sampler

from atom.data.loaders import DataConfig, load_records
from atom.data.longcontext import LongContextSample, build_samples, paragraph_pool
from atom.data.records import DataError, QARecord
from atom.data.synthetic import generate


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
        self.start = 0  # leading indices of this epoch's order to skip (a resumed epoch: ResumableLoader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist()[self.start :])

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
        self.records = load_records(self.cfg)
        synthetic = self.cfg.synthetic
        if self.cfg.dataset == "synthetic" and synthetic.val_seed >= 0:
            # Validation from a world of its own: no entity or fact of it was trained on, so EM measures the
            # memory skill rather than memorised world facts. Its size is val_fraction of the training records.
            n_val = max(1, round(self.cfg.val_fraction * len(self.records))) if self.cfg.val_fraction > 0 else 0
            self.train_records = self.records
            held_out = dataclasses.replace(synthetic, seed=synthetic.val_seed, val_seed=-1, num_records=max(n_val, 1))
            self.val_records = generate(held_out) if n_val else []
            train_pool, val_pool = paragraph_pool(self.train_records), paragraph_pool(self.val_records)
        else:
            self.train_records, self.val_records = split_records(self.records, self.cfg.val_fraction, self.cfg.seed)
            train_pool = val_pool = paragraph_pool(self.records)
        self.train_samples = build_samples(self.train_records, self.cfg, train_pool, split="train")
        self.val_samples = build_samples(self.val_records, self.cfg, val_pool, split="val")
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
