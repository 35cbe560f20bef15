"""GRPO loss pieces against hand-computed numbers: advantages, k3, clipped surrogate, aggregation, masking."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from atom.train.losses import (
    entropy_from_logits,
    group_advantages,
    grpo_loss,
    kl_k3,
    masked_mean,
    zero_std_groups,
)


def approx(values, rel=1e-5, abs=1e-6):
    return pytest.approx(values, rel=rel, abs=abs)


# ---------------------------------------------------------------- advantages


def test_defaults_are_the_papers_values():
    loss_defaults = {k: p.default for k, p in inspect.signature(grpo_loss).parameters.items()}
    assert loss_defaults["clip_low"] == 0.2 and loss_defaults["clip_high"] == 0.28
    assert loss_defaults["dual_clip"] == 3.0
    assert loss_defaults["kl_coef"] == 0.001
    assert loss_defaults["aggregation"] == "token_mean"
    assert inspect.signature(group_advantages).parameters["std_scale"].default == "none"


def test_group_advantages_no_std_is_reward_minus_group_mean():
    rewards = torch.tensor([1.0, 0.0, 0.75, 0.25])  # 2 groups of 2, both with mean 0.5
    assert group_advantages(rewards, 2).tolist() == approx([0.5, -0.5, 0.25, -0.25])


def test_group_advantages_are_grouped_in_order():
    rewards = torch.tensor([0.0, 0.0, 3.0, 1.0, 1.0, 1.0])  # groups (0, 0, 3) mean 1 and (1, 1, 1) mean 1
    assert group_advantages(rewards, 3).tolist() == approx([-1.0, -1.0, 2.0, 0.0, 0.0, 0.0])
    # the same rewards as 3 groups of 2 give a different answer: the grouping really is consecutive blocks
    assert group_advantages(rewards, 2).tolist() == approx([0.0, 0.0, 1.0, -1.0, 0.0, 0.0])


def test_group_advantages_group_std_is_unbiased():
    rewards = torch.tensor([1.0, 0.0, 0.75, 0.25])
    eps = 1e-6
    std0 = math.sqrt(((1.0 - 0.5) ** 2 + (0.0 - 0.5) ** 2) / (2 - 1))  # Bessel-corrected, as TRL
    std1 = math.sqrt(((0.75 - 0.5) ** 2 + (0.25 - 0.5) ** 2) / (2 - 1))
    expected = [0.5 / (std0 + eps), -0.5 / (std0 + eps), 0.25 / (std1 + eps), -0.25 / (std1 + eps)]
    assert group_advantages(rewards, 2, std_scale="group", eps=eps).tolist() == approx(expected)


def test_group_advantages_batch_std_uses_all_rewards():
    rewards = torch.tensor([1.0, 0.0, 0.75, 0.25])
    mean = (1.0 + 0.0 + 0.75 + 0.25) / 4
    std = math.sqrt(sum((r - mean) ** 2 for r in (1.0, 0.0, 0.75, 0.25)) / (4 - 1))
    expected = [a / (std + 1e-6) for a in (0.5, -0.5, 0.25, -0.25)]
    assert group_advantages(rewards, 2, std_scale="batch").tolist() == approx(expected)


def test_group_std_scaling_of_a_constant_group_gives_zero_not_nan():
    adv = group_advantages(torch.tensor([0.5, 0.5, 1.0, 0.0]), 2, std_scale="group")
    assert torch.isfinite(adv).all()
    assert adv[:2].tolist() == [0.0, 0.0]


def test_group_advantages_errors():
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.tensor([1.0, 0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="'none', 'group', 'batch'"):
        group_advantages(torch.tensor([1.0, 0.0]), 2, std_scale="grpo")
    with pytest.raises(ValueError, match="group_size >= 2"):
        group_advantages(torch.tensor([1.0, 0.0]), 1, std_scale="group")
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 2), 2)


def test_integer_rewards_are_accepted():
    assert group_advantages(torch.tensor([1, 0]), 2).tolist() == [0.5, -0.5]


def test_zero_std_groups():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5])
    assert zero_std_groups(rewards, 2).tolist() == [True, False, True]
    assert zero_std_groups(rewards, 3).tolist() == [False, False]
    near = torch.tensor([0.5, 0.5 + 1e-9], dtype=torch.float64)
    assert zero_std_groups(near, 2).tolist() == [False]  # exact by default
    assert zero_std_groups(near, 2, atol=1e-6).tolist() == [True]


# ---------------------------------------------------------------- k3


def test_k3_is_zero_when_equal_and_matches_known_values():
    lp = torch.tensor([-0.3, -1.0, -2.0])
    assert kl_k3(lp, lp).tolist() == [0.0, 0.0, 0.0]
    # d = ref - lp: d = -1 -> e^-1 + 1 - 1 = e^-1;  d = +1 -> e - 1 - 1 = e - 2
    values = kl_k3(torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -1.0]))
    assert values.tolist() == approx([math.exp(-1.0), math.e - 2.0])


def test_k3_gradient_and_nonnegativity():
    lp = torch.tensor([-1.0, -2.0], requires_grad=True)
    ref = torch.tensor([-2.0, -1.0])
    kl_k3(lp, ref).sum().backward()
    # d/dlp [exp(ref - lp) - (ref - lp) - 1] = 1 - exp(ref - lp)
    assert lp.grad.tolist() == approx([1.0 - math.exp(-1.0), 1.0 - math.exp(1.0)])
    g = torch.Generator().manual_seed(0)
    assert (kl_k3(torch.randn(1000, generator=g) * 3, torch.randn(1000, generator=g) * 3) >= 0).all()


# ---------------------------------------------------------------- clipped surrogate


# (advantage, ratio, dual_clip, expected per-token loss, expected d loss / d logprob)
# clip range [0.8, 1.28]; d(-A r)/d logprob = -A r when unclipped, 0 when a clip is active.
SURROGATE_CASES = [
    pytest.param(1.0, 1.1, 3.0, -1.1, -1.1, id="pos-inside"),
    pytest.param(1.0, 1.5, 3.0, -1.28, 0.0, id="pos-above-high-clipped"),
    pytest.param(0.5, 1.2, 3.0, -0.6, -0.6, id="pos-inside-below-high"),
    pytest.param(1.0, 0.5, 3.0, -0.5, -0.5, id="pos-below-low-not-clipped"),
    pytest.param(-1.0, 0.9, 3.0, 0.9, 0.9, id="neg-inside"),
    pytest.param(-1.0, 0.5, 3.0, 0.8, 0.0, id="neg-below-low-clipped"),
    pytest.param(-2.0, 0.7, 3.0, 1.6, 0.0, id="neg-below-low-clipped-scaled"),
    pytest.param(-1.0, 1.5, 3.0, 1.5, 1.5, id="neg-above-high-not-clipped"),
    pytest.param(-1.0, 4.0, 3.0, 3.0, 0.0, id="neg-dual-clipped"),
    pytest.param(-1.0, 4.0, None, 4.0, 4.0, id="neg-no-dual"),
    pytest.param(1.0, 4.0, 3.0, -1.28, 0.0, id="pos-dual-does-not-apply"),
]


@pytest.mark.parametrize("adv,ratio,dual,expected_loss,expected_grad", SURROGATE_CASES)
def test_clipped_surrogate_single_token(adv, ratio, dual, expected_loss, expected_grad):
    lp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    old = torch.zeros(1, 1)
    loss, metrics = grpo_loss(lp, old, torch.tensor([adv]), torch.ones(1, 1), kl_coef=0.0, dual_clip=dual)
    loss.backward()
    assert loss.item() == approx(expected_loss)
    assert lp.grad.item() == approx(expected_grad)
    assert metrics["pg_loss"].item() == approx(expected_loss)
    assert metrics["clip_ratio"].item() == (1.0 if expected_grad == 0.0 else 0.0)


def test_clip_metrics_on_a_mixed_batch():
    # one loss token per row, plus a masked second column holding a wild ratio that must not count
    ratios = [1.5, 0.5, 4.0, 1.0]  # high-clipped (A>0), low-clipped (A<0), dual-clipped (A<0), unclipped
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    lp = torch.tensor([[math.log(r), 5.0] for r in ratios])
    mask = torch.tensor([[1, 0]] * 4)
    loss, m = grpo_loss(lp, torch.zeros(4, 2), adv, mask, kl_coef=0.0)
    assert m["clip_ratio"].item() == approx(3 / 4)
    assert m["clip_ratio_high"].item() == approx(1 / 4)
    assert m["clip_ratio_low"].item() == approx(1 / 4)
    assert m["clip_ratio_dual"].item() == approx(1 / 4)
    assert m["ratio_mean"].item() == approx((1.5 + 0.5 + 4.0 + 1.0) / 4)
    assert loss.item() == approx((-1.28 + 0.8 + 3.0 - 1.0) / 4)
    assert m["kl"].item() == 0.0


def test_asymmetric_clip_range_is_configurable():
    lp = torch.tensor([[math.log(1.5)], [math.log(0.5)]])
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 1)
    loss, _ = grpo_loss(lp, torch.zeros(2, 1), adv, mask, clip_low=0.1, clip_high=0.4, kl_coef=0.0)
    assert loss.item() == approx((-1.4 + 0.9) / 2)


# ---------------------------------------------------------------- aggregation


def _two_turns():
    """Row 0: A = 1 on 3 tokens; row 1: A = -0.5 on 1 token (after a prompt token); on-policy, so l = -A."""
    lp = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-0.7, -1.2, -0.1, -0.9]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 0, 0]])
    return lp, lp.clone(), torch.tensor([1.0, -0.5]), mask


@pytest.mark.parametrize(
    "aggregation,norm_len,expected",
    [
        ("token_mean", None, (-1.0 * 3 + 0.5) / 4),  # sum over all tokens / total tokens
        ("seq_mean_token_mean", None, (-1.0 + 0.5) / 2),  # each row's token mean, then mean over rows
        ("seq_mean_token_sum_norm", None, (-1.0 * 3 + 0.5) / (2 * 4)),  # sum / (rows * T)
        ("seq_mean_token_sum_norm", 10, (-1.0 * 3 + 0.5) / (2 * 10)),  # sum / (rows * norm_len)
    ],
)
def test_aggregations(aggregation, norm_len, expected):
    lp, old, adv, mask = _two_turns()
    loss, m = grpo_loss(lp, old, adv, mask, kl_coef=0.0, aggregation=aggregation, norm_len=norm_len)
    assert loss.item() == approx(expected)
    assert m["pg_loss"].item() == approx(expected)

    # a fully masked padding row is not a sequence: it changes no aggregation
    def pad(t, v):
        return torch.cat([t, torch.full((1,) + t.shape[1:], v, dtype=t.dtype)])

    loss_padded, _ = grpo_loss(
        pad(lp, -1.0),
        pad(old, -1.0),
        pad(adv, 7.0),
        pad(mask, 0),
        kl_coef=0.0,
        aggregation=aggregation,
        norm_len=norm_len,
    )
    assert loss_padded.item() == approx(expected)


def test_kl_term_is_added_per_token_with_its_coefficient():
    lp, old, adv, mask = _two_turns()
    ref = lp + 1.0  # d = ref - lp = 1 everywhere: k3 = e - 2 on every token
    loss, m = grpo_loss(lp, old, adv, mask, ref_logprobs=ref, kl_coef=0.1)
    assert m["kl"].item() == approx(math.e - 2.0)
    assert m["pg_loss"].item() == approx((-3.0 + 0.5) / 4)
    assert loss.item() == approx((-3.0 + 0.5) / 4 + 0.1 * (math.e - 2.0))


def test_kl_coef_zero_ignores_the_reference():
    lp, old, adv, mask = _two_turns()
    lp_a, lp_b = lp.clone().requires_grad_(), lp.clone().requires_grad_()
    loss_a, _ = grpo_loss(lp_a, old, adv, mask, ref_logprobs=None, kl_coef=0.0)
    loss_b, m_b = grpo_loss(lp_b, old, adv, mask, ref_logprobs=lp - 3.0, kl_coef=0.0)
    loss_a.backward()
    loss_b.backward()
    assert loss_a.item() == loss_b.item()
    assert torch.equal(lp_a.grad, lp_b.grad)
    assert m_b["kl"].item() > 0  # still reported for monitoring
    with pytest.raises(ValueError, match="needs ref_logprobs"):
        grpo_loss(lp, old, adv, mask, ref_logprobs=None, kl_coef=0.001)


def test_on_policy_gradient_is_minus_advantage_over_token_count():
    lp, _, adv, mask = _two_turns()
    lp = lp.requires_grad_()
    loss, m = grpo_loss(lp, lp.detach(), adv, mask, kl_coef=0.0)
    loss.backward()
    # ratio = 1 and d ratio / d logprob = 1: grad = -A_i / N_tok on loss tokens (N_tok = 4), 0 elsewhere
    expected = [-0.25, -0.25, -0.25, 0.0, 0.0, 0.125, 0.0, 0.0]
    assert lp.grad.flatten().tolist() == approx(expected)
    assert m["ratio_mean"].item() == 1.0 and m["clip_ratio"].item() == 0.0


def test_on_policy_gradient_through_a_model_is_the_reinforce_gradient():
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(5, 3, generator=g, requires_grad=True)  # tiny "policy": logits = x @ W
    x = torch.randn(2, 4, 5, generator=g)
    tokens = torch.tensor([[0, 2, 1, 1], [2, 2, 0, 1]])
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    adv = torch.tensor([0.7, -1.3])

    def logprobs():
        return torch.log_softmax(x @ weight, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    loss, _ = grpo_loss(logprobs(), logprobs().detach(), adv, mask, kl_coef=0.0)
    (grad,) = torch.autograd.grad(loss, weight)
    reinforce = -(adv[:, None] * logprobs() * mask).sum() / mask.sum()  # -mean_tokens A grad log pi
    (expected,) = torch.autograd.grad(reinforce, weight)
    assert torch.allclose(grad, expected, atol=1e-6)


# ---------------------------------------------------------------- micro-batching and masking


def _random_batch(seed: int = 0, rows: int = 6, cols: int = 7):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(rows, cols, generator=g) * 3
    lp = old + torch.randn(rows, cols, generator=g) * 0.4  # spread so that some tokens are clipped
    ref = old + torch.randn(rows, cols, generator=g) * 0.2
    mask = (torch.rand(rows, cols, generator=g) < 0.6).long()
    mask[3] = 0  # one row without loss tokens
    mask[0, 0] = 1
    adv = torch.randn(rows, generator=g)
    return lp, old, ref, mask, adv


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_micro_batches_with_global_counts_match_the_whole_batch(aggregation):
    lp, old, ref, mask, adv = _random_batch()
    kwargs = dict(kl_coef=0.05, aggregation=aggregation, norm_len=7)
    whole = lp.clone().requires_grad_()
    loss, metrics = grpo_loss(whole, old, adv, mask, ref_logprobs=ref, **kwargs)
    loss.backward()
    assert 0 < metrics["clip_ratio"].item() < 1  # the batch exercises clipping

    num_tokens = float(mask.sum())
    num_sequences = float(mask.any(dim=1).sum())
    part = lp.clone().requires_grad_()
    total, summed = 0.0, {}
    for rows in (slice(0, 2), slice(2, 6)):
        micro_loss, micro_metrics = grpo_loss(
            part[rows],
            old[rows],
            adv[rows],
            mask[rows],
            ref_logprobs=ref[rows],
            num_tokens=num_tokens,
            num_sequences=num_sequences,
            **kwargs,
        )
        micro_loss.backward()
        total += micro_loss.item()
        for key, value in micro_metrics.items():
            summed[key] = summed.get(key, 0.0) + value.item()
    assert total == approx(loss.item())
    assert torch.allclose(part.grad, whole.grad, atol=1e-7)
    for key, value in metrics.items():
        assert summed[key] == approx(value.item()), key


def test_masked_positions_contribute_exactly_zero():
    lp, old, ref, mask, adv = _random_batch(seed=3)
    clean = lp.clone().requires_grad_()
    loss, metrics = grpo_loss(clean, old, adv, mask, ref_logprobs=ref, kl_coef=0.1)
    loss.backward()
    assert (clean.grad[mask == 0] == 0).all()
    assert (clean.grad[mask == 1] != 0).any()

    masked = mask == 0
    junk = torch.full_like(lp, float("nan"))
    junk[0::2] = float("inf")
    dirty = torch.where(masked, junk, lp).requires_grad_()
    loss_dirty, metrics_dirty = grpo_loss(
        dirty,
        torch.where(masked, -junk, old),
        adv,
        mask,
        ref_logprobs=torch.where(masked, 1e4, ref),
        kl_coef=0.1,
    )
    loss_dirty.backward()
    assert loss_dirty.item() == loss.item()
    assert torch.equal(dirty.grad, clean.grad)
    for key in metrics:
        assert metrics_dirty[key].item() == metrics[key].item(), key


def test_all_masked_batch_gives_zero_loss_and_zero_gradient():
    lp = torch.randn(2, 3, requires_grad=True)
    loss, metrics = grpo_loss(lp, lp.detach(), torch.ones(2), torch.zeros(2, 3), ref_logprobs=lp.detach())
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(lp.grad, torch.zeros(2, 3))
    assert all(torch.isfinite(v) for v in metrics.values())


def test_diverged_ratio_stays_finite():
    lp = torch.tensor([[60.0]], requires_grad=True)  # exp(60) overflows float32 without the clamp
    adv, mask = torch.tensor([-1.0]), torch.ones(1, 1)
    loss, _ = grpo_loss(lp, torch.zeros(1, 1), adv, mask, dual_clip=None, kl_coef=0.0)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(lp.grad).all()


def test_bad_inputs_raise_clear_errors():
    lp, old, adv, mask = _two_turns()
    with pytest.raises(ValueError, match="'token_mean', 'seq_mean_token_mean', 'seq_mean_token_sum_norm'"):
        grpo_loss(lp, old, adv, mask, kl_coef=0.0, aggregation="mean")
    with pytest.raises(ValueError, match="advantages must be"):
        grpo_loss(lp, old, adv[:1], mask, kl_coef=0.0)
    with pytest.raises(ValueError, match="old_logprobs must have the shape"):
        grpo_loss(lp, old[:, :2], adv, mask, kl_coef=0.0)
    with pytest.raises(ValueError, match="mask must hold only 0 and 1"):
        grpo_loss(lp, old, adv, mask * 0.5, kl_coef=0.0)
    with pytest.raises(ValueError, match="dual_clip"):
        grpo_loss(lp, old, adv, mask, kl_coef=0.0, dual_clip=1.0)
    with pytest.raises(ValueError, match="clip_low"):
        grpo_loss(lp, old, adv, mask, kl_coef=0.0, clip_low=1.0)
    with pytest.raises(ValueError, match="num_tokens"):
        grpo_loss(lp, old, adv, mask, kl_coef=0.0, num_tokens=0)
    with pytest.raises(ValueError, match="norm_len"):
        grpo_loss(lp, old, adv, mask, kl_coef=0.0, aggregation="seq_mean_token_sum_norm", norm_len=0)


# ---------------------------------------------------------------- helpers


def test_masked_mean():
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert masked_mean(x, mask).item() == approx((1 + 2 + 4 + 6) / 4)
    assert masked_mean(x, mask, denom=2.0).item() == approx((1 + 2 + 4 + 6) / 2)
    assert masked_mean(x, mask, dim=1).tolist() == approx([1.5, 5.0])
    assert masked_mean(x, torch.zeros(2, 3)).item() == 0.0


def test_entropy_from_logits():
    inf = float("inf")
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [math.log(0.7), math.log(0.3), -inf, -inf]]])
    logits.requires_grad_()
    entropy = entropy_from_logits(logits)
    assert entropy.shape == (1, 2)
    assert entropy.flatten().tolist() == approx([math.log(4.0), -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))])
    entropy.sum().backward()
    assert torch.isfinite(logits.grad).all()
    # a uniform distribution is a maximum: its gradient is zero
    assert logits.grad[0, 0].abs().max().item() < 1e-6


def test_batch_std_of_a_batch_spanning_processes_is_used_when_given():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    local = group_advantages(rewards, 2, "batch")
    given = group_advantages(rewards, 2, "batch", batch_std=2.0)
    centred = torch.tensor([0.5, -0.5, 0.0, 0.0])
    assert torch.allclose(given, centred / (2.0 + 1e-6))
    assert torch.allclose(local, centred / (rewards.std() + 1e-6))
