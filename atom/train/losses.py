"""GRPO loss pieces as pure tensor functions: group advantages, clipped surrogate, k3 KL, aggregation.

Symbols of the objective and the arguments they come from:

- i indexes sequences (one per *turn*: ``B`` rows), t token positions (``T`` columns);
- m[i,t] = ``mask``: 1 on model-generated tokens; prompt, environment-inserted tokens and padding are 0;
- logp, logp_old, logp_ref = ``logprobs``, ``old_logprobs`` (sampling time), ``ref_logprobs``;
- A[i] = ``advantages[i]``: the advantage of the trajectory the turn belongs to, broadcast to every token of
  every turn (MemAgent-style multi-conversation credit assignment);
- eps_l, eps_h = ``clip_low``, ``clip_high``; c = ``dual_clip``; beta = ``kl_coef``.

Per token, with r = exp(logp - logp_old)::

    pg     = max(-A r, -A clip(r, 1 - eps_l, 1 + eps_h))    PPO clip (Schulman et al. 2017); the asymmetric
                                                            range is DAPO's clip-higher (Yu et al. 2025)
    pg     = min(pg, -A c)           if A < 0 and c is set  dual clip (Ye et al. 2020; verl's clip_ratio_c)
    k3     = exp(d) - d - 1,  d = logp_ref - logp           Schulman's low-variance KL estimator, >= 0
    l[i,t] = pg + beta k3

Aggregation (``aggregation``) over the loss tokens:

- ``"token_mean"`` (DAPO / verl default, AtomMem's setting): sum_{i,t} m l / N_tok, N_tok = ``num_tokens`` or
  ``mask.sum()``: every generated token weighs the same whatever its turn's length.
- ``"seq_mean_token_mean"`` (TRL ``"grpo"``): (1 / N_seq) sum_i (sum_t m l / sum_t m): tokens of short turns
  weigh more (length bias).
- ``"seq_mean_token_sum_norm"`` (Dr. GRPO): sum_{i,t} m l / (N_seq L), L = ``norm_len`` (default ``T``; pass a
  fixed value such as the generation cap so the scale does not depend on padding).

N_seq = ``num_sequences`` or the number of rows with at least one loss token (fully masked rows are
padding, not sequences). Passing the *global* counts over gradient-accumulation micro-batches and ranks makes
the summed micro-batch losses, gradients and metrics equal those of the whole batch.

Advantages (:func:`group_advantages`): A = R - mean_group(R) (AtomMem and Dr. GRPO: no std scaling),
optionally divided by the group's std (TRL / DeepSeek GRPO) or the batch's std (TRL ``"batch"``).

Numerical guards: log-ratios are clamped to [-20, 20] before ``exp`` and k3 to at most 10 (as verl does), so
a diverged token gives a finite loss with zero gradient instead of inf/nan; masked positions are replaced by 0 with
``torch.where`` before any arithmetic, so garbage there (nan, inf) reaches neither the loss nor the gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

STD_SCALES = ("none", "group", "batch")
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
_LOG_RATIO_CLAMP = 20.0  # exp(20) ~ 5e8: far beyond any clip range, still finite in float32
_KL_CLAMP = 10.0  # per-token k3 cap (verl): a token past it gives no KL gradient


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    """Reshape (N,) rewards into (num_groups, G), checking shapes."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.numel() == 0 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"number of rewards ({rewards.numel()}) must be a positive multiple of group_size ({group_size})"
        )
    if not rewards.is_floating_point():
        rewards = rewards.float()
    return rewards.view(-1, group_size)


def group_advantages(
    rewards: Tensor, group_size: int, std_scale: str = "none", eps: float = 1e-6, batch_std: float | None = None
) -> Tensor:
    """Group-relative advantages, one per trajectory.

    Args:
        rewards: (N,) scalar rewards ordered group by group (N = num_groups * group_size).
        group_size: G, the rollouts sharing one prompt.
        std_scale: ``"none"`` (reward - group mean; AtomMem / Dr. GRPO, the paper's default), ``"group"``
            (divided by the group's std + eps; TRL / DeepSeek GRPO) or ``"batch"`` (divided by the std over
            all N rewards + eps).
            Stds are unbiased (Bessel-corrected, ``torch.std``'s default), as TRL computes them.
        eps: added to the std so zero-std groups give zero advantages instead of nan.
        batch_std: for ``"batch"``, the std of the whole batch when it spans processes (default: of ``rewards``).

    Returns:
        (N,) advantages in the rewards' order (float).
    """
    if std_scale not in STD_SCALES:
        raise ValueError(f"std_scale must be one of {STD_SCALES}, got {std_scale!r}")
    grouped = _grouped(rewards, group_size)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if std_scale == "group":
        if group_size < 2:
            raise ValueError("std_scale='group' needs group_size >= 2: the unbiased std of 1 is undefined")
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + eps)
    elif std_scale == "batch":
        if batch_std is None and grouped.numel() < 2:
            raise ValueError("std_scale='batch' needs >= 2 rewards: the unbiased std of 1 is undefined")
        advantages = advantages / ((grouped.std() if batch_std is None else batch_std) + eps)
    return advantages.reshape(-1)


