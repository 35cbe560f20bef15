"""Fingerprints of the environment's behaviour: a sha256 per method over every turn of a fixed set of episodes.

    python benchmarks/trajectory_hashes.py [--out benchmarks/results/trajectory_hashes.json]

A refactoring that must not change behaviour is checked by running this before and after it: equal hashes mean
every prompt, reply, action effect, store state, score and counter of every episode is the same. The episodes are
deterministic and need no model weights: the oracle teacher under both protocols (atom's and the release's), and
the baselines (full context, RAG, MemAgent) and the AtomMem episode driven by a scripted policy whose reply is a
function of its prompt (so a changed prompt changes the reply, and the hash). The chunker uses the embedded
SmolLM2 tokenizer; memory uses the hash embedder (no model either).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing atom

from atom.data.chunker import TokenChunker  # noqa: E402
from atom.data.loaders import DataConfig  # noqa: E402
from atom.data.longcontext import build_samples  # noqa: E402
from atom.data.synthetic import SyntheticConfig, generate  # noqa: E402
from atom.env.episode import AgentConfig  # noqa: E402
from atom.env.rollout import Reply, RolloutEngine  # noqa: E402
from atom.eval.harness import EvalConfig, episode_factory  # noqa: E402
from atom.memory.embedder import MemoryConfig, build_embedder  # noqa: E402
from atom.policy.models import ModelConfig, load_tokenizer  # noqa: E402
from atom.policy.oracle import OraclePolicy  # noqa: E402


class ScriptedPolicy:
    """Replies as a function of the prompt: stores the first sentence of the text it was shown, reads with the
    first question, and answers with the last capitalised word of the prompt (AtomMem and release tags alike)."""

    def act(self, observations):
        return [Reply(self.reply(o.messages[-1]["content"])) for o in observations]

    @staticmethod
    def reply(prompt: str) -> str:
        words = re.findall(r"\b[A-Z][a-z]+\b", prompt)
        word = words[-1] if words else "none"
        sentence = next((s for s in re.split(r"(?<=[.!?])\s+", prompt) if len(s) > 40), "")[:160]
        question = next(iter(re.findall(r"[^\n?]{10,120}\?", prompt)), "")
        return (
            f"<create>{sentence}</create><read>{question}</read><scratchpad>{word}</scratchpad>"
            f"<answer>{word}</answer><final_answer>{word}</final_answer><memory>{sentence}</memory>"
        )


def _plain(x):
    """JSON-able form of a dataclass tree (tuple keys of counters become strings)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def fingerprint(trajectories) -> str:
    h = hashlib.sha256()
    for t in trajectories:
        for turn in t.turns:
            trace = _plain(dataclasses.asdict(turn.trace)) if turn.trace is not None else None
            h.update(json.dumps([turn.phase, turn.messages, turn.reply.text, trace], default=str).encode())
        h.update(json.dumps(_plain(dataclasses.asdict(t.result)), default=str, sort_keys=True).encode())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/trajectory_hashes.json")
    args = parser.parse_args()
    tokenizer = load_tokenizer(ModelConfig(name_or_path="smollm2"))
    records = generate(SyntheticConfig(num_records=24, hops=2, num_entities=20, distractors=3))
    samples = build_samples(records, DataConfig(num_docs=12, max_questions=2, chunk_tokens=256))
    mem = MemoryConfig(embedder="hash", hash_dim=64)
    embedder, chunker = build_embedder(mem), TokenChunker(tokenizer, 256, 16)
    runs = {
        "oracle_atom": (OraclePolicy(), "oracle", AgentConfig()),
        "oracle_release": (OraclePolicy(), "oracle", AgentConfig(protocol="release")),
        "scripted_atom": (ScriptedPolicy(), "atommem", AgentConfig()),
        "scripted_release": (ScriptedPolicy(), "atommem", AgentConfig(protocol="release")),
        "full_context": (ScriptedPolicy(), "full_context", AgentConfig()),
        "rag": (ScriptedPolicy(), "rag", AgentConfig()),
        "memagent": (ScriptedPolicy(), "memagent", AgentConfig()),
    }
    hashes = {}
    for name, (policy, method, agent) in runs.items():
        factory = episode_factory(method, agent, EvalConfig(), 1024, tokenizer)
        trajectories = RolloutEngine(policy, embedder, chunker, mem, factory).run(samples)
        hashes[name] = fingerprint(trajectories)
        turns = sum(len(t.turns) for t in trajectories)
        print(f"{name:18s} {len(trajectories)} episodes {turns:4d} turns  {hashes[name]}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(hashes, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
