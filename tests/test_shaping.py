"""Shaped rewards (atom.env.shaping), stop strings, cut-off turns and GRPO's own prompts (issue 20)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from atom.config import ConfigError, load_config
from atom.env.episode import EpisodeResult, EpisodeStats
from atom.env.rollout import Observation, Reply, Trajectory, Turn
from atom.env.shaping import RewardConfig, batch_rewards, reward_terms, shaped_reward
from atom.policy.hf import HFPolicy, SamplingConfig, _StopAtStrings


def _trajectory(reward=1.0, ops=None, invalid=None, cut=(False,), stored=50, context=200, facts=0.5) -> Trajectory:
    stats = EpisodeStats(ops=Counter(ops or {}), invalid=Counter(invalid or {}), stored_chars=stored,
                         context_chars=context)  # fmt: skip
    result = EpisodeResult("s", ["x"], [reward], [reward], reward, stats, facts_stored=facts, facts_retrieved=None)
    turns = [Turn("read", [], Reply("", cut_off=c)) for c in cut]
    return Trajectory("s", turns, result)


def test_terms_and_total_match_a_hand_computed_episode():
    traj = _trajectory(1.0, {"create": 2, "read": 1}, {"update": 1}, (False, True, False, False), 50, 200, 0.5)
    terms = reward_terms(traj)
    assert terms == {"outcome": 1.0, "validity": 0.75, "invalid": 1.0, "cutoff": 0.25, "compression": 0.75,
                     "memory": 0.5}  # fmt: skip
    cfg = RewardConfig(outcome=1.0, validity=0.2, invalid_penalty=0.3, cutoff=0.4, compression=0.05, memory=0.5)
    assert shaped_reward(terms, cfg) == pytest.approx(1.0 + 0.2 * 0.75 - 0.3 - 0.4 * 0.25 + 0.05 * 0.75 + 0.25)


def test_defaults_are_the_outcome_alone_and_the_penalty_is_bounded():
    trajs = [_trajectory(r, invalid={"update": 9}, cut=(True,), facts=None) for r in (0.0, 1.0, 0.5)]
    rewards, means = batch_rewards(trajs, RewardConfig())
    assert rewards == [0.0, 1.0, 0.5] and not RewardConfig().shaped
    assert means["invalid"] == 9.0 and means["cutoff"] == 1.0 and means["memory"] == 0.0
    assert reward_terms(_trajectory(ops={}, invalid={}))["validity"] == 1.0  # no action written: nothing invalid
    heavy = RewardConfig(outcome=1.0, invalid_penalty=0.5)
    assert batch_rewards(trajs, heavy)[0] == [-1.0, 0.0, -0.5]  # 9 invalid actions cost at most 1
    assert reward_terms(_trajectory(stored=900, context=200))["compression"] == 0.0  # clipped to [0, 1]


def test_the_gate_pays_the_outcome_only_for_clean_episodes():
    clean = _trajectory(1.0, invalid={}, cut=(False, False), facts=1.0)
    junk = _trajectory(1.0, invalid={"read": 1}, cut=(False,), facts=1.0)
    cut = _trajectory(1.0, invalid={}, cut=(False, True), facts=1.0)
    cfg = RewardConfig(gate=True, memory=0.5)
    assert batch_rewards([clean, junk, cut], cfg)[0] == [1.5, 0.5, 0.5]  # other terms are not gated
    assert batch_rewards([clean, junk, cut], RewardConfig())[0] == [1.0, 1.0, 1.0]
    assert RewardConfig(gate=True).shaped
    with pytest.raises(ConfigError, match=r"grpo\.reward\.gate"):
        load_config(None, ["grpo.reward.gate=maybe"])


def test_a_negative_weight_or_an_unknown_term_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match=r"grpo\.reward\.memory"):
        load_config(None, ["grpo.reward.memory=-1"])
    with pytest.raises(ConfigError, match="invalid_penalty"):  # the valid keys are named
        load_config(None, ["grpo.reward.penalty=1"])


class _CharTokenizer:
    """Decodes ids 0..25 as a..z (enough for the stop criterion, which only decodes)."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + int(i) % 26) for i in ids)


def test_stop_criterion_stops_each_row_at_its_first_stop_string_never_on_the_prompt():
    tok = _CharTokenizer()
    ids = lambda s: [ord(c) - 97 for c in s]  # noqa: E731
    prompt = torch.tensor([ids("xxend"), ids("aaaaa")])  # row 0's prompt ends with the stop string
    stop = _StopAtStrings(tok, ["end"], prompt_width=5, batch=2)
    seq = prompt
    done = []
    for a, b in zip("qenddd", "xyzend"):
        seq = torch.cat([seq, torch.tensor([[ids(a)[0]], [ids(b)[0]]])], dim=1)
        done.append(stop(seq, None).tolist())
    assert stop.lengths == [4, 6]  # "qend" and "xyzend": the token completing the string ends the reply
    assert done[2] == [False, False] and done[3] == [True, False] and done[5] == [True, True]


