"""GRPO for memory agents, as AtomMem trains it (after the SFT cold start), with Lightning manual optimization.

Objective, per rollout step (each symbol -> ``GRPOConfig`` field):

- Sample ``prompts_per_step`` long-context samples (``AtomDataModule.train_dataloader``: a seeded schedule, so a
  resumed run sees the same order; each rank gets its share of whole groups) and roll out ``group_size`` = G
  episodes per sample with the batched engine at ``sampling.temperature`` (1.0).
- Reward R_i per episode: ``reward`` weights the outcome (``agent.reward``: mean EM over its questions) and the
  memory-policy terms of ``atom.env.shaping`` (validity, invalid actions, cut-off turns, compression, gold facts
  stored); the defaults are the outcome alone, in [0, 1]. Advantage A_i = R_i - mean_group(R)
  (``std_scale="none"``, AtomMem/Dr. GRPO; ``"group"``/``"batch"`` divide by a std as TRL does). Groups whose
  rewards are all equal carry no signal and are dropped when ``drop_zero_std``.
- Every turn of an episode is its own sequence; A_i is applied to every model-generated token of every turn of
  episode i (MemAgent multi-conversation credit assignment). Environment tokens (prompts: chunks, memories,
  instructions) have mask 0 and never enter the loss; the mask is the one built during generation.
- Per token: r = pi_theta / pi_old (pi_old: ``old_logprobs`` = sampler, the log-probs recorded while generating,
  or trainer, one no-grad forward of the policy before the update, in its precision: under bf16 autocast the two
  differ by ~0.03 per token on average, up to ~0.2 (``grpo/logp_diff`` logs the gap replaced)),
  L = -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A) with dual clip ``dual_clip`` for A < 0, plus
  ``kl_coef`` * k3(pi_theta || pi_ref) where k3 = exp(ref - lp) - (ref - lp) - 1 and pi_ref is the initial policy:
  with LoRA the base model with adapters disabled (no second copy), otherwise a frozen copy.
- Aggregation ``aggregation``: "token_mean" divides the sum over all loss tokens of the optimizer step's batch by
  their GLOBAL count (all micro-batches, all ranks), so micro-batching and DDP do not change the gradient.
- The rollout batch's sequences are split into ``updates_per_batch`` mini-batches, one AdamW step each (lr
  ``lr``, linear warm-up ``warmup_steps``, ``weight_decay``), gradients accumulated over micro-batches of
  ``micro_batch_size`` sequences of similar length (``micro_batches``: less padding, the same gradient) and
  clipped to ``grad_clip`` by hand (Trainer-level clipping is not allowed with manual optimization).
  ``trainer.global_step`` therefore counts optimizer steps, not rollout steps.
- A micro-batch's common prompt prefix (the system prompt; within a group also the questions) runs once and
  every row attends to its cached keys and values (``share_prefix``; the same log-probs and gradient as whole
  sequences, at a fraction of the tokens).

Lightning view: one epoch = one rollout step (a one-batch epoch), so checkpoints (``last.ckpt`` every rollout
step), resume and validation (greedy, every ``val_every`` rollout steps) line up with rollout steps. Under FSDP
the policy is sharded and ranks make different numbers of ``generate`` calls, so generation (rollouts and
validation) runs on an unsharded copy of the policy per rank, in the compute dtype, refreshed by streaming the
sharded weights after the rollout step's optimizer steps; it is not a submodule, so no checkpoint holds it.

Rollout engine ``rollout_engine``: ``hf`` (``HFPolicy``: transformers ``generate`` records log_softmax(logits / T)
while sampling, so its log-probs are pi_old as they are) or ``vllm`` (``atom.policy.vllm_engine``: a colocated vLLM
engine, weights streamed in after every optimizer step). vLLM's log-probs are the raw model's, before temperature:
they equal pi_old only at T = 1, and then only up to kernel numerics. The rule: with an engine whose log-probs are
raw, pi_old always comes from the trainer's own forward (one extra no-grad forward over the rollout batch, at the
sampling temperature), and ``grpo/logp_diff`` logs the mean |engine - trainer| log-prob gap at T = 1 per token
(a growing gap means the engine and the trainer no longer hold the same weights or numerics).

In code, ``GRPOModule.training_step`` is the whole step: ``rollout`` (the engine) -> ``score`` (reward terms once
per episode, shaped rewards, group advantages, kept turn sequences: a ``RolloutBatch``) -> ``_trainer_old_logprobs``
(pi_old, when recomputed) -> ``_update`` (mini-batches, micro-batches, ``grpo_loss``) -> ``step_logs``. The
collectives (global counts, lockstep rounds under FSDP, the batch std, DDP's gradient average) sit behind
``atom.train.ranks``.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from atom.data.longcontext import LongContextSample
from atom.env.rollout import Policy, RolloutEngine, Trajectory
from atom.env.shaping import RewardConfig, reward_terms, shaped_reward
from atom.eval.report import summarize
from atom.policy.factory import make_policy
from atom.policy.hf import SamplingConfig
from atom.policy.vllm_engine import VLLMConfig
from atom.train.batches import (
    TurnSequence,
    micro_batches,
    pad_batch,
    prefix_sharing,
    shared_prefix,
    token_logprobs,
)
from atom.train.losses import (
    AGGREGATIONS,
    STD_SCALES,
    group_advantages,
    grpo_loss,
    zero_std_groups,
)
from atom.train.ranks import Ranks, lockstep
from atom.train.sharding import RankZeroState, is_fsdp, materialize, meta_copy, stream_full_weights
from atom.train.stage import PolicyStage
from atom.train.trainer import clip_grad_norm


@dataclass
class GRPOConfig:
    group_size: int = 8  # G: rollouts per sample
    prompts_per_step: int = 8  # samples per rollout step (split across ranks, groups kept whole)
    max_steps: int = 100  # rollout steps
    updates_per_batch: int = 1  # optimizer steps per rollout batch (mini-batches of its sequences)
    micro_batch_size: int = 4  # sequences per forward/backward (gradient accumulation inside an update)
    lr: float = 1e-6  # AdamW learning rate (paper)
    weight_decay: float = 0.01  # AdamW weight decay (paper)
    warmup_steps: int = 20  # linear lr warm-up in optimizer steps (paper)
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    clip_low: float = 0.2  # PPO ratio lower clip epsilon
    clip_high: float = 0.28  # PPO ratio upper clip epsilon (DAPO clip-higher)
    dual_clip: float = 3.0  # dual-clip constant for negative advantages; 0 = off
    kl_coef: float = 0.001  # k3 KL-to-reference coefficient; 0 = no reference forward at all
    std_scale: str = "none"  # advantage scaling: none (paper) | group | batch
    aggregation: str = "token_mean"  # token_mean (paper) | seq_mean_token_mean | seq_mean_token_sum_norm
    drop_zero_std: bool = False  # drop groups whose rewards are all equal (MemAgent does)
    reward: RewardConfig = field(default_factory=RewardConfig)  # shaped reward terms and weights (env/shaping.py)
    old_logprobs: str = "sampler"  # pi_old: sampler (log-probs recorded while generating) | trainer (a no-grad forward)
    val_every: int = 0  # rollout steps between greedy validations on val samples; 0 = never
    val_samples: int = 8  # validation samples per validation
    checkpoint_every: int = 10  # rollout steps between kept checkpoints (last.ckpt is rewritten every step)
    share_prefix: bool = True  # a micro-batch's common prompt prefix runs once for all its rows (not under FSDP)
    rollout_engine: str = "hf"  # hf: transformers generate | vllm: colocated vLLM engine (CUDA, pip install atom[vllm])
    vllm: VLLMConfig = field(default_factory=VLLMConfig)  # the vLLM engine of rollout_engine=vllm

    def __post_init__(self) -> None:
        if self.std_scale not in STD_SCALES:
            raise ValueError(f"grpo.std_scale must be one of {list(STD_SCALES)}, got '{self.std_scale}'")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"grpo.aggregation must be one of {list(AGGREGATIONS)}, got '{self.aggregation}'")
        for name in ("group_size", "prompts_per_step", "max_steps", "updates_per_batch", "micro_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"grpo.{name} must be > 0, got {getattr(self, name)}")
        if self.old_logprobs not in ("sampler", "trainer"):
            raise ValueError(f"grpo.old_logprobs must be sampler or trainer, got '{self.old_logprobs}'")
        if self.rollout_engine not in ("hf", "vllm"):
            raise ValueError(f"grpo.rollout_engine must be hf or vllm, got '{self.rollout_engine}'")
        if self.group_size < 2:
            raise ValueError(
                f"grpo.group_size must be >= 2, got {self.group_size}: the advantage is a reward minus its group's "
                "mean, so a group of one has advantage 0 and GRPO learns nothing"
            )
        if self.dual_clip and self.dual_clip <= 1:
            raise ValueError(f"grpo.dual_clip must be > 1 (or 0 = off), got {self.dual_clip}")


def turn_sequences(
    trajectories: Sequence[Trajectory], advantages: torch.Tensor, keep: torch.Tensor
) -> list[TurnSequence]:
    """Every turn of every kept trajectory, carrying that trajectory's advantage."""
    out = []
    for traj, adv, k in zip(trajectories, advantages.tolist(), keep.tolist()):
        if not k:
            continue
        for turn in traj.turns:
            if turn.reply.completion_ids is None or len(turn.reply.completion_ids) == 0:
                continue
            out.append(TurnSequence(turn.input_ids, turn.mask, turn.reply.logprobs, adv))
    return out


