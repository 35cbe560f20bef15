"""Where a decode step of the rollout goes on CPU, and whether transformers' static KV cache makes it cheaper.

    python benchmarks/bench_decode.py [--config experiments/quickstart.yaml] [--out ...json] [key=value ...]

The prompts are the config's own: the oracle's turns on its training samples, chat-templated (the quickstart's
are ~670 tokens), left-padded into one batch as ``HFPolicy`` pads them. Under the config's generation numerics
(``trainer.precision``: bf16-mixed autocasts, as the rollout does), it measures:

- op profile: ``torch.profiler`` over ``--profile-steps`` single-token forwards with the dynamic KV cache (what
  ``generate`` runs by default), after a prefill outside the profile; each op's share of the self CPU time;
- dynamic vs static cache: ``generate`` with ``cache_implementation`` unset ("dynamic": the cache grows by
  concatenation) and "static" (preallocated to prompt + new tokens), greedy, a fixed number of new tokens. The
  time per decode step is (time for N + 1 tokens - time for 1 token) / N, so the prefill cancels. The two run
  interleaved, in alternating order, ``--rounds`` times each (both warmed up first): this host's speed drifts by
  tens of percent, and only ratios measured side by side mean anything, so the result is the median of the
  per-round ratios. Also the share of sequences whose greedy tokens are identical under both caches (a sequence
  differs from its first differing token on: bf16 sums in another order).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from transformers import GenerationConfig  # noqa: E402

from atom import pipeline  # noqa: E402
from atom.config import load_config  # noqa: E402
from atom.policy.hf import encode_prompt  # noqa: E402
from atom.policy.oracle import OraclePolicy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="experiments/quickstart.yaml")
    ap.add_argument("--prompts", type=int, default=16, help="sequences decoded together (sampling.batch_size)")
    ap.add_argument("--new-tokens", type=int, default=48, help="decode steps timed per generate call")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds of the dynamic/static comparison")
    ap.add_argument("--profile-steps", type=int, default=16)
    ap.add_argument("--out", default="benchmarks/results/bench_decode.json")
    ap.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = ap.parse_args()
    cfg = load_config(args.config, [*args.overrides, "run.name=bench_decode"])
    p = pipeline.build(cfg)
    model = pipeline.load_policy(p).eval()
    tok = p.tokenizer
    cast = torch.autocast("cpu", dtype=p.autocast) if p.autocast is not None else nullcontext()

    trajectories = p.engine(OraclePolicy()).run(p.data.require("train", "the benchmark's prompts"))
    prompts = [encode_prompt(tok, t.messages) for tr in trajectories for t in tr.turns][: args.prompts]
    width = max(len(x) for x in prompts)
    ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, x in enumerate(prompts):  # left padding, as HFPolicy
        ids[row, width - len(x) :], attention[row, width - len(x) :] = torch.tensor(x), 1

    # 1. op profile of single-token forwards with the dynamic cache
    positions = attention.sum(1, keepdim=True)
    with torch.no_grad(), cast:
        out = model(input_ids=ids, attention_mask=attention, use_cache=True, logits_to_keep=1)
        field = "cache" if hasattr(out, "cache") else "past_key_values"  # transformers 5 renamed it
        cache, mask = getattr(out, field), attention
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(args.profile_steps):
                mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
                out = model(input_ids=nxt, attention_mask=mask, position_ids=positions + i, use_cache=True,
                            **{field: cache})  # fmt: skip
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    ops = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ops)
    top = sorted(ops, key=lambda e: -e.self_cpu_time_total)[:8]
    op_share = {e.key: round(e.self_cpu_time_total / total, 4) for e in top}
    step_ms_profiled = total / 1000 / args.profile_steps
    print("op shares of a decode step:", json.dumps(op_share), flush=True)

    # 2. dynamic vs static cache, interleaved
    def generate(cache: str | None, n: int) -> tuple[float, torch.Tensor]:
        config = GenerationConfig(
            do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id, cache_implementation=cache,
        )  # fmt: skip
        with torch.no_grad(), cast:
            t0 = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=attention, generation_config=config)
            return time.perf_counter() - t0, out[:, width:]

    n = args.new_tokens
    step_ms: dict[str, list[float]] = {"dynamic": [], "static": []}
    tokens: dict[str, torch.Tensor] = {}
    generate(None, 2), generate("static", 2)  # warm-up
    for r in range(args.rounds):
        for name in ("dynamic", "static") if r % 2 == 0 else ("static", "dynamic"):
            cache = None if name == "dynamic" else "static"
            one, _ = generate(cache, 1)
            full, tokens[name] = generate(cache, n + 1)
            step_ms[name].append(1000 * (full - one) / n)
            print(f"round {r} {name}: {step_ms[name][-1]:.0f} ms per decode step", flush=True)

    ratios = [s / d for s, d in zip(step_ms["static"], step_ms["dynamic"])]  # each round's pair, side by side
    result = {
        "config": args.config,
        "overrides": args.overrides,
        "precision": cfg.trainer.precision,
        "threads": torch.get_num_threads(),
        "sequences": len(prompts),
        "mean_prompt_tokens": sum(map(len, prompts)) / len(prompts),
        "new_tokens": n,
        "profile": {
            "steps": args.profile_steps,
            "ms_per_step": step_ms_profiled,
            "self_cpu_share": op_share,
        },
        "ms_per_decode_step": step_ms,
        "static_over_dynamic_per_round": ratios,
        "static_over_dynamic_median": statistics.median(ratios),
        "greedy_sequences_identical": float((tokens["dynamic"] == tokens["static"]).all(1).float().mean()),
    }
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
