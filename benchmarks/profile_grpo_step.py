"""Where one GRPO step of the quickstart goes on CPU, and what the update's micro-batching costs.

    python benchmarks/profile_grpo_step.py [--config experiments/quickstart.yaml] [--out ...json]

One rollout step of the config's GRPO (``grpo.prompts_per_step`` samples x ``grpo.group_size`` episodes, the
config's sampling) with the real engine, then the update's pieces on that rollout batch, each timed on its own:

- rollout: generation (``policy.act``), embedding (the batched encode calls), and the rest of the episode logic
  (prompt building, chat template, parsing, store operations) = rollout wall time minus the two;
- update: the policy forward + backward of every micro-batch, the reference forward (``grpo.kl_coef`` > 0), the
  optimizer step; with the micro-batches cut from the rollout batch in shuffled order and every sequence
  computed whole (atom before), length-bucketed, and length-bucketed with the shared prompt prefix run once
  (``GRPOModule`` now: ``micro_batches`` and ``grpo.share_prefix``; the same gradient), side by side in this
  process, the first variant twice (first and last) to show the noise;
- the limit: the raw model's forward (no grad) and forward + backward throughput on dense, unpadded batches of
  the same token count.

Prints a table and writes JSON with tokens/s figures and the ratios that matter (update tokens/s over the raw
forward + backward tokens/s; padded over real tokens).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from atom import pipeline  # noqa: E402
from atom.config import load_config  # noqa: E402
from atom.policy.hf import HFPolicy  # noqa: E402
from atom.train.batches import micro_batches, pad_batch, shared_prefix, token_logprobs  # noqa: E402
from atom.train.grpo import turn_sequences  # noqa: E402
from atom.train.losses import group_advantages, grpo_loss  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def update_pass(model, ref, seqs, micros, cfg, sampling, pad_id, share: bool) -> dict:
    """One optimizer step over ``micros`` (lists of indices into ``seqs``), each piece timed."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-7)
    n_tokens = float(sum(int(s.mask.sum()) for s in seqs))
    fwd_bwd = ref_s = 0.0
    padded = real = 0
    for micro in micros:
        batch = [seqs[i] for i in micro]
        prefix = shared_prefix(batch, minimum=16) if share else 0
        b = pad_batch(batch, pad_id, prefix)
        padded += b["input_ids"].numel() + prefix  # tokens the forward runs over
        real += sum(len(x.input_ids) for x in batch)
        r = None
        t0 = time.perf_counter()
        if ref is not None:
            with torch.no_grad():
                r, _ = token_logprobs(ref, b, sampling.temperature)
        t1 = time.perf_counter()
        lp, _ = token_logprobs(model, b, sampling.temperature, with_entropy=True)
        loss, _ = grpo_loss(
            lp, b["old_logprobs"], b["adv"], b["mask"], r, clip_low=cfg.clip_low, clip_high=cfg.clip_high,
            dual_clip=cfg.dual_clip or None, kl_coef=cfg.kl_coef, aggregation=cfg.aggregation,
            num_tokens=n_tokens, num_sequences=float(len(seqs)), norm_len=sampling.max_new_tokens,
        )  # fmt: skip
        loss.backward()
        ref_s += t1 - t0
        fwd_bwd += time.perf_counter() - t1
    opt_s = timed(opt.step)[1]
    opt.zero_grad()
    return {
        "micro_batches": len(micros), "padded_tokens": padded, "real_tokens": real,
        "padding_overhead": padded / max(real, 1), "policy_fwd_bwd_s": fwd_bwd, "ref_forward_s": ref_s,
        "optimizer_s": opt_s, "update_s": fwd_bwd + ref_s + opt_s,
        "update_tokens_per_s": real / max(fwd_bwd + ref_s + opt_s, 1e-9),
    }  # fmt: skip