@dataclass
class RolloutBatch:
    """One rollout step's episodes on this rank, scored: what the update trains on and what the step logs.

    Episodes come group by group (``group_size`` contiguous episodes per sample); ``terms`` are computed once
    per episode and serve the shaped reward, the logged term means and the summary alike.
    """

    trajectories: list[Trajectory]
    terms: list[dict[str, float]]  # each episode's unweighted reward terms (atom.env.shaping.reward_terms)
    rewards: torch.Tensor  # (N,) float: each episode's shaped reward R_i
    advantages: torch.Tensor  # (N,) float: A_i = R_i - mean_group(R) (optionally over a std)
    zero_std: torch.Tensor  # (N / G,) bool: groups whose rewards are all equal (no signal)
    sequences: list[TurnSequence]  # every turn of every kept episode, with its episode's advantage


def score(
    trajectories: list[Trajectory], cfg: GRPOConfig, batch_std: Callable[[torch.Tensor], float | None]
) -> RolloutBatch:
    """Rewards, group advantages and the turn sequences of a rollout batch. ``batch_std(rewards)``: the std of
    every rank's rewards for ``std_scale="batch"`` (None: of these rewards)."""
    terms = [reward_terms(t) for t in trajectories]
    rewards = torch.tensor([shaped_reward(x, cfg.reward) for x in terms], dtype=torch.float)
    std = batch_std(rewards) if cfg.std_scale == "batch" else None
    advantages = group_advantages(rewards, cfg.group_size, cfg.std_scale, batch_std=std)
    zero = zero_std_groups(rewards, cfg.group_size)
    keep = (~zero).repeat_interleave(cfg.group_size) if cfg.drop_zero_std else torch.ones_like(rewards).bool()
    return RolloutBatch(trajectories, terms, rewards, advantages, zero, turn_sequences(trajectories, advantages, keep))