@pytest.mark.slow
def test_generation_stops_at_a_stop_string_and_a_reply_cut_by_the_limit_is_marked(tiny_pipeline):
    p, model = tiny_pipeline()
    msgs = [Observation([{"role": "user", "content": f"prompt {i}"}]) for i in range(6)]
    # A random tiny model emits arbitrary tokens: "e" completes in most of them, so most replies stop early.
    stopped = HFPolicy(model, p.tokenizer, SamplingConfig(max_new_tokens=24, seed=3, stop_strings=["e"])).act(msgs)
    for r in stopped:
        text = p.tokenizer.decode(r.completion_ids, skip_special_tokens=True)
        before = p.tokenizer.decode(r.completion_ids[:-1], skip_special_tokens=True)
        if "e" in text:  # cut right at the token that completes the stop string, which is kept
            assert "e" not in before and not r.cut_off
        assert len(r.logprobs) == len(r.completion_ids)
    assert sum("e" in r.text for r in stopped) >= 3
    assert all(len(r.completion_ids) < 24 for r in stopped if "e" in r.text)
    plain = HFPolicy(model, p.tokenizer, SamplingConfig(max_new_tokens=4, seed=3, stop_strings=[])).act(msgs)
    eos = set(HFPolicy(model, p.tokenizer, SamplingConfig()).eos_ids)
    for r in plain:  # no stop string: cut off exactly when the limit ended it before an end-of-sequence token
        assert r.cut_off == (len(r.completion_ids) == 4 and int(r.completion_ids[-1]) not in eos)
    assert any(r.cut_off for r in plain)


def test_grpo_draws_its_prompts_from_a_world_sft_never_saw(tiny_pipeline):
    p, _ = tiny_pipeline("data.synthetic.val_seed=1", "data.synthetic.rl_seed=2", "data.synthetic.rl_records=6")
    data = p.data
    assert sum(len(s.questions) for s in data.rl_samples) == 6  # rl_records questions, grouped into samples
    names = lambda samples: {d.title for s in samples for d in s.documents}  # noqa: E731
    assert not names(data.rl_samples) & names(data.train_samples)  # entities of a third world
    assert not names(data.rl_samples) & names(data.val_samples)
    batch = next(iter(data.train_dataloader()))
    assert {s.id for s in batch} <= {s.id for s in data.rl_samples}
    with pytest.raises(ConfigError, match="rl_seed"):
        load_config(None, ["data.synthetic.rl_seed=0"])  # SFT's own world


@pytest.mark.slow
def test_several_updates_per_batch_really_clip_and_every_reward_term_is_logged(tmp_path, monkeypatch):
    """After the first of 4 optimizer steps on one rollout batch (lr 2e-2), the policy is off pi_old, so the PPO
    clip binds on some tokens: clip_ratio > 0. The sanity run (benchmarks/grpo_sanity.py) checks the sign of the
    update, not clipping; this checks clipping."""
    from atom import pipeline
    from atom.train.grpo import GRPOModule

    from .test_grpo import TINY

    monkeypatch.setattr(
        Trajectory, "reward", property(lambda self: float(int(self.turns[0].reply.completion_ids.sum()) % 2))
    )
    logged: list[dict] = []
    log_dict = GRPOModule.log_dict
    monkeypatch.setattr(GRPOModule, "log_dict", lambda self, d, **kw: logged.append(dict(d)) or log_dict(self, d, **kw))
    shaping = ["grpo.reward.memory=0.5", "grpo.reward.invalid_penalty=0.1", "grpo.reward.cutoff=0.2"]
    overrides = TINY + [f"run.out_dir={tmp_path}", "grpo.max_steps=1", "grpo.updates_per_batch=4", "grpo.lr=2e-2"]
    overrides += shaping
    p = pipeline.build(load_config(None, overrides))
    pipeline.grpo(pipeline.load_policy(p), p)
    step = next(d for d in logged if "grpo/reward" in d)
    assert step["grpo/optimizer_steps"] == 4
    assert "grpo/logp_diff" not in step  # old_logprobs=sampler: the sampler's log-probs are pi_old as they are
    assert step["grpo/clip_ratio"] > 0, step
    for term in ("outcome", "validity", "invalid", "cutoff", "compression", "memory"):
        assert f"grpo/reward_{term}" in step
    # the random tiny model's replies run to the 6-token limit: every turn is cut, and the shaped total says so
    assert step["grpo/reward_cutoff"] == pytest.approx(1.0)
    expected = step["grpo/reward_outcome"] + 0.5 * step["grpo/reward_memory"] - 0.2 * step["grpo/reward_cutoff"]
    assert step["grpo/reward"] <= expected + 1e-6  # minus the (bounded) invalid penalty


@pytest.mark.slow
def test_pi_old_can_come_from_the_trainers_forward_and_the_gap_is_logged(tmp_path, monkeypatch):
    """bf16-mixed: the log-probs recorded while sampling differ from the update's forward (the autocast decode
    and the full forward round differently; docs/measurements/bench_cpu_precision.json: mean 0.034, max 0.20 per
    token on SmolLM2). grpo.old_logprobs=trainer takes pi_old from a no-grad forward of the trainer in the
    update's precision; grpo/logp_diff reports the per-token gap it replaced."""
    from atom import pipeline
    from atom.train.grpo import GRPOModule

    from .test_grpo import TINY

    monkeypatch.setattr(
        Trajectory, "reward", property(lambda self: float(int(self.turns[0].reply.completion_ids.sum()) % 2))
    )
    logged: list[dict] = []
    log_dict = GRPOModule.log_dict
    monkeypatch.setattr(GRPOModule, "log_dict", lambda self, d, **kw: logged.append(dict(d)) or log_dict(self, d, **kw))
    overrides = TINY + [f"run.out_dir={tmp_path}", "grpo.max_steps=1", "trainer.precision=bf16-mixed",
                        "grpo.old_logprobs=trainer"]  # fmt: skip
    p = pipeline.build(load_config(None, overrides))
    pipeline.grpo(pipeline.load_policy(p), p)
    step = next(d for d in logged if "grpo/reward" in d)
    assert step["grpo/ratio_mean"] == pytest.approx(1.0, abs=1e-4)  # on-policy at the first update
    assert step["grpo/logp_diff"] > 0  # the sampler's bf16 log-probs differed from the trainer's
