"""Pre-emption safety of a training stage: save ``last`` on SIGTERM/SIGINT, resume exactly, and never trust a
damaged ``last.ckpt``.

- ``SaveOnSignal`` (a Lightning callback in every stage's Trainer) turns SIGTERM (what a batch scheduler sends
  before it kills a job) and SIGINT (Ctrl+C) into a request to stop: at the end of the current optimizer step
  (SFT: one batch; GRPO: one rollout step) every rank writes ``last.ckpt`` and the stage raises
  ``Interrupted``, so the command exits with status 128 + signal after one line that says how to resume. A
  second Ctrl+C stops at once without saving. Lightning's own SIGTERM handling is replaced while the stage
  trains: it stops at the same point but saves nothing and exits with status 0.
- ``ResumableLoader`` lets Lightning resume a checkpoint taken in the middle of an epoch: it counts the samples
  all ranks trained on in the current epoch (saved in the checkpoint through Lightning's stateful-loader hook)
  and, on resume, skips exactly those by index, so the resumed run sees the batches an uninterrupted one would,
  and at another world size the rest of the epoch.
- ``resume_checkpoint`` checks ``last.ckpt`` before Lightning loads it. A damaged one (truncated by a kill
  during the save, a full disk, a bad copy) is named together with the newest intact periodic checkpoint of
  the stage; ``trainer.resume_intact=true`` resumes from that one instead of stopping.
"""

from __future__ import annotations

import logging
import shutil
import signal
import threading
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from atom.errors import AtomError, Interrupted

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SaveOnSignal(L.Callback):
    """On SIGTERM / SIGINT: finish the current step, save ``last`` (all ranks together), raise ``Interrupted``."""

    def __init__(self, last: str | Path):
        self.last = Path(last)
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now, without a checkpoint
        self.signum = signum
        log.warning(
            "%s received: the stage stops after the current step and saves %s",
            signal.Signals(signum).name,
            self.last,
        )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.signum = None
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for sig in _SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._handle:
                signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx + 1 < trainer.num_training_batches:  # the last batch of an epoch stops at the epoch's end
            self._stop_if_asked(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_asked(trainer)

    def _stop_if_asked(self, trainer: L.Trainer) -> None:
        # Every rank must stop after the same step: the save is a collective. A scheduler signals every rank,
        # but not at the same instant.
        if not trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False):
            return
        save_swapped(trainer, self.last)
        name = signal.Signals(self.signum or signal.SIGTERM).name
        raise Interrupted(
            f"{name} received: saved step {trainer.global_step} (epoch {trainer.current_epoch}) to {self.last}; "
            "run the same command again to resume",
            self.signum or signal.SIGTERM,
        )


def save_swapped(trainer: L.Trainer, path: Path) -> None:
    """Save the trainer's checkpoint to ``path`` (a file, or under FSDP a directory of shards) through a temporary
    name swapped in afterwards, so a kill during the save keeps the previous one (as ``path.old`` for the instant
    of the swap; ``resume_checkpoint`` falls back to it). A collective: every rank calls it."""
    tmp = path.with_name(path.name + ".tmp")
    trainer.save_checkpoint(tmp, weights_only=False)  # the full state a resume needs: optimizer, loops, callbacks
    trainer.strategy.barrier("last_checkpoint")
    if trainer.is_global_zero:
        old = path.with_name(path.name + ".old")
        if path.is_file() and tmp.is_file():
            tmp.replace(path)  # atomic for files
        else:
            if path.exists():
                path.rename(old)
            tmp.rename(path)
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
    trainer.strategy.barrier("last_checkpoint_swapped")