def step_logs(scored: RolloutBatch, summary: dict, group_size: int) -> dict[str, float]:
    """The rollout step's logged figures of its episodes: rewards, groups, completions, memory use."""
    completions = [len(t.reply.completion_ids) for tr in scored.trajectories for t in tr.turns]
    logs = {
        "grpo/reward": float(scored.rewards.mean()),  # the shaped total (the outcome alone with default weights)
        **{f"grpo/reward_{k}": v for k, v in summary["reward_terms"].items()},  # each term unweighted, batch mean
        "grpo/reward_std": float(scored.rewards.view(-1, group_size).std(dim=1, unbiased=False).mean()),
        "grpo/frac_reward_zero_std": float(scored.zero_std.float().mean()),
        "grpo/sequences": float(len(scored.sequences)),
        "grpo/completion_length_mean": sum(completions) / max(len(completions), 1),
        "grpo/completion_length_max": float(max(completions, default=0)),
        "grpo/completion_length_min": float(min(completions, default=0)),
        "grpo/truncated_prompts": summary["truncated_prompts_per_episode"],
        "memory/store_size": summary["mean_store_size"],
        "memory/invalid_actions": summary["invalid_per_episode"],
        "memory/turns_per_episode": summary["llm_calls_per_episode"],  # report: operations per turn
    }
    for op in ("create", "read", "update", "delete"):
        logs[f"memory/{op}_per_episode"] = summary["ops_per_episode"].get(op, 0.0)
        logs[f"memory/{op}_per_turn"] = summary["ops_per_turn"].get(op, 0.0)  # the paper's usage figure
    return logs


