"""The paper's long-context samples: questions grouped together and hidden among distractor documents.

Protocol (the data generator of AtomMem and MemAgent, which AtomMem's evaluation follows):

1. The paragraph pool is every paragraph of the split's records, de-duplicated by (title, text), in file
   order.
2. Records are grouped in file order: a group has 1 question with probability ``single_question_prob``, else a
   uniform number in 2..``max_questions`` (the last group takes what is left).
3. A sample's documents are all paragraphs of its questions (de-duplicated), padded with distinct random
   paragraphs of the pool that are not among them, up to ``num_docs``. If its own paragraphs already exceed
   ``num_docs``, the supporting ones are kept first (then the others, in question order).
4. The documents are shuffled and rendered.

Every random choice comes from one ``random.Random(cfg.seed)``, in a fixed order, so the same records, pool
and config give byte-identical contexts.

Rendering (``render``): each document is the block ``"Document {i}:\\n{title}\\n{text}"`` with i counted from
1, and blocks are joined by one blank line (``"\\n\\n"``); there is no leading or trailing whitespace.
"""

from __future__ import annotations

import logging
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from atom.data.loaders import DataConfig
from atom.data.records import Paragraph, QARecord

log = logging.getLogger(__name__)
_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class LongContextSample:
    """One episode's input: 1..max_questions questions over ``num_docs`` rendered documents."""

    id: str  # "{dataset}-{num_docs}-{split}-{index}", unique within a run
    questions: tuple[str, ...]  # 1..max_questions
    answers: tuple[tuple[str, ...], ...]  # gold answer and aliases, per question
    record_ids: tuple[str, ...]  # source record of each question
    documents: tuple[Paragraph, ...]  # in rendered order
    supporting_docs: tuple[tuple[int, ...], ...]  # per question: indices into documents of its supporting paragraphs
    supporting_facts: tuple[tuple[tuple[int, int], ...], ...]  # per question: (document index, sentence index)
    context: str  # render(documents); with raw_text, the source's own text
    categories: tuple[str, ...] = ()  # per question: its category in the source (results per category); () = none
    raw_text: bool = False  # context is one long text and documents its passages (not render(documents))


def _block(i: int, paragraph: Paragraph) -> str:
    return f"Document {i + 1}:\n{paragraph.title}\n{paragraph.text}"


def render(documents: Sequence[Paragraph]) -> str:
    """The context string of ``documents`` (format in the module docstring)."""
    return _SEPARATOR.join(_block(i, p) for i, p in enumerate(documents))


def document_spans(documents: Sequence[Paragraph]) -> list[tuple[int, int]]:
    """Character span ``[start, end)`` of each document's block inside ``render(documents)``."""
    spans, pos = [], 0
    for i, paragraph in enumerate(documents):
        end = pos + len(_block(i, paragraph))
        spans.append((pos, end))
        pos = end + len(_SEPARATOR)
    return spans


def paragraph_pool(records: Sequence[QARecord]) -> list[Paragraph]:
    """Every paragraph of ``records``, de-duplicated by (title, text), in file order."""
    return _unique([paragraph for record in records for paragraph in record.paragraphs])


def group_records(records: Sequence[QARecord], cfg: DataConfig, rng: random.Random) -> list[list[QARecord]]:
    """Split ``records`` in file order into groups of 1 (prob. single_question_prob) or 2..max_questions."""
    groups, i = [], 0
    while i < len(records):
        single = rng.random() < cfg.single_question_prob
        size = 1 if single or cfg.max_questions == 1 else rng.randint(2, cfg.max_questions)
        groups.append(list(records[i : i + size]))
        i += size
    return groups


def _own_paragraphs(group: Sequence[QARecord]) -> list[Paragraph]:
    """The group's paragraphs, de-duplicated, supporting ones first (both parts in question order)."""
    ordered = [r.paragraphs[j] for r in group for j in r.supporting]
    ordered += [p for r in group for j, p in enumerate(r.paragraphs) if j not in r.supporting]
    return _unique(ordered)


def _unique(paragraphs: Sequence[Paragraph]) -> list[Paragraph]:
    """``paragraphs`` without repeated (title, text), each kept at its first position."""
    kept: dict[tuple[str, str], Paragraph] = {}
    for paragraph in paragraphs:
        kept.setdefault(paragraph.key, paragraph)
    return list(kept.values())


def build_samples(
    records: Sequence[QARecord],
    cfg: DataConfig,
    pool: Sequence[Paragraph] | None = None,
    split: str = "all",
) -> list[LongContextSample]:
    """Long-context samples from ``records`` by the paper's protocol (module docstring).

    Args:
        records: the questions, in file order.
        cfg: ``num_docs``, ``single_question_prob``, ``max_questions``, ``seed`` and ``dataset`` are read.
        pool: distractor paragraphs; default ``paragraph_pool(records)``. De-duplicated again here.
        split: a name put into the sample ids, so train and validation samples never share an id.
    """
    rng = random.Random(cfg.seed)
    pool = paragraph_pool(records) if pool is None else _unique(pool)
    samples, short, lost_support = [], 0, 0
    for index, group in enumerate(group_records(records, cfg, rng)):
        own = _own_paragraphs(group)
        n_support = len({r.paragraphs[j].key for r in group for j in r.supporting})
        if len(own) > cfg.num_docs:
            lost_support += n_support > cfg.num_docs
            own = own[: cfg.num_docs]
        own_keys = {p.key for p in own} | {p.key for r in group for p in r.paragraphs}
        candidates = [p for p in pool if p.key not in own_keys]
        need = cfg.num_docs - len(own)
        if need > len(candidates):
            short += 1
            need = len(candidates)
        documents = own + rng.sample(candidates, need)
        rng.shuffle(documents)
        position = {p.key: i for i, p in enumerate(documents)}
        supporting_docs, supporting_facts = [], []
        for record in group:
            at = [position.get(p.key) for p in record.paragraphs]  # None: the paragraph did not fit
            supporting_docs.append(tuple(sorted(at[j] for j in record.supporting if at[j] is not None)))
            facts = [(at[j], s) for j, s in record.supporting_sentences if at[j] is not None]
            supporting_facts.append(tuple(sorted(facts)))
        samples.append(
            LongContextSample(
                id=f"{cfg.dataset}-{cfg.num_docs}-{split}-{index}",
                questions=tuple(r.question for r in group),
                answers=tuple(r.answers for r in group),
                record_ids=tuple(r.id for r in group),
                documents=tuple(documents),
                supporting_docs=tuple(supporting_docs),
                supporting_facts=tuple(supporting_facts),
                context=render(documents),
            )
        )
    if short:
        warnings.warn(
            f"the distractor pool ({len(pool)} paragraphs) is too small for data.num_docs={cfg.num_docs}: "
            f"{short} of {len(samples)} '{split}' samples use all of it and have fewer documents",
            stacklevel=2,
        )
    if lost_support:
        warnings.warn(
            f"data.num_docs={cfg.num_docs} is below the number of supporting paragraphs of {lost_support} of "
            f"{len(samples)} '{split}' samples: some of their gold paragraphs were dropped",
            stacklevel=2,
        )
    return samples
