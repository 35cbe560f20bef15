"""Token batches of trained sequences: left padding, micro-batches of similar length, a shared prompt prefix run
once, and the log-probabilities of the generated tokens. GRPO (``atom.train.grpo``) and SFT (``atom.train.sft``)
both train on these.

A sequence is a prompt followed by the tokens the loss is about (a sampled completion, or a demonstration's
reply); ``TurnSequence.mask`` marks the latter. Left padding puts every loss token in the last ``keep`` positions
of its row, so only those positions need logits (``logits_to_keep``): no (B, L, vocab) tensor for
multi-thousand-token prompts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from atom.train.losses import entropy_from_logits


@dataclass
class TurnSequence:
    """One training sequence: a GRPO turn with its trajectory's advantage, or an SFT demonstration."""

    input_ids: torch.Tensor  # (L,) prompt + completion
    mask: torch.Tensor  # (L,) bool, True on the completion's tokens (the ones the loss is about)
    old_logprobs: torch.Tensor  # (C,) sampling log-probs of the completion tokens (GRPO; zeros for SFT)
    advantage: float = 0.0


def micro_batches(indices: Sequence[int], lengths: Sequence[int], size: int) -> list[list[int]]:
    """``indices`` cut into micro-batches of ``size`` with similar lengths (``lengths[i]`` of ``indices[i]``).

    Longest first, so the largest activations come first and padding (each micro-batch is padded to its longest
    sequence) is as small as the split allows. The loss sums over micro-batches and divides by the optimizer
    step's global token count, so the grouping changes the padding, not the gradient.
    """
    ranked = [i for _, i in sorted(zip(lengths, indices), key=lambda pair: -pair[0])]  # stable on ties
    return [ranked[j : j + size] for j in range(0, len(ranked), size)]


def shared_prefix(seqs: Sequence[TurnSequence], minimum: int = 1) -> int:
    """Tokens at the start of every sequence, all of them prompt (the system prompt, and a group's questions),
    stopping one token before the earliest completion: the logits that score a first generated token must come
    from a position after the prefix. 0 when shorter than ``minimum`` or for a single sequence."""
    if len(seqs) < 2:
        return 0
    limit = min(int(s.mask.nonzero()[0]) if s.mask.any() else len(s.mask) for s in seqs) - 1
    first = seqs[0].input_ids
    n = min(limit, *(len(s.input_ids) for s in seqs))
    same = torch.ones(max(n, 0), dtype=torch.bool)
    for s in seqs[1:]:
        same &= s.input_ids[:n] == first[:n]
    prefix = int(same.long().cumprod(0).sum()) if n > 0 else 0
    return prefix if prefix >= minimum else 0


def pad_batch(seqs: Sequence[TurnSequence], pad_id: int, prefix: int = 0) -> dict[str, torch.Tensor]:
    """Left-padded tensors whose loss positions all lie in the last ``keep`` tokens.

    A turn's generated tokens are at the end of its sequence, so with left padding only the last ``keep`` =
    (longest completion + 1) positions need logits: ``logits_to_keep`` then avoids a (B, L, vocab) tensor for
    multi-thousand-token prompts. ``mask``/``old_logprobs`` are (B, keep - 1), index i scoring token
    ``width - keep + 1 + i`` from the logits at the position before it. ``position_ids`` count real tokens only,
    as ``generate`` does, so the forward matches sampling time exactly.

    ``prefix`` > 0 (``shared_prefix``): the first ``prefix`` tokens, the same in every sequence, go once into
    ``prefix_ids`` (1, prefix) and the tensors above hold the rest of each sequence, positions counted after the
    prefix; ``token_logprobs`` then runs the prefix once and every row attends to its cached keys and values.
    """
    first = seqs[0].input_ids[:prefix]
    seqs = [dataclasses.replace(s, input_ids=s.input_ids[prefix:], mask=s.mask[prefix:]) for s in seqs]
    width = max(len(s.input_ids) for s in seqs)
    keep = 1 + max(len(s.mask) - int(s.mask.nonzero()[0]) if s.mask.any() else 0 for s in seqs)
    b = len(seqs)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    loss_mask = torch.zeros((b, keep - 1), dtype=torch.float)
    old = torch.zeros((b, keep - 1), dtype=torch.float)
    for row, s in enumerate(seqs):
        n = len(s.input_ids)
        input_ids[row, width - n :] = s.input_ids
        attention[row, width - n :] = 1
        tail = s.mask[max(len(s.mask) - (keep - 1), 0) :] if keep > 1 else s.mask[:0]
        loss_mask[row, keep - 1 - len(tail) :] = tail.float()
        c = len(s.old_logprobs)
        if c:
            old[row, keep - 1 - c :] = s.old_logprobs.float()
    positions = prefix + (attention.cumsum(-1) - 1).clamp(min=0)
    adv = torch.tensor([s.advantage for s in seqs], dtype=torch.float)
    out = {
        "input_ids": input_ids, "attention_mask": attention, "position_ids": positions, "mask": loss_mask,
        "old_logprobs": old, "adv": adv, "keep": torch.tensor(keep),
    }  # fmt: skip
    if prefix:
        out["prefix_ids"] = first[None].clone()
    return out