class ResumableLoader(DataLoader):
    """A DataLoader that Lightning can resume in the middle of an epoch: ``state_dict`` says how far this epoch
    went (batches per rank, and samples over all ranks), and after ``load_state_dict`` the next pass over the same
    epoch starts after them. A sampler with ``start`` (``EpochShuffler``) skips the samples all ranks trained on,
    so a run resumed at another world size (another node count) trains on exactly the rest of the epoch; any
    other sampler (e.g. Lightning's distributed wrapper) has this rank's batches loaded and dropped."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._served = 0  # batches handed out in the current pass, counting the skipped ones
        self._samples = 0  # samples of the current pass trained on by all ranks together, counting the skipped
        self._epoch = 0
        self._resume: tuple[int, int, int | None] | None = None  # (epoch, batches, samples) from a checkpoint

    def __iter__(self):
        sampler = self.sampler
        world = int(getattr(sampler, "world", 1))
        self._epoch, self._served, self._samples = int(getattr(sampler, "epoch", 0)), 0, 0
        skip, samples = 0, 0
        if self._resume is not None and self._resume[0] == self._epoch:
            skip = self._resume[1]
            # checkpoints written before samples were counted: their world size is taken to be this one
            samples = self._resume[2] if self._resume[2] is not None else skip * self.batch_size * world
        self._resume = None
        by_index = hasattr(sampler, "start")
        if by_index:
            sampler.start, self._samples = samples, samples
            self._served = -(-samples // (self.batch_size * world))
        try:
            for i, batch in enumerate(super().__iter__()):
                if not by_index and i < skip:
                    self._served += 1
                    continue
                self._served += 1
                self._samples += self.batch_size * world
                yield batch
        finally:
            if by_index:
                sampler.start = 0

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "batches": self._served, "samples": self._samples}

    def load_state_dict(self, state: dict) -> None:
        samples = state.get("samples")
        self._resume = (int(state["epoch"]), int(state["batches"]), None if samples is None else int(samples))


def _meta(path: Path) -> Path:
    """The file holding a checkpoint's loop state: the file itself, or ``meta.pt`` of a sharded (FSDP) one."""
    return path / "meta.pt" if path.is_dir() else path


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be loaded, or None. Reads the pickled structure and maps the
    tensors (no copy into memory), which catches truncation and a broken archive. Of a sharded checkpoint (a
    directory) it checks the loop state in ``meta.pt`` and that the shards' index (``.metadata``) is there."""
    if path.is_dir() and not (path / ".metadata").is_file():
        return "sharded checkpoint without its .metadata index"
    try:
        state = torch.load(_meta(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises RuntimeError, pickle errors, EOFError, ... for damaged files
        return " ".join(str(exc).split()).split(". ")[0][:200] or type(exc).__name__  # torch's first sentence
    if not isinstance(state, dict) or "global_step" not in state or ("state_dict" not in state and not path.is_dir()):
        return "not a Lightning checkpoint (no state_dict / global_step)"
    return None


def _step(path: Path) -> int:
    return int(torch.load(_meta(path), map_location="cpu", weights_only=True, mmap=True)["global_step"])


def newest_intact(directory: Path) -> Path | None:
    """The periodic checkpoint of ``directory`` with the highest global step that loads, or None."""
    intact = [p for p in directory.glob("*.ckpt") if not p.name.startswith("last") and not checkpoint_problem(p)]
    # (a sharded checkpoint is a directory named *.ckpt, so the glob finds both kinds)
    return max(intact, key=lambda p: (_step(p), p.stat().st_mtime), default=None)


def resume_checkpoint(last: Path, take_intact: bool) -> Path | None:
    """``last`` if it exists and is intact; else (damaged) the newest intact periodic checkpoint when
    ``take_intact``, or an AtomError that names both."""
    if not last.exists():
        old = last.with_name(last.name + ".old")  # killed during the swap of save_swapped
        if not old.exists():
            return None
        log.warning("%s is missing but %s is there (a save was interrupted): resuming from it", last, old)
        last = old
    problem = checkpoint_problem(last)
    if problem is None:
        return last
    fallback = newest_intact(last.parent)
    if fallback is not None and take_intact:
        log.warning("%s is damaged (%s); resuming from %s (trainer.resume_intact=true)", last, problem, fallback)
        return fallback
    if fallback is not None:
        offer = f"the newest intact checkpoint is {fallback}: resume from it with trainer.resume_intact=true"
    else:
        offer = "no intact periodic checkpoint is left: move it away, or set trainer.resume=false to start over"
    raise AtomError(f"{last} is damaged ({problem}); {offer}")