def zero_std_groups(rewards: Tensor, group_size: int, atol: float = 0.0) -> Tensor:
    """(num_groups,) bool: True where all rewards of a group are equal (within ``atol``): no signal."""
    grouped = _grouped(rewards, group_size)
    return (grouped.amax(dim=1) - grouped.amin(dim=1)) <= atol


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(pi_theta || pi_ref): ``exp(d) - d - 1``, ``d = ref - logprobs``; >= 0.

    ``d`` is clamped to [-20, 20] so a diverged token cannot overflow, and k3 to at most ``_KL_CLAMP`` = 10 (as
    verl's low-variance KL does), so one diverged token cannot dominate the batch; exact below that.
    """
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"kl_k3: shapes differ: logprobs {tuple(logprobs.shape)}, ref {tuple(ref_logprobs.shape)}")
    d = (ref_logprobs - logprobs).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    return (torch.exp(d) - d - 1.0).clamp(max=_KL_CLAMP)


def masked_mean(x: Tensor, mask: Tensor, denom: float | Tensor | None = None, dim: int | None = None) -> Tensor:
    """Sum of ``x`` where ``mask`` is nonzero, divided by ``denom`` (default: the mask count, at least 1).

    Masked entries are dropped with ``torch.where``: nan/inf there reach neither the result nor its gradient.
    With ``dim`` the reduction is along that dimension (``denom`` then defaults to the per-slice count).
    """
    keep = mask.bool()
    total = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
    total = total.sum() if dim is None else total.sum(dim=dim)
    if denom is None:
        denom = (keep.sum() if dim is None else keep.sum(dim=dim)).clamp_min(1)
    return total / denom


def entropy_from_logits(logits: Tensor) -> Tensor:
    """(B, T, V) logits -> (B, T) entropy in nats of the softmax distribution, computed in float32.

    Entries at ``-inf`` (vocabulary masked out) contribute 0, with a finite gradient.
    """
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    # 0 * -inf is nan: zero the log-probability where it is -inf; those entries have p == 0 anyway.
    logp_safe = torch.where(torch.isfinite(logp), logp, torch.zeros((), dtype=logp.dtype, device=logp.device))
    return -(logp.exp() * logp_safe).sum(dim=-1)


def _check_loss_inputs(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    ref_logprobs: Tensor | None,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None,
    kl_coef: float,
    aggregation: str,
) -> None:
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be (B, T), got shape {tuple(logprobs.shape)}")
    for name, t in (("old_logprobs", old_logprobs), ("mask", mask), ("ref_logprobs", ref_logprobs)):
        if t is not None and t.shape != logprobs.shape:
            raise ValueError(f"{name} must have the shape of logprobs {tuple(logprobs.shape)}, got {tuple(t.shape)}")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must be (B,) = ({logprobs.shape[0]},), got shape {tuple(advantages.shape)}")
    if mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("mask must hold only 0 and 1 (1 = model-generated token that enters the loss)")
    if not 0.0 <= clip_low < 1.0:
        raise ValueError(f"clip_low must be in [0, 1), got {clip_low}")
    if clip_high < 0.0:
        raise ValueError(f"clip_high must be >= 0, got {clip_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None to disable), got {dual_clip}")
    if kl_coef < 0.0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    if kl_coef > 0.0 and ref_logprobs is None:
        raise ValueError(f"kl_coef={kl_coef} > 0 needs ref_logprobs (or set kl_coef=0)")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    ref_logprobs: Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float | None = 3.0,
    kl_coef: float = 0.001,
    aggregation: str = "token_mean",
    norm_len: int | None = None,
    num_tokens: float | None = None,
    num_sequences: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped-surrogate GRPO loss with k3 KL to a reference; the objective is in the module docstring.

    Args:
        logprobs: (B, T) log pi_theta of each token (carries the gradient); B = turns in the batch.
        old_logprobs: (B, T) log pi_old at sampling time (detached here).
        advantages: (B,) the advantage of each sequence's trajectory, broadcast over its tokens.
        mask: (B, T) 1 on model-generated tokens, 0 on prompt, environment tokens and padding (bool or 0/1).
        ref_logprobs: (B, T) reference-policy log-probs; may be None when ``kl_coef == 0``. When given with
            ``kl_coef == 0`` it only feeds the ``kl`` metric.
        clip_low, clip_high: the ratio is clipped to [1 - clip_low, 1 + clip_high] (DAPO clip-higher).
        dual_clip: c > 1 bounding the loss of negative-advantage tokens at -A c (verl's clip_ratio_c);
            None = off.
        kl_coef: beta, weight of the per-token k3 KL added to the policy loss.
        aggregation: one of ``AGGREGATIONS`` (see the module docstring).
        norm_len: Dr. GRPO's constant length L for ``"seq_mean_token_sum_norm"``; default T.
        num_tokens: global loss-token count (all micro-batches and ranks); default ``mask.sum()``. Normalises
            ``"token_mean"`` and the token-level metrics.
        num_sequences: global sequence count for the sequence-level aggregations; default: rows of this batch
            with at least one loss token.

    Returns:
        (loss, metrics): the scalar loss and detached scalar metrics ``pg_loss`` (policy part, aggregated
        like the loss), ``kl`` (token mean of k3; 0 without a reference), ``ratio_mean``, ``clip_ratio``
        (share of loss tokens whose gradient a clip zeroed), ``clip_ratio_low`` (A < 0, r < 1 - clip_low),
        ``clip_ratio_high`` (A > 0, r > 1 + clip_high), ``clip_ratio_dual`` (A < 0, r > c). Token metrics are
        divided by ``num_tokens`` when given, so they too sum over micro-batches to the whole-batch value.
    """
    _check_loss_inputs(
        logprobs,
        old_logprobs,
        advantages,
        mask,
        ref_logprobs,
        clip_low,
        clip_high,
        dual_clip,
        kl_coef,
        aggregation,
    )
    if norm_len is not None and norm_len <= 0:
        raise ValueError(f"norm_len must be > 0, got {norm_len}")
    if num_tokens is not None and num_tokens <= 0:
        raise ValueError(f"num_tokens must be > 0, got {num_tokens}")
    if num_sequences is not None and num_sequences <= 0:
        raise ValueError(f"num_sequences must be > 0, got {num_sequences}")

    keep = mask.bool()
    zero = torch.zeros((), dtype=torch.float32, device=logprobs.device)
    # Masked positions are set to 0 before any arithmetic: whatever they held (nan, inf) then reaches neither
    # the loss nor the gradient, which is exactly 0 there (torch.where sends no gradient to a dropped branch).
    lp = torch.where(keep, logprobs.float(), zero)
    old_lp = torch.where(keep, old_logprobs.detach().float(), zero)
    adv = advantages.detach().float().unsqueeze(1)  # (B, 1) broadcast over tokens

    ratio = torch.exp((lp - old_lp).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP))
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    pg = torch.maximum(pg_unclipped, pg_clipped)
    if dual_clip is not None:
        pg = torch.where(adv < 0, torch.minimum(pg, -adv * dual_clip), pg)

    if ref_logprobs is not None:
        kl = kl_k3(lp, torch.where(keep, ref_logprobs.detach().float(), zero))
    else:
        kl = torch.zeros_like(lp)
    per_token = pg + kl_coef * kl if kl_coef > 0 else pg

    token_denom = num_tokens if num_tokens is not None else keep.sum().clamp_min(1)

    def aggregate(values: Tensor) -> Tensor:
        if aggregation == "token_mean":
            return masked_mean(values, keep, token_denom)
        seq_denom = num_sequences if num_sequences is not None else keep.any(dim=1).sum().clamp_min(1)
        if aggregation == "seq_mean_token_mean":
            return masked_mean(values, keep, dim=1).sum() / seq_denom
        length = norm_len if norm_len is not None else logprobs.shape[1]
        return masked_mean(values, keep, denom=1.0, dim=1).sum() / (seq_denom * length)

    loss = aggregate(per_token)

    with torch.no_grad():
        clipped_low = keep & (adv < 0) & (ratio < 1.0 - clip_low)
        clipped_high = keep & (adv > 0) & (ratio > 1.0 + clip_high)
        clipped_dual = torch.zeros_like(keep)
        if dual_clip is not None:
            clipped_dual = keep & (adv < 0) & (ratio > dual_clip)
        metrics = {
            "pg_loss": aggregate(pg).detach(),
            "kl": masked_mean(kl, keep, token_denom).detach(),
            "ratio_mean": masked_mean(ratio, keep, token_denom).detach(),
            "clip_ratio": masked_mean((clipped_low | clipped_high | clipped_dual).float(), keep, token_denom),
            "clip_ratio_low": masked_mean(clipped_low.float(), keep, token_denom),
            "clip_ratio_high": masked_mean(clipped_high.float(), keep, token_denom),
            "clip_ratio_dual": masked_mean(clipped_dual.float(), keep, token_denom),
        }
    return loss, metrics
