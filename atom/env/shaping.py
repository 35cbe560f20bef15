"""Shaped episode rewards for GRPO: the outcome plus terms that score the *memory policy*, each with its weight.

The outcome alone (EM on the questions) says nothing about how the memory was kept, so GRPO on it is free to
write junk the reward never sees: on the calibrated task it learned to copy the prompt's example actions (invalid)
and to write replies that the token limit cut (docs/measurements/synthetic_grpo.md). Mem-alpha (arXiv 2509.25911)
trains its memory policy on QA + tool-call validity + compression + judged memory quality; atom's terms follow it,
with a verifiable memory-quality term in place of the judged one. Every term is computed per episode and bounded
(dense per-turn format rewards are known to be hacked), and each is logged apart (``grpo/reward_<term>``, the
unweighted mean over the rollout batch) so a curve shows which term moved.

    R = outcome * s * g  +  validity * v  -  min(1, invalid_penalty * n_invalid)  -  cutoff * c
        + compression * (1 - stored_chars / context_chars)  +  memory * m

- s: ``agent.reward``'s score of the episode (SQuAD EM, F1 or the release's), in [0, 1];
- g: 1, or with ``gate`` 1 only for a clean episode (no invalid action, no cut-off turn) and 0 otherwise: a
  correct answer reached through junk earns nothing, and the worst an episode can score is 0, not a penalty
  that makes acting at all a risk (the penalties arm of docs/measurements/memory_rl.md learned to act less);
- v: share of the episode's actions that were valid (executed over executed + invalid; 1 when it wrote none);
- n_invalid: invalid actions of the episode (wrong id, wrong phase, malformed, unknown tag), all kinds;
- c: share of the episode's turns cut off at ``sampling.max_new_tokens`` without an end-of-sequence token or a
  stop string (a reply the limit cut mid-action);
- compression: stored characters at the end of reading over the context's characters, as 1 - ratio clipped to
  [0, 1]: an empty store scores 1, so it is meant with a small weight next to the outcome (Mem-alpha: 0.05);
- m: share of the gold supporting facts the store holds when reading ends (``EpisodeResult.facts_stored``; the
  synthetic task and the datasets with supporting sentences have them, 0 elsewhere).

Defaults (outcome 1, the rest 0) are exactly the outcome reward: ``grpo.reward`` changes nothing unless set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from atom.env.rollout import Trajectory

TERMS = ("outcome", "validity", "invalid", "cutoff", "compression", "memory")


@dataclass
class RewardConfig:
    outcome: float = 1.0  # weight of agent.reward's score (EM / F1 / release) of the episode, in [0, 1]
    validity: float = 0.0  # weight of the share of valid actions (executed / (executed + invalid); 1 if none)
    invalid_penalty: float = 0.0  # subtracted per invalid action, at most 1 in total per episode
    cutoff: float = 0.0  # weight of the (subtracted) share of turns cut at max_new_tokens without EOS/stop string
    compression: float = 0.0  # weight of 1 - stored chars / context chars (clipped to [0, 1]); keep it small
    memory: float = 0.0  # weight of the share of gold supporting facts held by the store when reading ends
    gate: bool = False  # the outcome counts only in a clean episode (no invalid action, no cut-off turn)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "gate":
                if not isinstance(value, bool):
                    raise ValueError(f"grpo.reward.gate must be true or false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"grpo.reward.{f.name} must be a number >= 0, got {value!r}")

    @property
    def shaped(self) -> bool:
        """Any term but the outcome has weight (the total then differs from the outcome)."""
        return any(getattr(self, f.name) for f in fields(self) if f.name != "outcome") or self.outcome != 1.0


def reward_terms(traj: Trajectory) -> dict[str, float]:
    """The unweighted terms of one episode (module docstring), keyed by ``TERMS``."""
    result, stats = traj.result, traj.result.stats
    executed, invalid = sum(stats.ops.values()), sum(stats.invalid.values())
    turns = [t for t in traj.turns if t.reply is not None]
    cut = sum(bool(t.reply.cut_off) for t in turns)
    context = stats.context_chars
    compression = 1.0 - stats.stored_chars / context if context else 0.0
    return {
        "outcome": float(traj.reward),
        "validity": executed / (executed + invalid) if executed + invalid else 1.0,
        "invalid": float(invalid),
        "cutoff": cut / len(turns) if turns else 0.0,
        "compression": min(1.0, max(0.0, compression)),
        "memory": float(result.facts_stored or 0.0),
    }


def shaped_reward(terms: dict[str, float], cfg: RewardConfig) -> float:
    """The weighted total R of one episode's ``terms``."""
    clean = terms["invalid"] == 0 and terms["cutoff"] == 0
    return (
        cfg.outcome * terms["outcome"] * (1.0 if clean or not cfg.gate else 0.0)
        + cfg.validity * terms["validity"]
        - min(1.0, cfg.invalid_penalty * terms["invalid"])
        - cfg.cutoff * terms["cutoff"]
        + cfg.compression * terms["compression"]
        + cfg.memory * terms["memory"]
    )


def batch_rewards(trajectories: Sequence[Trajectory], cfg: RewardConfig) -> tuple[list[float], dict[str, float]]:
    """Each episode's shaped reward, and each term's mean over the batch (unweighted; for logging)."""
    terms = [reward_terms(t) for t in trajectories]
    means = {k: sum(t[k] for t in terms) / len(terms) if terms else 0.0 for k in TERMS}
    return [shaped_reward(t, cfg) for t in terms], means