class GRPOModule(PolicyStage):
    """The GRPO stage: ``training_step(batch)`` rolls out this rank's prompts and runs the update (see above).

    The KL reference is the adapter-free base under LoRA, else a frozen copy of the starting policy built in
    ``configure_model`` (sharded like the policy under FSDP). Neither it nor the generation copy is a
    registered submodule: checkpoints hold the policy, its optimizer and the loop state only.
    """

    stage = "grpo"

    def __init__(
        self,
        model,
        tokenizer,
        cfg: GRPOConfig,
        sampling: SamplingConfig,
        make_engine: Callable[[Policy], RolloutEngine],
        seed: int = 0,
        max_prompt_tokens: int = 0,
        make_rollout_engine: Callable[[], object] | None = None,
    ):
        super().__init__(model, cfg)
        self.automatic_optimization = False
        self.tokenizer, self.sampling = tokenizer, sampling
        self.make_engine, self.seed = make_engine, seed
        self.max_prompt_tokens = max_prompt_tokens
        # grpo.rollout_engine=vllm: builds this rank's VLLMPolicy on first use (after the process group exists)
        self.make_rollout_engine = make_rollout_engine
        self.rollout_engine = None
        self._hold("ref_model", None)
        self._hold("generation_model", None)
        self.groups = {"total": 0, "mixed": 0}  # GRPO groups of this process's rollout steps, all ranks summed
        self.ranks = Ranks(self)  # the step's collectives (atom.train.ranks)

    # -- models: policy (sharded under FSDP), frozen reference, generation copy ----------------------------------

    def _needs_ref(self) -> bool:
        return self.cfg.kl_coef > 0 and not hasattr(self.model, "disable_adapter")

    def configure_model(self) -> None:
        if not is_fsdp(self.trainer.strategy):
            if self._needs_ref() and self.ref_model is None:  # full fine-tuning: a frozen copy of the start
                self._hold("ref_model", copy.deepcopy(self.model).requires_grad_(False).eval())
            return
        if self.skeleton is not None:
            return
        super().configure_model()  # shards the reference (shard_alongside), then the policy
        if self.make_rollout_engine is None:  # a vLLM engine generates from its own copy of the weights
            strategy = self.trainer.strategy
            gen = materialize(self.skeleton, strategy.root_device, strategy.compute_dtype)
            self._hold("generation_model", gen.requires_grad_(False).eval())

    def shard_alongside(self, source: RankZeroState) -> None:
        if self._needs_ref():  # the starting policy is also the KL reference
            ref = self.trainer.strategy.shard(meta_copy(self.skeleton), source)
            self._hold("ref_model", ref.requires_grad_(False).eval())

    def refresh_generation_model(self) -> None:
        """FSDP: stream the policy's current weights into the generation copy (a collective)."""
        if self.generation_model is not None:
            stream_full_weights(self.model, self.generation_model)

    def on_train_start(self) -> None:
        if self.ref_model is not None and not is_fsdp(self.trainer.strategy):
            self.ref_model.to(self.device)
        self.refresh_generation_model()  # after a resumed checkpoint was loaded into the shards

    def _policy(self, sampling: SamplingConfig):
        if self.make_rollout_engine is not None:  # vLLM: the engine gets the weights of the latest optimizer step
            self.rollout_engine = self.rollout_engine or self.make_rollout_engine()
            self.rollout_engine.sync_weights(self.model, step=self.global_step)
            return make_policy("vllm", sampling, engine=self.rollout_engine)
        model = self.generation_model if self.generation_model is not None else self.model
        return make_policy("hf", sampling, self.tokenizer, self.max_prompt_tokens, model=model)

    def rollout(self, samples: Sequence[LongContextSample], sampling: SamplingConfig, repeats: int):
        """Trajectories of ``samples`` x ``repeats`` and the engine that ran them."""
        engine = self.make_engine(self._policy(sampling))
        return engine.run(samples, repeats=repeats), engine

    # -- the step -----------------------------------------------------------------------------------------------

    def training_step(self, batch: list[LongContextSample], batch_idx: int) -> None:
        """One rollout step: rollout -> rewards and advantages -> pi_old -> updates (batches, loss) -> logs."""
        cfg = self.cfg
        self.ranks.disable_ddp_sync()
        step = self.current_epoch  # the rollout step: one epoch each
        sampling = dataclasses.replace(self.sampling, seed=self.seed + 7919 * step + self.global_rank)
        t0 = time.perf_counter()
        trajectories, engine = self.rollout(batch, sampling, cfg.group_size)
        rollout_s = time.perf_counter() - t0
        if self.rollout_engine is not None:
            self.rollout_engine.sleep()  # frees the engine's GPU memory for the update (grpo.vllm.sleep_level)

        scored = score(trajectories, cfg, self.ranks.std)
        total, mixed = self.ranks.sum(len(scored.zero_std), (~scored.zero_std).sum())
        self.groups["total"] += int(total)
        self.groups["mixed"] += int(mixed)
        recompute = cfg.old_logprobs == "trainer" or getattr(self.rollout_engine, "raw_logprobs", False)
        logp_diff = self._trainer_old_logprobs(scored.sequences) if recompute else None

        t1 = time.perf_counter()
        metrics = self._update(scored.sequences, step)
        self.refresh_generation_model()  # the next rollout (or validation) samples from the updated policy
        update_s = time.perf_counter() - t1

        logs = step_logs(scored, summarize(trajectories, rollout_s, terms=scored.terms), cfg.group_size)
        logs |= {
            "time/rollout": rollout_s,
            "time/update": update_s,
            "time/rollout_tokens_per_s": engine.stats.completion_tokens / max(rollout_s, 1e-9),
            "rollout_step": float(step + 1),
            **metrics,
        }
        if logp_diff is not None:
            logs["grpo/logp_diff"] = logp_diff
        # Means over ranks (each rank's scalars describe its own share of the rollout batch).
        self.log_dict(
            {k: float(v) for k, v in logs.items()}, on_step=True, batch_size=1, sync_dist=self.trainer.world_size > 1
        )
        self.log("reward", float(scored.rewards.mean()), prog_bar=True, logger=False, batch_size=1)

    @torch.no_grad()
    def _trainer_old_logprobs(self, seqs: list[TurnSequence]) -> float:
        """Raw-log-prob engines (vLLM): replace each sequence's old log-probs by the trainer's at the sampling
        temperature; return the mean per-token |engine - trainer| gap at T = 1 (``grpo/logp_diff``)."""
        mb, t = self.cfg.micro_batch_size, self.sampling.temperature
        micros = [seqs[i : i + mb] for i in range(0, len(seqs), mb)]
        gap, count = 0.0, 0
        for micro, real in lockstep(micros, self.ranks.rounds(len(micros)), self.tokenizer.eos_token_id):
            b = self._batch(micro)
            raw, _ = token_logprobs(self.model, b, 1.0)
            tempered = raw if t in (0.0, 1.0) else token_logprobs(self.model, b, t)[0]
            if not real:
                continue
            mask = b["mask"].bool()
            gap += float(((raw - b["old_logprobs"]).abs() * mask).sum())
            count += int(mask.sum())
            for row, seq in enumerate(micro):
                seq.old_logprobs = tempered[row][mask[row]].float().cpu()
        return gap / max(count, 1)

    def _update(self, seqs: list[TurnSequence], step: int) -> dict[str, float]:
        """``updates_per_batch`` optimizer steps over the rollout batch's sequences; returns mean metrics."""
        cfg = self.cfg
        opt = self.optimizers()
        sched = self.lr_schedulers()
        order = list(range(len(seqs)))
        random.Random(self.seed + step).shuffle(order)
        minibatches = [order[i :: cfg.updates_per_batch] for i in range(cfg.updates_per_batch)]
        totals: dict[str, float] = {}
        count = 0
        for mb in minibatches:
            # token_mean divides by the global loss-token count; DDP and FSDP average the ranks' gradients,
            # so each rank divides by the global count over the world size.
            num_tokens, num_seqs = self.ranks.mean(float(sum(seqs[i].mask.sum() for i in mb)), float(len(mb)))
            if num_tokens == 0:
                continue
            opt.zero_grad()
            lengths = [len(seqs[i].input_ids) for i in mb]
            micros = [[seqs[i] for i in micro] for micro in micro_batches(mb, lengths, cfg.micro_batch_size)]
            # Sharded strategies reduce gradients inside every backward: all ranks run as many backwards.
            for micro, real in lockstep(micros, self.ranks.rounds(len(micros)), self.tokenizer.eos_token_id):
                for key, v in self._micro_step(micro, num_tokens, num_seqs, 1.0 if real else 0.0).items():
                    totals[key] = totals.get(key, 0.0) + v
            self.ranks.average_grads(self.model)
            totals["grpo/grad_norm"] = totals.get("grpo/grad_norm", 0.0) + clip_grad_norm(self.model, cfg.grad_clip)
            opt.step()
            sched.step()
            count += 1
        out = {k: v / max(count, 1) for k, v in totals.items()}
        out["grpo/lr"] = sched.get_last_lr()[0]
        out["grpo/optimizer_steps"] = float(count)
        return out

    def _micro_step(self, micro: list[TurnSequence], num_tokens: float, num_seqs: float, weight: float = 1.0):
        """Forward/backward of one micro-batch; ``weight`` 0 runs a no-op backward that keeps ranks in step."""
        cfg = self.cfg
        b = self._batch(micro)
        logprobs, entropy = token_logprobs(self.model, b, self.sampling.temperature, with_entropy=True)
        ref = None
        if cfg.kl_coef > 0:
            with torch.no_grad():
                ref, _ = self._ref_logprobs(b)
        loss, m = grpo_loss(
            logprobs, b["old_logprobs"], b["adv"], b["mask"], ref,
            clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip or None,
            kl_coef=cfg.kl_coef, aggregation=cfg.aggregation, num_tokens=num_tokens, num_sequences=num_seqs,
            norm_len=self.sampling.max_new_tokens,  # Dr. GRPO's constant: the generation cap, not the padding
        )  # fmt: skip
        self.manual_backward(loss * weight)
        if weight == 0.0:
            return {}
        out = {f"grpo/{k}": float(v) for k, v in m.items()}
        out["grpo/loss"] = float(loss.detach())
        out["grpo/entropy"] = float((entropy * b["mask"]).sum()) / num_tokens
        return out

    def _batch(self, micro: list[TurnSequence]) -> dict[str, torch.Tensor]:
        """The micro-batch's padded tensors (``pad_batch``) on this rank's device."""
        padded = pad_batch(micro, self.tokenizer.pad_token_id, self._prefix(micro))
        return {k: v.to(self.device) for k, v in padded.items()}

    def _prefix(self, micro: list[TurnSequence]) -> int:
        """The micro-batch's shared prompt prefix (``grpo.share_prefix``), 0 = plain forward. Not under FSDP:
        FSDP2 frees the gathered weights after each forward, and the prefix forward's backward then fails."""
        if not self.cfg.share_prefix or not prefix_sharing(self.model) or is_fsdp(self.trainer.strategy):
            return 0
        return shared_prefix(micro, minimum=16)

    def _ref_logprobs(self, b: dict[str, torch.Tensor]):
        if self.ref_model is not None:
            return token_logprobs(self.ref_model, b, self.sampling.temperature)
        if hasattr(self.model, "disable_adapter"):  # LoRA: the base model is the reference
            with self.model.disable_adapter():
                return token_logprobs(self.model, b, self.sampling.temperature)
        raise RuntimeError("grpo.kl_coef > 0 needs a reference: LoRA adapters or a frozen reference model")

    def validation_step(self, batch: list[LongContextSample], batch_idx: int) -> None:
        """Greedy episodes on this rank's share of the validation samples; logs EM/F1 over all ranks' samples."""
        trajectories, _ = self.rollout(batch, dataclasses.replace(self.sampling, temperature=0.0), 1)
        keys = ("em", "f1", "release_em", "release_applies")
        summary = summarize(trajectories, 0.0) if trajectories else dict.fromkeys(keys, 0.0)
        n = len(trajectories)
        *sums, count = self.ranks.sum(*(float(summary[k]) * n for k in keys), n, dtype=torch.float64)
        logged = {f"val/{k}": v / max(count, 1) for k, v in zip(keys[:3], sums)}
        if not sums[3]:  # answers not asked boxed: the release scorer is 0 by construction
            del logged["val/release_em"]
        self.log_dict(logged, batch_size=1)
