"""Very long inputs: the oracle's episode on synthetic contexts from 32K to 1M+ tokens, peak RSS and seconds per chunk.

    python benchmarks/bench_long_input.py [--tokens 32768 131072 524288 1100000] [--out docs/measurements/...json]

Each length runs in a fresh subprocess (so its peak RSS, ``ru_maxrss``, is its own): a synthetic sample of about
that many tokens (seeded filler documents, two planted gold facts near the start and the end, two questions) is
read by the AtomMem episode with the oracle policy through the ``RolloutEngine``, as evaluation runs it: the
tiny tokenizer (byte-level BPE, SmolLM2's vocabulary), hash embeddings, 4,096-token chunks with 100 tokens of
overlap and no chunk cap (``data.max_chunks=0``), so every chunk is read, and no cap on LLM calls (an episode
makes one per chunk: ``agent.max_llm_calls`` must exceed the chunks plus the answer turns). The chunk stream is lazy
(``TokenChunker.stream``): the context is tokenized block by block, never at once.

Recorded per length: tokens, chunks, the episode's seconds (counting pass included) and seconds per chunk, RSS
after the sample is built and after the episode, the process's peak RSS, and the oracle's EM (it must stay 100:
both planted facts are found, stored and answered). The check that matters: the 1M-token peak RSS within 1.5x
of the 32K one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = (
    "amber basalt cobalt dune ember fjord garnet harbor indigo juniper kelp lagoon meadow nectar onyx prairie "
    "quartz river saffron tundra umber valley willow xenon yarrow zephyr lantern mill orchard quarry"
).split()
CHUNK_TOKENS, OVERLAP = 4096, 100


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def synthetic_sample(n_tokens: int, tokens_per_char: float = 0.24):
    """A sample of about ``n_tokens`` tokens: filler documents, two gold facts (at 5% and 95% of the documents)."""
    from atom.data.records import Paragraph
    from atom.data.samples import Question, build

    rng = random.Random(0)
    n_docs = max(4, int(n_tokens / tokens_per_char / 700))  # ~700 characters per document
    documents = []
    for i in range(n_docs):
        sentences = tuple(
            ("" if j == 0 else " ") + " ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "."
            for j in range(8)
        )
        documents.append(Paragraph(f"Ledger {i}", sentences))
    gold = {int(0.05 * n_docs): "The vault code of Ledger house is 4471.", int(0.95 * n_docs): "The keeper is Odalys."}
    for d, fact in gold.items():
        documents[d] = Paragraph(documents[d].title, (fact, *documents[d].sentences[1:]))
    first, last = sorted(gold)
    questions = [
        Question("What is the vault code of Ledger house?", ("4471",), ((first, 0),)),
        Question("Who is the keeper?", ("Odalys",), ((last, 0),)),
    ]
    return build(f"long-{n_tokens}", documents, questions, max_questions=2)[0]


def run_one(n_tokens: int) -> dict:
    """One length in this process: build, read with the oracle, measure."""
    from atom.data.chunker import TokenChunker
    from atom.env.episode import AgentConfig
    from atom.env.rollout import RolloutEngine, atommem_episode
    from atom.memory.embedder import MemoryConfig, build_embedder
    from atom.policy.models import ModelConfig, load_tokenizer
    from atom.policy.oracle import OraclePolicy

    tokenizer = load_tokenizer(ModelConfig(name_or_path="tiny"))
    memory = MemoryConfig(embedder="hash", hash_dim=64)
    chunker = TokenChunker(tokenizer, CHUNK_TOKENS, OVERLAP, max_chunks=0)
    sample = synthetic_sample(n_tokens)
    built_rss = rss_mb()
    agent = AgentConfig(max_llm_calls=100_000)  # the default cap (128 calls) would end a 1M-token episode early
    engine = RolloutEngine(OraclePolicy(), build_embedder(memory), chunker, memory, atommem_episode(agent))
    start = time.perf_counter()
    (trajectory,) = engine.run([sample])
    seconds = time.perf_counter() - start
    stream = engine.chunks(sample)
    return {
        "target_tokens": n_tokens,
        "tokens": stream.n_tokens,
        "characters": len(sample.context),
        "chunks": len(stream),
        "episode_s": seconds,
        "s_per_chunk": seconds / len(stream),
        "rss_after_build_mb": built_rss,
        "rss_after_episode_mb": rss_mb(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "em": 100 * sum(trajectory.result.em) / len(trajectory.result.em),
        "llm_calls": trajectory.result.stats.llm_calls,
    }


def eager_peak(n_tokens: int) -> dict:
    """The same sample cut by the whole-text tokenization (``TokenChunker.chunks``, what episodes read before the
    stream): the reference the lazy stream is measured against."""
    from atom.data.chunker import TokenChunker
    from atom.policy.models import ModelConfig, load_tokenizer

    chunker = TokenChunker(load_tokenizer(ModelConfig(name_or_path="tiny")), CHUNK_TOKENS, OVERLAP, max_chunks=0)
    sample = synthetic_sample(n_tokens)
    start = time.perf_counter()
    texts = [c.text for c in chunker.chunks(sample.context)]
    return {"target_tokens": n_tokens, "chunks": len(texts), "chunking_s": time.perf_counter() - start,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # fmt: skip


def measure(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[32_768, 131_072, 524_288, 1_100_000])
    parser.add_argument("--out", default=str(ROOT / "docs" / "measurements" / "bench_long_input.json"))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one length, print JSON
    parser.add_argument("--eager", type=int, help=argparse.SUPPRESS)  # internal: the whole-text reference
    args = parser.parse_args()
    if args.one or args.eager:
        print(json.dumps(run_one(args.one) if args.one else eager_peak(args.eager)))
        return
    rows = []
    for n in args.tokens:
        rows.append(measure("--one", str(n)))
        r = rows[-1]
        print(f"{r['tokens']:>9} tokens {r['chunks']:>4} chunks  {r['s_per_chunk'] * 1000:7.1f} ms/chunk  "
              f"peak RSS {r['peak_rss_mb']:7.1f} MB  EM {r['em']:.0f}", flush=True)  # fmt: skip
    ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    eager = measure("--eager", str(args.tokens[-1]))
    print(f"whole-text chunking of the longest input (before the stream): peak RSS {eager['peak_rss_mb']:.1f} MB")
    result = {
        "command": "python benchmarks/bench_long_input.py " + " ".join(sys.argv[1:]),
        "settings": {
            "tokenizer": "tiny (byte-level BPE)",
            "embedder": "hash",
            "chunk_tokens": CHUNK_TOKENS,
            "chunk_overlap": OVERLAP,
            "max_chunks": 0,
            "policy": "oracle",
        },  # fmt: skip
        "rows": rows,
        "peak_rss_ratio_longest_to_shortest": ratio,
        "whole_text_chunking_longest": eager,
        "within_1_5x": ratio <= 1.5,
    }
    print(f"peak RSS, longest / shortest: {ratio:.3f} ({'within' if ratio <= 1.5 else 'ABOVE'} 1.5x)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