def prefix_sharing(model) -> bool:
    """Whether the model returns a KV cache in training mode: activation (gradient) checkpointing turns it off,
    and then every sequence is computed whole."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # transformers 5 renamed it
        if hasattr(type(getattr(model, "get_base_model", lambda: model)()), name):
            return not getattr(model, name)
    return True


def unshared(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``batch`` with its shared prefix (``prefix_ids``) put back into every row (between the prefix and a shorter
    row's tokens lie masked pads): the same tokens, one plain forward. A batch without a prefix as it is."""
    if "prefix_ids" not in batch:
        return batch
    out = dict(batch)
    prefix = out.pop("prefix_ids")
    rows, n = len(out["input_ids"]), prefix.shape[1]
    out["input_ids"] = torch.cat([prefix.expand(rows, n), out["input_ids"]], dim=1)
    out["attention_mask"] = torch.cat([out["attention_mask"].new_ones(rows, n), out["attention_mask"]], dim=1)
    positions = torch.arange(n, device=prefix.device).expand(rows, n)
    out["position_ids"] = torch.cat([positions, out["position_ids"]], dim=1)
    return out


# the KV-cache argument and output field: ``cache`` from transformers 5, ``past_key_values`` before
_CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def token_logprobs(model, batch: dict[str, torch.Tensor], temperature: float, with_entropy: bool = False):
    """log pi(token | prefix) at the sampling temperature for the last ``keep - 1`` tokens, (B, keep - 1).

    With ``prefix_ids`` (``pad_batch(prefix=...)``) the shared prefix runs once, with gradients, and its
    key/value cache is repeated for every row: the prefix costs one sequence's forward and backward instead of
    B. Gradients reach the prefix's weights through the repeated cache, so the result equals the plain forward.
    """
    keep = int(batch["keep"])
    past, attention = None, batch["attention_mask"]
    if "prefix_ids" in batch:
        past = getattr(model(input_ids=batch["prefix_ids"], use_cache=True, logits_to_keep=1), _CACHE, None)
        if past is None:
            raise RuntimeError("a shared prefix needs the model's KV cache (gradient checkpointing turns it off)")
        past.batch_repeat_interleave(len(attention))
        attention = torch.cat([attention.new_ones(len(attention), batch["prefix_ids"].shape[1]), attention], dim=1)
    out = model(
        input_ids=batch["input_ids"], attention_mask=attention, position_ids=batch["position_ids"],
        use_cache=past is not None, logits_to_keep=keep, **{_CACHE: past},
    )  # fmt: skip
    logits = out.logits[:, :-1].float() / (temperature if temperature > 0 else 1.0)
    targets = batch["input_ids"][:, batch["input_ids"].shape[1] - keep + 1 :]
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    return logprobs, (entropy_from_logits(logits.detach()) if with_entropy else None)
