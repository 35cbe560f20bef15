"""Lockstep rollouts vs one episode at a time, with ``sampling.decode=fast`` and ``generate``, side by side.

    python benchmarks/bench_rollout.py [--episodes 16] [--max-new-tokens 48] [--model smollm2]
        [--decode fast generate] [--bf16] [--out docs/measurements/bench_rollout.json]

Every decoder runs the same greedy policy on the same samples in one process, so the ratios are comparable (this
host's absolute speed drifts by tens of percent; ratios measured side by side do not):

- lockstep: ``RolloutEngine.run(samples)``: one batched policy call and one batched embedding call per step;
- sequential: ``RolloutEngine.run([s])`` for each sample in turn (batch size 1), the decoders alternating
  episode by episode;
- raw generation: the prompts of the ``generate`` lockstep run, replayed step by step through every decoder
  (alternating which goes first): generation alone on identical prompts, so fast/generate is the decoder's own
  speed-up, and the token ids can be compared exactly (greedy: they must be equal).

``speedup_lockstep_vs_sequential`` is the issue's measure (one-at-a-time time over lockstep time, per decoder).
The fast decoder's counters say where its time went: prefill vs decode seconds, tokens prefilled (the shared
prefix once), and decode row-steps (rows carried per step: finished rows leave). ``--bf16`` generates under
bf16 autocast, as ``trainer.precision=bf16-mixed`` does (greedy tokens then differ between any two batch shapes
at near-ties, ``generate``'s own included).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atom.data.chunker import TokenChunker  # noqa: E402
from atom.data.loaders import DataConfig  # noqa: E402
from atom.data.longcontext import build_samples  # noqa: E402
from atom.data.synthetic import SyntheticConfig, generate  # noqa: E402
from atom.env.episode import AgentConfig  # noqa: E402
from atom.env.rollout import RolloutEngine, atommem_episode  # noqa: E402
from atom.memory.embedder import MemoryConfig, build_embedder  # noqa: E402
from atom.policy.fast_decode import DecodeStats  # noqa: E402
from atom.policy.hf import HFPolicy, SamplingConfig  # noqa: E402
from atom.policy.models import ModelConfig, load_model, load_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--chunk-tokens", type=int, default=128)
    parser.add_argument("--decode", nargs="+", default=["generate", "fast"], help="sampling.decode values to compare")
    parser.add_argument("--bf16", action="store_true", help="generate under bf16 autocast (bf16-mixed)")
    parser.add_argument("--out", default="benchmarks/results/bench_rollout.json")
    args = parser.parse_args()

    model_cfg = ModelConfig(name_or_path=args.model)
    tok, model = load_tokenizer(model_cfg), load_model(model_cfg)
    mem = MemoryConfig(embedder=args.embedder)
    embedder = build_embedder(mem)
    records = generate(SyntheticConfig(num_records=4 * args.episodes, hops=2, num_entities=40, distractors=3))
    samples = build_samples(records, DataConfig(num_docs=8, max_questions=2, chunk_tokens=args.chunk_tokens))
    samples = samples[: args.episodes]
    chunker = TokenChunker(tok, args.chunk_tokens, 16)
    agent = AgentConfig(answer_reads=1)
    autocast = torch.bfloat16 if args.bf16 else None
    decoders = list(dict.fromkeys(args.decode))

    def policy(decoder: str) -> HFPolicy:
        sampling = SamplingConfig(
            temperature=0.0, max_new_tokens=args.max_new_tokens, batch_size=args.episodes, decode=decoder
        )
        return HFPolicy(model, tok, sampling, autocast=autocast)

    def engine(decoder: str) -> tuple[RolloutEngine, HFPolicy]:
        pol = policy(decoder)
        return RolloutEngine(pol, embedder, chunker, mem, atommem_episode(agent)), pol

    for d in decoders:
        assert d != "fast" or policy(d).fast, "the fast decoder cannot run this model"
        engine(d)[0].run(samples[:2])  # warm-up (allocations, tokenizer caches)

    # 1. lockstep, each decoder in turn
    lockstep_s, trajectories, engines, fast_stats = {}, {}, {}, {}
    for d in decoders:
        lock, pol = engine(d)
        t0 = time.perf_counter()
        trajectories[d] = lock.run(samples)
        lockstep_s[d] = time.perf_counter() - t0
        engines[d] = lock
        fast_stats[d] = pol.total_stats
        print(f"lockstep {d}: {lockstep_s[d]:.1f} s", flush=True)

    # 2. sequential, the decoders alternating episode by episode
    sequential_s = dict.fromkeys(decoders, 0.0)
    sequential_same = True
    for i, sample in enumerate(samples):
        results = {}
        for d in decoders if i % 2 == 0 else decoders[::-1]:
            t0 = time.perf_counter()
            results[d] = engine(d)[0].run([sample])[0]
            sequential_s[d] += time.perf_counter() - t0
        first = results[decoders[0]]
        sequential_same &= all(_same_turns(first, r) for r in results.values())
    print("sequential:", {d: round(s, 1) for d, s in sequential_s.items()}, flush=True)

    # 3. raw generation: the reference lockstep run's prompts, step by step, through every decoder
    ref = "generate" if "generate" in decoders else decoders[0]
    steps: dict[int, list[list[int]]] = {}
    for traj in trajectories[ref]:
        for i, turn in enumerate(traj.turns):
            steps.setdefault(i, []).append(turn.reply.prompt_ids.tolist())
    raw_s = dict.fromkeys(decoders, 0.0)
    raw_replies: dict[str, list] = {d: [] for d in decoders}
    raw_stats = DecodeStats()
    pols = {d: policy(d) for d in decoders}
    for i, prompts in enumerate(steps.values()):
        for d in decoders if i % 2 == 0 else decoders[::-1]:
            t0 = time.perf_counter()
            raw_replies[d] += pols[d].generate_ids(prompts)
            raw_s[d] += time.perf_counter() - t0
    raw_stats = pols["fast"].total_stats if "fast" in pols else raw_stats
    print("raw generation:", {d: round(s, 1) for d, s in raw_s.items()}, flush=True)

    tokens = engines[ref].stats.completion_tokens
    result: dict = {
        "episodes": len(samples),
        "model": args.model,
        "embedder": args.embedder,
        "max_new_tokens": args.max_new_tokens,
        "autocast": "bf16" if args.bf16 else "none (float32)",
        "torch_threads": torch.get_num_threads(),
        "turns": sum(len(t.turns) for t in trajectories[ref]),
        "completion_tokens": tokens,
        "decoders": {},
    }
    for d in decoders:
        lock = engines[d].stats
        entry = {
            "lockstep_s": lockstep_s[d],
            "sequential_s": sequential_s[d],
            "raw_generation_s": raw_s[d],
            "speedup_lockstep_vs_sequential": sequential_s[d] / lockstep_s[d],
            "engine_overhead_share": max(0.0, lockstep_s[d] - lock.generate_s) / lockstep_s[d],
            "lockstep_generate_s": lock.generate_s,
            "lockstep_embed_s": lock.embed_s,
            "lockstep_completion_tokens": lock.completion_tokens,
            "lockstep_tokens_per_s": lock.completion_tokens / lockstep_s[d],
            "per_step_batch": lock.per_step_batch,
        }
        if d == "fast":
            entry["lockstep_decode_stats"] = dataclasses.asdict(fast_stats[d])
            entry["raw_decode_stats"] = dataclasses.asdict(raw_stats)
        result["decoders"][d] = entry

    if "fast" in decoders and "generate" in decoders:
        g, f = result["decoders"]["generate"], result["decoders"]["fast"]
        pairs = list(zip(raw_replies["generate"], raw_replies["fast"]))
        same_ids = sum(torch.equal(a.completion_ids, b.completion_ids) for a, b in pairs)
        gaps = [float((a.logprobs - b.logprobs).abs().max()) for a, b in pairs if len(a.logprobs) == len(b.logprobs)]
        both = zip(trajectories["generate"], trajectories["fast"])
        turns = [(a, b) for ta, tb in both for a, b in zip(ta.turns, tb.turns)]
        same_turns = sum(torch.equal(a.reply.completion_ids, b.reply.completion_ids) for a, b in turns)
        result["comparison"] = {
            "fast_over_generate_raw_generation_time": f["raw_generation_s"] / g["raw_generation_s"],
            "fast_over_generate_lockstep_time": f["lockstep_s"] / g["lockstep_s"],
            "fast_over_generate_sequential_time": f["sequential_s"] / g["sequential_s"],
            "fast_lockstep_vs_generate_sequential": g["sequential_s"] / f["lockstep_s"],
            "raw_greedy_replies_identical": f"{same_ids}/{len(pairs)}",
            "raw_max_abs_logprob_gap": max(gaps) if gaps else None,
            "lockstep_turn_ids_identical": f"{same_turns}/{len(turns)}",
            "lockstep_predictions_identical": all(
                a.result.predictions == b.result.predictions
                for a, b in zip(trajectories["generate"], trajectories["fast"])
            ),
            "sequential_turn_ids_identical": sequential_same,
        }

    print(f"{'decoder':<10} {'lockstep s':>10} {'sequential s':>12} {'raw gen s':>10} {'lock/seq':>9}")
    for d, e in result["decoders"].items():
        print(
            f"{d:<10} {e['lockstep_s']:>10.1f} {e['sequential_s']:>12.1f} {e['raw_generation_s']:>10.1f} "
            f"{e['speedup_lockstep_vs_sequential']:>8.2f}x"
        )
    if "comparison" in result:
        print(json.dumps(result["comparison"], indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


def _same_turns(a, b) -> bool:
    return len(a.turns) == len(b.turns) and all(
        torch.equal(x.reply.completion_ids, y.reply.completion_ids) for x, y in zip(a.turns, b.turns)
    )


if __name__ == "__main__":
    main()
