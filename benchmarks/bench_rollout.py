"""Lockstep rollout engine vs the same episodes one at a time vs the raw generation calls alone.

    python benchmarks/bench_rollout.py [--episodes 8] [--max-new-tokens 48] [--model smollm2]

All three run the same greedy policy on the same samples in one process, so their ratios are comparable:
- lockstep: ``RolloutEngine.run(samples)``: one batched generate and one batched embedding call per step;
- sequential: ``RolloutEngine.run([s])`` for each sample in turn (batch size 1 everywhere);
- raw generation: the prompts the lockstep run produced, replayed through ``HFPolicy.generate_ids`` in the
  same per-step batches, so lockstep time minus this is the engine's own overhead (prompt building,
  tokenization of the chat template, parsing, embedding, store operations).
Prints a table and saves ``benchmarks/results/bench_rollout.json``.
"""

from __future__ import annotations

import argparse
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
from atom.memory.embedder import (
    MemoryConfig,  # noqa: E402
    build_embedder,  # noqa: E402
)
from atom.policy.hf import HFPolicy, SamplingConfig  # noqa: E402
from atom.policy.models import ModelConfig, load_model, load_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--chunk-tokens", type=int, default=128)
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
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=args.max_new_tokens, batch_size=args.episodes)
    agent = AgentConfig(answer_reads=1)

    def engine() -> tuple[RolloutEngine, HFPolicy]:
        policy = HFPolicy(model, tok, sampling)
        return RolloutEngine(policy, embedder, chunker, mem, atommem_episode(agent)), policy

    engine()[0].run(samples[:1])  # warm-up (allocations, tokenizer caches)

    lock, _ = engine()
    t0 = time.perf_counter()
    trajectories = lock.run(samples)
    lockstep_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    sequential = [engine()[0].run([s])[0] for s in samples]
    sequential_s = time.perf_counter() - t0

    # Replay the lockstep run's prompts in its per-step batches: generation alone.
    steps: dict[int, list[list[int]]] = {}
    for traj in trajectories:
        for i, turn in enumerate(traj.turns):
            steps.setdefault(i, []).append(turn.reply.prompt_ids.tolist())
    policy = HFPolicy(model, tok, sampling)
    t0 = time.perf_counter()
    for prompts in steps.values():
        policy.generate_ids(prompts)
    raw_s = time.perf_counter() - t0

    same = all(a.result.predictions == b.result.predictions for a, b in zip(trajectories, sequential))
    tokens = lock.stats.completion_tokens
    result = {
        "episodes": len(samples),
        "turns": sum(len(t.turns) for t in trajectories),
        "completion_tokens": tokens,
        "lockstep_s": lockstep_s,
        "sequential_s": sequential_s,
        "raw_generation_s": raw_s,
        "speedup_lockstep_vs_sequential": sequential_s / lockstep_s,
        "engine_overhead_share": (lockstep_s - raw_s) / lockstep_s,
        "lockstep_tokens_per_s": tokens / lockstep_s,
        "embed_s": lock.stats.embed_s,
        "same_predictions": same,
        "model": args.model,
        "embedder": args.embedder,
        "max_new_tokens": args.max_new_tokens,
        "torch_threads": torch.get_num_threads(),
    }
    print(f"{'mode':<12} {'seconds':>9} {'tokens/s':>9}")
    for name, s in (("lockstep", lockstep_s), ("sequential", sequential_s), ("raw gen", raw_s)):
        print(f"{name:<12} {s:>9.1f} {tokens / s:>9.1f}")
    print(
        f"lockstep is {result['speedup_lockstep_vs_sequential']:.2f}x faster than one at a time; engine overhead "
        f"{100 * result['engine_overhead_share']:.1f}% of lockstep time; same predictions: {same}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
