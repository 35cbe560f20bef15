"""The lazy chunk stream: the same chunks (texts and ids) as tokenizing the whole text at once, under every
chunking rule, while the tokenizer only ever sees one block; episodes read it through the rollout engine."""

from __future__ import annotations

import random

import pytest

from atom.data.chunker import TokenChunker
from atom.policy.models import ModelConfig, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ModelConfig(name_or_path="tiny"))


def mixed_text(n_words: int, seed: int = 0) -> str:
    # runs of spaces, tabs, blank lines, punctuation, digits, accents and multi-byte characters: the seams must
    # fall where the whole-text tokenization has a boundary too
    words = ["alpha", "beta", "  gamma", "delta.\n", "epsilon,", "zeta\n\n", "eta  ", "théta", "ιώτα", "🙂 kappa",
             "1234", "lambda-mu", "\tnu", "x" * 40]  # fmt: skip
    rng = random.Random(seed)
    return "".join(rng.choice(words) + (" " if rng.random() < 0.7 else "") for _ in range(n_words))


# (chunk_tokens, overlap, max_chunks, margin, max_tokens): plain, centre cut by chunks, release-style margin and
# token-level centre truncation
RULES = [(128, 8, 0, 0, 0), (128, 8, 5, 0, 0), (64, 0, 0, 10, 0), (100, 0, 0, 10, 500), (50, 10, 7, 0, 0)]


@pytest.mark.parametrize("rule", RULES)
def test_the_stream_equals_the_whole_text_chunks(tokenizer, rule):
    text = mixed_text(1500)
    chunker = TokenChunker(tokenizer, *rule)
    eager = list(chunker.chunks(text))
    for block_chars in (60, 333, 4096):
        stream = chunker.stream(text, block_chars=block_chars)
        assert len(stream) == len(eager) == chunker.num_chunks(text)
        assert list(stream) == [c.text for c in eager]
        assert [stream.chunk(k) for k in range(len(stream))] == eager
        assert stream.n_tokens == len(chunker.encode(text))
    assert stream[-1] == eager[-1].text and stream[1:3] == [c.text for c in eager[1:3]]
    with pytest.raises(IndexError):
        stream[len(eager)]


class Spy:
    """A tokenizer that records the longest string it was asked to tokenize."""

    def __init__(self, tokenizer):
        self.tokenizer, self.longest, self.is_fast = tokenizer, 0, True

    def __call__(self, text, **kw):
        self.longest = max(self.longest, len(text))
        return self.tokenizer(text, **kw)


def test_the_tokenizer_never_sees_more_than_a_block(tokenizer):
    text = mixed_text(30000, seed=1)  # about 200K characters
    spy = Spy(tokenizer)
    stream = TokenChunker(spy, 256, 16).stream(text, block_chars=8192)
    texts = list(stream)
    assert len(texts) > 100 and spy.longest <= 8192 + 1024
    assert len(stream._blocks) <= 2  # two tokenized blocks kept, whatever the length


def test_episodes_read_the_engine_stream(tokenizer):
    from atom.data.chunker import ChunkStream
    from atom.data.loaders import DataConfig
    from atom.data.memory_benchmarks import load_samples
    from atom.env.episode import AgentConfig
    from atom.env.rollout import RolloutEngine, atommem_episode
    from atom.memory.embedder import MemoryConfig, build_embedder
    from atom.policy.oracle import OraclePolicy

    from .conftest import FIXTURES

    (sample,) = load_samples(DataConfig(dataset="locomo", path=str(FIXTURES / "locomo.json")))
    memory = MemoryConfig(embedder="hash", hash_dim=64)
    chunker = TokenChunker(tokenizer, 32, 4)
    engine = RolloutEngine(OraclePolicy(), build_embedder(memory), chunker, memory, atommem_episode(AgentConfig()))
    assert isinstance(engine.chunks(sample), ChunkStream) and engine.chunks(sample) is engine.chunks(sample)
    (traj,) = engine.run([sample])
    reads = [t for t in traj.turns if t.phase == "read"]
    assert len(reads) == chunker.num_chunks(sample.context) and traj.result.em == [1.0] * 4
