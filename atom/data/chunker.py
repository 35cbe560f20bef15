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

``chunks`` tokenizes the whole text at once. ``stream`` (what episodes read) is lazy and flat in memory for any
length: a counting pass tokenizes the text block by block (about 64K characters each, cut before a space that
follows a non-space, a boundary the pre-tokenizer never merges across) and keeps only each block's first
character and token; chunk k's text is cut when it is asked for, by tokenizing again just the blocks that hold
its two boundaries. For byte-level BPE tokenizers (GPT-2, SmolLM2, Qwen) the blocks tokenize exactly as the whole
text does, so the stream's chunks are ``chunks``'s; a tokenizer whose pieces depend on the start of the string
(SentencePiece's prefix space) can differ by a token at a seam.
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict
from collections.abc import Iterator, Sequence
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
            pieces = _pieces(spans, start, end)  # original token ranges of kept positions [start, end)
            ids = [i for a, b in pieces for i in tokenized.ids[a:b]]
            text = "".join(tokenized.text[slice(*tokenized.span(a, b))] for a, b in pieces)
            yield Chunk(index, ids, text, pieces[0][0], pieces[-1][1])

    def chunks(self, text: str) -> Iterator[Chunk]:
        """Tokenize ``text`` once and yield its kept chunks in order; an empty text gives none."""
        return self.chunks_of(self.encode(text))

    def num_chunks(self, text: str) -> int:
        """Number of chunks ``chunks(text)`` yields (after centre truncation), counted block by block."""
        return len(self.stream(text))

    def stream(self, text: str, block_chars: int = 1 << 16) -> ChunkStream:
        """The kept chunks' texts as a lazy sequence (module docstring)."""
        return ChunkStream(self, text, block_chars)


def _pieces(spans: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """Original token ranges of the kept positions ``[start, end)`` (kept spans joined end to end)."""
    pieces, offset = [], 0
    for a, b in spans:
        lo, hi = max(start - offset, 0), min(end - offset, b - a)
        if lo < hi:
            pieces.append((a + lo, a + hi))
        offset += b - a
    return pieces


class ChunkStream(Sequence[str]):
    """The texts of a context's kept chunks, tokenized block by block as they are asked for (module docstring).

    ``len`` runs the counting pass once; ``stream[k]`` tokenizes at most the two blocks holding chunk k's first
    and last token (the last two blocks are kept). Memory: the text, one (character, token) pair per block and two
    blocks' tokens, whatever the length. Random access, so every episode of a GRPO group can share one stream.
    """

    def __init__(self, chunker: TokenChunker, text: str, block_chars: int = 1 << 16, lookahead: int = 1024):
        self.chunker, self.text = chunker, text
        self.block_chars, self.lookahead = max(block_chars, 16), lookahead
        self._starts: list[tuple[int, int]] = []  # (first character, first token) of each block
        self._n_tokens = 0
        self._windows: list[tuple[int, int, int]] | None = None
        self._blocks: OrderedDict[int, tuple[array, array]] = OrderedDict()  # block -> (ids, bounds)

    def _tokenize(self, pos: int) -> tuple[list[int], list[int], int]:
        """(ids, character starts, end) of the block starting at character ``pos``: the same call for a block
        in the counting pass and later, so both see identical tokens."""
        window = self.text[pos : pos + self.block_chars + self.lookahead]
        encoded = self.chunker.tokenizer(
            window, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False, verbose=False
        )
        ids, starts = list(encoded["input_ids"]), [pos + a for a, _ in encoded["offset_mapping"]]
        if pos + len(window) >= len(self.text) or len(ids) < 2:
            return ids, starts, pos + len(window)
        limit = pos + self.block_chars
        later = [t for t in range(1, len(ids) - 1) if starts[t] >= limit and starts[t] > starts[t - 1]]
        # A seam where a space follows a non-space: a pre-tokenizer boundary of the GPT-2 and Llama-3 / Qwen split
        # patterns, so no token of the whole text's tokenization runs across it.
        text = self.text
        cut = next((t for t in later if text[starts[t]] == " " and not text[starts[t] - 1].isspace()), None)
        if cut is None:
            cut = later[0] if later else len(ids) - 1
        return ids[:cut], starts[:cut], starts[cut]

    def _plan(self) -> list[tuple[int, int, int]]:
        if self._windows is None:
            pos, count = 0, 0
            while pos < len(self.text):
                ids, _, end = self._tokenize(pos)
                self._starts.append((pos, count))
                pos, count = end, count + len(ids)
            self._n_tokens = count
            self._windows = self.chunker.windows(count)
        return self._windows

    def _block(self, b: int) -> tuple[array, array]:
        if b not in self._blocks:
            ids, starts, _ = self._tokenize(self._starts[b][0])
            bounds = array("q", [self._starts[b][0]])  # as ``encode``: byte-level pieces of one character share
            for start in starts[1:]:  # its offset, so boundaries are kept monotone
                bounds.append(max(bounds[-1], start))
            self._blocks[b] = (array("q", ids), bounds)  # compact: a cached stream keeps two blocks
            if len(self._blocks) > 2:
                self._blocks.popitem(last=False)
        self._blocks.move_to_end(b)
        return self._blocks[b]

    def _locate(self, token: int) -> tuple[int, int]:
        """(block, position in it) of token ``token`` (the last block's end for ``token == n_tokens``)."""
        lo, hi = 0, len(self._starts) - 1
        while lo < hi:  # the last block whose first token is <= token
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self._starts[mid][1] <= token else (lo, mid - 1)
        return lo, token - self._starts[lo][1]

    def bound(self, token: int) -> int:
        """Character position before token ``token`` (0 for the first, the text's end for ``n_tokens``)."""
        if token <= 0:
            return 0
        if token >= self._n_tokens:
            return len(self.text)
        b, t = self._locate(token)
        if t == 0:
            return self._starts[b][0]
        return self._block(b)[1][t]

    def chunk(self, k: int) -> Chunk:
        """Kept chunk ``k`` with its token ids."""
        index, start, end = self._plan()[k]
        pieces = _pieces(self.chunker.kept_spans(self._n_tokens), start, end)
        text = "".join(self.text[self.bound(a) : self.bound(b)] for a, b in pieces)
        ids: list[int] = []
        for a, b in pieces:
            while a < b:
                blk, t = self._locate(a)
                block_ids = self._block(blk)[0]
                take = min(b - a, len(block_ids) - t)
                ids += block_ids[t : t + take].tolist()
                a += take
        return Chunk(index, ids, text, pieces[0][0], pieces[-1][1])

    @property
    def n_tokens(self) -> int:
        """Tokens in the whole text (runs the counting pass)."""
        self._plan()
        return self._n_tokens

    @property
    def windows(self) -> list[tuple[int, int, int]]:
        """(index, start, end) of the kept windows, as ``TokenChunker.windows`` (runs the counting pass)."""
        return self._plan()

    def __len__(self) -> int:
        return len(self._plan())

    def __getitem__(self, k):  # type: ignore[override]
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        n = len(self)
        if not -n <= k < n:
            raise IndexError(f"chunk {k} of {n}")
        index, start, end = self._windows[k % n]  # type: ignore[index]
        pieces = _pieces(self.chunker.kept_spans(self._n_tokens), start, end)
        return "".join(self.text[self.bound(a) : self.bound(b)] for a, b in pieces)
