"""float32 vs bfloat16 autocast on CPU: what ``trainer.precision=bf16-mixed`` buys a policy's generation and update.

    python benchmarks/bench_cpu_precision.py [--config experiments/quickstart.yaml] [--out ...json]

The model is the config's policy with float32 weights (``model.dtype`` auto on CPU). Its real prompts and
completions are those of the oracle on the config's training samples (the SFT demonstrations: chat template +
reply), so every figure is on the quickstart's own sequences. Side by side in one process, float32 and
``torch.autocast("cpu", torch.bfloat16)`` (what Lightning's bf16-mixed precision plugin and ``HFPolicy(autocast=)``
run), each twice in alternating order so the spread shows the noise:

- prefill: a no-grad forward over a batch of prompts (tokens/s);
- generation: ``HFPolicy.generate_ids`` on the same prompts, sampling at T = 1 a fixed number of new tokens
  (EOS suppressed), so both precisions decode the same number of steps (generated tokens/s);
- update: forward + backward of the completion tokens' log-probs as GRPO's update computes them (length-bucketed
  micro-batches of ``grpo.micro_batch_size``, the shared prompt prefix run once, logits only on completions),
  in real (unpadded) tokens/s;
- numerics: the per-token gap between the log-probs recorded while sampling and those of a full forward over
  the same tokens, in each precision (what GRPO's ratio sees as pi_old vs pi at its first step); the mean and
  99th percentile over completion tokens of |log p_fp32 - log p_bf16| (what it would see if rollout and update
  ran in different precisions); how often greedy decoding picks the same next token in both.

CPUs with AMX or AVX512-BF16 run bfloat16 matmuls natively; elsewhere autocast can be slower than float32. The
figures are for the machine that ran it (its CPU flags are saved with them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from atom import pipeline  # noqa: E402
from atom.config import load_config  # noqa: E402
from atom.policy.hf import HFPolicy, SamplingConfig, encode_prompt  # noqa: E402
from atom.policy.oracle import OraclePolicy  # noqa: E402
from atom.train.batches import TurnSequence, micro_batches, pad_batch, shared_prefix, token_logprobs  # noqa: E402
from atom.train.trainer import cpu_flags  # noqa: E402


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def padded(rows: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) ids and attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], att[i, : len(r)] = torch.tensor(r), 1
    return {"input_ids": ids, "attention_mask": att}


def seq_logprobs(model, rows: list[list[int]], pad: int) -> torch.Tensor:
    """(B, T - 1) log p of each next token (padding positions hold garbage; callers mask)."""
    b = padded(rows, pad)
    logits = model(**b).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, b["input_ids"][:, 1:, None]).squeeze(-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="experiments/quickstart.yaml")
    ap.add_argument("--prompts", type=int, default=8, help="prompts in the generation batch")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens generated per prompt")
    ap.add_argument("--update-sequences", type=int, default=16, help="sequences in the timed update")
    ap.add_argument("--out", default="benchmarks/results/bench_cpu_precision.json")
    ap.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = ap.parse_args()
    cfg = load_config(args.config, [*args.overrides, "run.name=bench_precision"])
    p = pipeline.build(cfg)
    model = pipeline.load_policy(p).eval()
    if next(model.parameters()).dtype != torch.float32:
        raise SystemExit("this benchmark compares against float32 weights: set model.dtype=float32")
    tok, pad = p.tokenizer, p.tokenizer.pad_token_id

    trajectories = p.engine(OraclePolicy()).run(p.data.require("train", "the benchmark's sequences"))
    turns = [t for tr in trajectories for t in tr.turns]
    prompts = [encode_prompt(tok, t.messages) for t in turns]
    completions = [tok(t.reply.text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in turns]
    gen_prompts = prompts[: args.prompts]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=args.new_tokens, batch_size=args.prompts)
    mb = cfg.grpo.micro_batch_size

    def prefill(bf16: bool) -> float:
        b = padded(gen_prompts, pad)
        t0 = time.perf_counter()
        with torch.no_grad(), autocast(bf16):
            model(**b, logits_to_keep=1)
        return sum(len(x) for x in gen_prompts) / (time.perf_counter() - t0)

    sampled: dict[bool, list] = {}

    def generate(bf16: bool) -> float:
        policy = HFPolicy(model, tok, sampling, autocast=torch.bfloat16 if bf16 else None)
        policy.eos_ids = [-1]  # never stop early: both precisions decode exactly new_tokens steps
        t0 = time.perf_counter()
        sampled[bf16] = policy.generate_ids(gen_prompts)
        return sum(len(r.completion_ids) for r in sampled[bf16]) / (time.perf_counter() - t0)

    def rollout_gap(bf16: bool) -> dict[str, float]:
        """|log-prob recorded while sampling - log-prob of a full forward| in the same precision: the per-token
        mismatch a GRPO ratio sees at its first step (zero in exact arithmetic)."""
        replies = sampled[bf16]
        rows = [r.prompt_ids.tolist() + r.completion_ids.tolist() for r in replies]
        with torch.no_grad(), autocast(bf16):
            full = seq_logprobs(model, rows, pad)
        gaps = torch.cat([
            (full[i, len(r.prompt_ids) - 1 : len(rows[i]) - 1] - r.logprobs).abs() for i, r in enumerate(replies)
        ])  # fmt: skip
        return {"mean_abs": float(gaps.mean()), "p99_abs": float(gaps.quantile(0.99)), "max_abs": float(gaps.max())}

    turn_seqs = [
        TurnSequence(torch.tensor(a + b), torch.tensor([False] * len(a) + [True] * len(b)), torch.zeros(len(b)), 1.0)
        for a, b in zip(prompts, completions)
    ][: args.update_sequences]
    micros = micro_batches(range(len(turn_seqs)), [len(s.input_ids) for s in turn_seqs], mb)

    def update(bf16: bool) -> float:
        """GRPO's update path: length-bucketed micro-batches, the shared prefix run once, logits only where the
        completion is (``token_logprobs``), a token-sum loss, backward."""
        model.train()
        t0 = time.perf_counter()
        for micro in micros:
            batch = [turn_seqs[i] for i in micro]
            b = pad_batch(batch, pad, shared_prefix(batch, minimum=16))
            with autocast(bf16):
                logp, _ = token_logprobs(model, b, 1.0)
            (logp * b["mask"]).sum().backward()
        model.zero_grad(set_to_none=True)
        model.eval()
        return sum(len(s.input_ids) for s in turn_seqs) / (time.perf_counter() - t0)

    runs: dict[str, dict[str, list[float]]] = {"fp32": {}, "bf16": {}}
    generate(False)  # warm-up
    for order in (("fp32", "bf16"), ("bf16", "fp32")):
        for name in order:
            for what, fn in (("prefill", prefill), ("generate", generate), ("update", update)):
                runs[name].setdefault(what, []).append(fn(name == "bf16"))
                print(f"{name} {what}: {runs[name][what][-1]:.1f} tok/s", flush=True)

    with torch.no_grad():
        rows = [a + b for a, b in zip(prompts, completions)][: args.update_sequences]
        lp32 = seq_logprobs(model, rows, pad)
        with autocast(True):
            lp16 = seq_logprobs(model, rows, pad)
        mask = torch.zeros_like(lp32, dtype=torch.bool)
        for i, (a, b) in enumerate(zip(prompts, completions)):
            if i < len(rows):
                mask[i, len(a) - 1 : len(a) + len(b) - 1] = True
        gap = (lp32 - lp16).abs()[mask]
        b = padded(gen_prompts, pad)
        last = b["attention_mask"].sum(1) - 1
        g32 = model(**b).logits[torch.arange(len(last)), last].argmax(-1)
        with autocast(True):
            g16 = model(**b).logits[torch.arange(len(last)), last].argmax(-1)

    def mean(x: list[float]) -> float:
        return sum(x) / len(x)

    result = {
        "config": args.config,
        "overrides": args.overrides,
        "threads": torch.get_num_threads(),
        "cpu_flags": sorted(f for f in cpu_flags() or () if f.startswith(("amx", "avx512_bf16", "avx512f"))),
        "prompts": len(gen_prompts),
        "mean_prompt_tokens": mean([len(x) for x in gen_prompts]),
        "new_tokens": args.new_tokens,
        "update_sequences": len(turn_seqs),
        "mean_sequence_tokens": mean([len(s.input_ids) for s in turn_seqs]),
        "tokens_per_s": runs,
        "speedup_bf16_over_fp32": {w: mean(runs["bf16"][w]) / mean(runs["fp32"][w]) for w in runs["fp32"]},
        "logprob_gap": {
            "completion_tokens": int(mask.sum()),
            "mean_abs": float(gap.mean()),
            "p99_abs": float(gap.quantile(0.99)),
            "max_abs": float(gap.max()),
        },
        "greedy_next_token_agreement": float((g32 == g16).float().mean()),
        "sampling_vs_update_logprob_gap": {"fp32": rollout_gap(False), "bf16": rollout_gap(True)},
    }
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
