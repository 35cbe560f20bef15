"""The record types every dataset is converted into: a paragraph of sentences and a multi-hop QA record.

HotpotQA, 2WikiMultihopQA, MuSiQue and the synthetic task all become ``QARecord``s, so the long-context
builder, the oracle teacher and the metrics never look at a dataset's own layout. The sample datasets (the
generic JSONL, LongMemEval, LoCoMo, MemoryAgentBench) become ``LongContextSample``s directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from atom.errors import AtomError

# Question-record datasets (grouped and padded with distractors by ``build_samples``), then sample datasets whose
# files already pair a context with its questions (``atom.data.samples``: the generic JSONL and memory benchmarks).
RECORD_DATASETS = ("hotpotqa", "2wiki", "musique", "synthetic")
SAMPLE_DATASETS = ("jsonl", "longmemeval", "locomo", "memoryagentbench")
DATASETS = RECORD_DATASETS + SAMPLE_DATASETS


class DataError(AtomError, ValueError):
    """A data file or record that does not fit its format (the message names file, record and problem)."""


@dataclass(frozen=True)
class Paragraph:
    """A titled paragraph, kept as its sentences so that gold facts can point at (paragraph, sentence).

    Sentences follow HotpotQA's convention: every sentence after the first carries its own leading separator
    (" The film ..."), so ``text`` is their plain concatenation. That is exactly how HotpotQA reads, including
    its sentence-splitter cuts inside quotes; loaders of datasets that store bare sentences (2WikiMultihopQA)
    and the synthetic task prefix one space to each later sentence.
    """

    title: str
    sentences: tuple[str, ...]

    @property
    def text(self) -> str:
        """The paragraph as one string: the sentences concatenated."""
        return "".join(self.sentences)

    @property
    def key(self) -> tuple[str, str]:
        """Identity used for de-duplication across records: (title, text)."""
        return (self.title, self.text)


@dataclass(frozen=True)
class QARecord:
    """One question with its paragraphs and gold evidence, in the common layout of every dataset."""

    id: str
    question: str
    answers: tuple[str, ...]  # gold answer first, then aliases, de-duplicated
    paragraphs: tuple[Paragraph, ...]
    supporting: tuple[int, ...]  # indices into paragraphs of the supporting paragraphs, ascending
    supporting_sentences: tuple[tuple[int, int], ...]  # (paragraph index, sentence index) gold facts, ascending
    dataset: str  # one of DATASETS

    def __post_init__(self) -> None:
        # Loaders raise DataError with file context before building a record; these guard hand-built ones.
        if not self.answers:
            raise ValueError(f"record {self.id!r}: answers is empty")
        n = len(self.paragraphs)
        if any(not 0 <= i < n for i in self.supporting):
            raise ValueError(f"record {self.id!r}: supporting index out of range 0..{n - 1}: {self.supporting}")
        for p, s in self.supporting_sentences:
            if not 0 <= p < n or not 0 <= s < len(self.paragraphs[p].sentences):
                raise ValueError(f"record {self.id!r}: supporting sentence ({p}, {s}) does not exist")
        if self.dataset not in DATASETS:
            raise ValueError(f"record {self.id!r}: dataset must be one of {list(DATASETS)}, got {self.dataset!r}")


def dedupe(items: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Drop repeated and empty strings, keeping the first occurrence's position."""
    seen: dict[str, None] = {}
    for item in items:
        if item and item not in seen:
            seen[item] = None
    return tuple(seen)