def raw_throughput(model, n_tokens: int, seq_len: int, micro: int, vocab: int) -> dict:
    """Dense (unpadded) forward and forward + backward throughput on ``n_tokens`` tokens, in tokens/s."""
    rows = max(n_tokens // seq_len, micro)
    ids = torch.randint(0, vocab, (rows, seq_len))
    fwd = bwd = 0.0
    for start in range(0, rows, micro):
        x = ids[start : start + micro]
        t0 = time.perf_counter()
        with torch.no_grad():
            model(input_ids=x, logits_to_keep=1)
        t1 = time.perf_counter()
        model(input_ids=x, logits_to_keep=1).logits.float().sum().backward()
        fwd, bwd = fwd + t1 - t0, bwd + time.perf_counter() - t1
    model.zero_grad(set_to_none=True)
    tokens = rows * seq_len
    return {"tokens": tokens, "forward_tokens_per_s": tokens / fwd, "fwd_bwd_tokens_per_s": tokens / bwd}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="experiments/quickstart.yaml")
    ap.add_argument("--prompts", type=int, default=2, help="samples in the rollout step (grpo.prompts_per_step)")
    ap.add_argument("--out", default="benchmarks/results/profile_grpo_step.json")
    ap.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = ap.parse_args()
    cfg = load_config(args.config, [*args.overrides, f"grpo.prompts_per_step={args.prompts}", "run.name=profile"])
    p = pipeline.build(cfg)
    model = pipeline.load_policy(p)
    g, s = cfg.grpo, cfg.sampling
    batch = p.data.require("train", "profiling")[: g.prompts_per_step]

    engine = p.engine(HFPolicy(model, p.tokenizer, s, p.max_prompt_tokens(model)))
    trajectories, rollout_s = timed(lambda: engine.run(batch, repeats=g.group_size))
    st = engine.stats
    rollout = {
        "episodes": len(trajectories), "wall_s": rollout_s, "generate_s": st.generate_s, "embed_s": st.embed_s,
        "episode_logic_s": rollout_s - st.generate_s - st.embed_s, "completion_tokens": st.completion_tokens,
        "prompt_tokens": st.prompt_tokens, "generated_tokens_per_s": st.completion_tokens / st.generate_s,
        "lockstep_steps": st.steps,
    }  # fmt: skip

    rewards = torch.tensor([t.reward for t in trajectories])
    adv = group_advantages(rewards, g.group_size)
    if not adv.abs().sum():  # all groups uniform: time the update with the same shapes and a non-zero signal
        adv = torch.linspace(-0.5, 0.5, len(trajectories))
    seqs = turn_sequences(trajectories, adv, torch.ones(len(trajectories), dtype=torch.bool))
    order = list(range(len(seqs)))
    random.Random(0).shuffle(order)
    before = [order[i : i + g.micro_batch_size] for i in range(0, len(order), g.micro_batch_size)]
    after = micro_batches(order, [len(seqs[i].input_ids) for i in order], g.micro_batch_size)

    model.train()
    ref = copy.deepcopy(model).requires_grad_(False).eval() if g.kl_coef > 0 else None
    pad = p.tokenizer.pad_token_id
    update_pass(model, ref, seqs, before[:1], g, s, pad, share=True)  # warm-up (allocator, kernels)
    variants = (
        ("before: shuffled", before, False), ("length_bucketed", after, False),
        ("now: bucketed + shared prefix", after, True), ("before again (noise)", before, False),
    )  # fmt: skip
    updates = {name: update_pass(model, ref, seqs, micros, g, s, pad, share) for name, micros, share in variants}
    now, old = updates["now: bucketed + shared prefix"], updates["before: shuffled"]
    lengths = [len(x.input_ids) for x in seqs]
    real = sum(lengths)
    limit = raw_throughput(model, real, max(1, round(real / len(seqs))), g.micro_batch_size, len(p.tokenizer))

    out = {
        "config": args.config, "overrides": args.overrides, "threads": torch.get_num_threads(),
        "sequences": len(seqs), "mean_sequence_tokens": real / len(seqs), "rollout": rollout,
        "update": updates, "raw_model": limit,
        "ratios": {
            "update_speedup_now_vs_before": old["update_s"] / now["update_s"],
            "update_speedup_bucketing_alone": old["update_s"] / updates["length_bucketed"]["update_s"],
            "noise_before_again_vs_before": updates["before again (noise)"]["update_s"] / old["update_s"],
            "computed_over_real_tokens_before": old["padding_overhead"],
            "computed_over_real_tokens_now": now["padding_overhead"],
            "update_tokens_per_s_before_over_raw_fwd_bwd": old["update_tokens_per_s"] / limit["fwd_bwd_tokens_per_s"],
            "update_tokens_per_s_now_over_raw_fwd_bwd": now["update_tokens_per_s"] / limit["fwd_bwd_tokens_per_s"],
            "generated_tokens_per_s_over_raw_forward": rollout["generated_tokens_per_s"]
            / limit["forward_tokens_per_s"],
            "ref_share_of_update_now": now["ref_forward_s"] / now["update_s"],
            "generate_share_of_rollout": st.generate_s / rollout_s,
            "rollout_share_of_step_now": rollout_s / (rollout_s + now["update_s"]),
            "step_speedup_now_vs_before": (rollout_s + old["update_s"]) / (rollout_s + now["update_s"]),
        },
    }  # fmt: skip
    r = rollout
    print(f"threads {out['threads']}; {len(trajectories)} episodes, {len(seqs)} turns, {real / len(seqs):.0f} tok/turn")
    print(f"rollout {r['wall_s']:.1f} s: generate {r['generate_s']:.1f} s ({r['generated_tokens_per_s']:.1f} tok/s), "
          f"embed {r['embed_s']:.2f} s, episode logic {r['episode_logic_s']:.2f} s")  # fmt: skip
    print("| update | micro-batches | computed/real tokens | policy fwd+bwd s | ref fwd s | optimizer s | tokens/s |")
    print("|---|---|---|---|---|---|---|")
    for name, u in updates.items():
        print(f"| {name} | {u['micro_batches']} | {u['padding_overhead']:.2f} | {u['policy_fwd_bwd_s']:.1f} | "
              f"{u['ref_forward_s']:.1f} | {u['optimizer_s']:.2f} | {u['update_tokens_per_s']:.0f} |")  # fmt: skip
    print(f"raw model: forward {limit['forward_tokens_per_s']:.0f} tok/s, forward+backward "
          f"{limit['fwd_bwd_tokens_per_s']:.0f} tok/s (dense, {limit['tokens']} tokens)")  # fmt: skip
    print(json.dumps(out["ratios"], indent=2))
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
