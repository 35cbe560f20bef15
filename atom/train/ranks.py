"""The distributed plumbing of a GRPO step, behind one seam, so that ``atom.train.grpo`` reads as the algorithm.

``Ranks`` holds the collectives a step makes: sums of counts over ranks, the number of lockstep rounds (the most
micro-batches any rank has), the std of every rank's rewards, and DDP's gradient average (automatic gradient
sync is off: several backwards per step do not fit DDP's reducer). On one process each is the identity.

``lockstep``: sharded forwards and backwards are collectives, so every rank must run as many; a rank with fewer
micro-batches repeats its last one, and a rank with none (all its groups dropped) runs ``stand_in``, a
two-token sequence; either way its results are discarded (a backward weighted 0, log-probs not kept).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from atom.train.batches import TurnSequence


def stand_in(eos_id: int) -> TurnSequence:
    """A two-token sequence (EOS, EOS) scoring one token with advantage 0: what a rank with nothing to run runs."""
    return TurnSequence(torch.tensor([eos_id, eos_id]), torch.tensor([False, True]), torch.zeros(1))


def lockstep(
    micros: Sequence[list[TurnSequence]], rounds: int, eos_id: int
) -> Iterator[tuple[list[TurnSequence], bool]]:
    """``rounds`` micro-batches, each with whether it is real: this rank's own, then repeats of its last one (or
    the stand-in where it has none) whose results the caller discards."""
    for k in range(rounds):
        if k < len(micros):
            yield micros[k], True
        else:
            yield (micros[-1] if micros else [stand_in(eos_id)]), False


class Ranks:
    """The collectives of one Lightning module's steps (see the module docstring)."""

    def __init__(self, module):
        self.module = module

    @property
    def world(self) -> int:
        return self.module.trainer.world_size

    def _reduce(self, values: torch.Tensor, op: str) -> torch.Tensor:
        return self.module.trainer.strategy.reduce(values.to(self.module.device), reduce_op=op)

    def sum(self, *values: float, dtype: torch.dtype = torch.float32) -> list[float]:
        """Each value summed over ranks (one collective for all of them)."""
        return self._reduce(torch.tensor(values, dtype=dtype), "sum").tolist()

    def mean(self, *values: float) -> list[float]:
        """Each value's mean over ranks (float32): a global count as DDP and FSDP see it, having averaged the
        gradients of the ranks."""
        return (self._reduce(torch.tensor(values), "sum") / self.world).tolist()

    def rounds(self, count: int) -> int:
        """The most ``count`` of any rank: how many lockstep micro-batches every rank runs."""
        return int(self._reduce(torch.tensor(float(count)), "max"))

    def std(self, rewards: torch.Tensor) -> float | None:
        """The unbiased std of the rewards of all ranks (None on one process: ``group_advantages`` computes it)."""
        if self.world == 1:
            return None
        n, total, squares = self.sum(len(rewards), rewards.sum(), (rewards**2).sum(), dtype=torch.float64)
        return max((squares - total * total / n) / max(n - 1, 1), 0.0) ** 0.5

    def _ddp(self) -> torch.nn.parallel.DistributedDataParallel | None:
        model = self.module.trainer.model
        return model if isinstance(model, torch.nn.parallel.DistributedDataParallel) else None

    def disable_ddp_sync(self) -> None:
        """DDP: no gradient sync inside backwards (Lightning re-enables it after every training_step)."""
        if self._ddp() is not None:
            self._ddp().require_backward_grad_sync = False

    def average_grads(self, model: torch.nn.Module) -> None:
        """DDP: average the gradients over ranks by hand, once per optimizer step (FSDP reduces them itself)."""
        if self._ddp() is None:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n
