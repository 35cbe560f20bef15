"""Token chunking of a long context: tokenize once, cut overlapping windows, keep the original text spans.

A context of n tokens is cut into windows of ``chunk_tokens`` tokens that start ``chunk_tokens - overlap``
tokens apart, so consecutive chunks share exactly ``overlap`` tokens; the last window may be shorter. With
``max_chunks > 0`` and more windows than that, the middle is dropped: the first ceil(m/2) and the last
floor(m/2) windows are kept.

The AtomMem release cuts differently (``agent.protocol: release`` sets it up): first the token sequence is
centre-truncated to ``max_tokens`` (its first and last ``max_tokens // 2`` tokens are kept, joined), then cut into
windows of ``chunk_tokens`` with no overlap, each widened by ``margin`` tokens of context on both sides (4,000 +
2 x 100 there). Windows are counted in the kept sequence; one that spans the junction of a centre cut joins the
two pieces of text.

A chunk's ``text`` is cut from the original string at token boundaries taken from the tokenizer's offsets, not
decoded from ids, so it has no decoding artefacts. Boundaries partition the text: the text between two tokens
(e.g. a space that a tokenizer leaves out of its offsets) belongs to the earlier chunk, the first chunk starts
at character 0 and the last ends at the end of the string, so concatenating the chunks with their overlap
removed gives back the text exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    index: int  # position in the full window sequence (before centre truncation), from 0
    token_ids: list[int]  # the window's token ids, as the tokenizer produced them for the whole text
    text: str  # the original text covered by these tokens
    start_token: int  # first token of the window in the whole text
    end_token: int  # one past the last token


@dataclass(frozen=True)
class TokenizedText:
    """A text tokenized once: its ids and the character boundary before each token."""

    text: str
    ids: list[int]
    bounds: list[int]  # len(ids) + 1 non-decreasing character positions: 0, start of token 1, ..., len(text)

    def __len__(self) -> int:
        return len(self.ids)

    def span(self, start_token: int, end_token: int) -> tuple[int, int]:
        """Character span ``[start, end)`` of tokens ``[start_token, end_token)``."""
        return self.bounds[start_token], self.bounds[end_token]


class TokenChunker:
    """Cuts texts into overlapping token windows of a (fast) Hugging Face tokenizer."""

    def __init__(
        self, tokenizer, chunk_tokens: int, overlap: int, max_chunks: int = 0, margin: int = 0, max_tokens: int = 0
    ):
        if chunk_tokens <= 0:
            raise ValueError(f"chunk_tokens must be > 0, got {chunk_tokens}")
        if not 0 <= overlap < chunk_tokens:
            raise ValueError(f"overlap must be in 0..chunk_tokens - 1 ({chunk_tokens - 1}), got {overlap}")
        if max_chunks < 0:
            raise ValueError(f"max_chunks must be >= 0 (0 = no truncation), got {max_chunks}")
        if margin < 0 or max_tokens < 0:
            raise ValueError(f"margin and max_tokens must be >= 0, got {margin} and {max_tokens}")
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"TokenChunker needs a fast tokenizer (character offsets); got {type(tokenizer).__name__}")
        self.tokenizer = tokenizer
        self.chunk_tokens, self.overlap, self.max_chunks = chunk_tokens, overlap, max_chunks
        self.margin, self.max_tokens = margin, max_tokens

    def encode(self, text: str) -> TokenizedText:
        """Tokenize ``text`` once (no special tokens) with character boundaries."""
        encoded = self.tokenizer(
            text,
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            verbose=False,
        )
        ids = list(encoded["input_ids"])
        if not ids:
            return TokenizedText(text, ids, [0])
        bounds = [0]
        for start, _ in encoded["offset_mapping"][1:]:
            # Byte-level tokenizers give all pieces of one character its offsets: keep boundaries monotone.
            bounds.append(max(bounds[-1], start))
        bounds.append(len(text))
        return TokenizedText(text, ids, bounds)

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def kept_spans(self, n_tokens: int) -> list[tuple[int, int]]:
        """Token ranges kept by the token-level centre truncation (``max_tokens``), in order."""
        if not self.max_tokens or n_tokens <= self.max_tokens:
            return [(0, n_tokens)]
        half = self.max_tokens // 2
        return [(0, half), (n_tokens - half, n_tokens)]

    def windows(self, n_tokens: int) -> list[tuple[int, int, int]]:
        """(index, start, end) of the windows kept for a text of ``n_tokens`` tokens.

        Positions count the tokens kept by ``max_tokens`` (the original positions when nothing is cut).
        """
        n_kept = sum(b - a for a, b in self.kept_spans(n_tokens))
        stride = self.chunk_tokens - self.overlap
        total = self.total_windows(n_kept)
        keep: list[int] | range = range(total)
        if self.max_chunks and total > self.max_chunks:
            head = math.ceil(self.max_chunks / 2)
            keep = [*range(head), *range(total - self.max_chunks // 2, total)]
        return [
            (k, max(k * stride - self.margin, 0), min(k * stride + self.chunk_tokens + self.margin, n_kept))
            for k in keep
        ]

    def total_windows(self, n_tokens: int) -> int:
        """Number of windows before centre truncation."""
        if n_tokens <= 0:
            return 0
        return 1 + max(0, math.ceil((n_tokens - self.chunk_tokens) / (self.chunk_tokens - self.overlap)))

    def chunks_of(self, tokenized: TokenizedText) -> Iterator[Chunk]:
        """The kept chunks of an already tokenized text, lazily."""
        spans = self.kept_spans(len(tokenized))
        for index, start, end in self.windows(len(tokenized)):
            pieces, offset = [], 0  # original token ranges of kept positions [start, end)
            for a, b in spans:
                lo, hi = max(start - offset, 0), min(end - offset, b - a)
                if lo < hi:
                    pieces.append((a + lo, a + hi))
                offset += b - a
            ids = [i for a, b in pieces for i in tokenized.ids[a:b]]
            text = "".join(tokenized.text[slice(*tokenized.span(a, b))] for a, b in pieces)
            yield Chunk(index, ids, text, pieces[0][0], pieces[-1][1])

    def chunks(self, text: str) -> Iterator[Chunk]:
        """Tokenize ``text`` once and yield its kept chunks in order; an empty text gives none."""
        return self.chunks_of(self.encode(text))

    def num_chunks(self, text: str) -> int:
        """Number of chunks ``chunks(text)`` yields (after centre truncation)."""
        return len(self.windows(self.count_tokens(text)))
