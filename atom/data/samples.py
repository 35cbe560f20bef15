"""Sample datasets: files that already pair a context with its questions, and the generic JSONL format.

HotpotQA-style datasets give questions that ``build_samples`` groups and hides among distractors. The formats
here give the context itself (a user's documents, a chat history, one long text), so each of their records
becomes one or more ``LongContextSample``s as it stands: no distractors, no grouping across records. A record
with more than ``data.max_questions`` questions becomes several samples over the same context (ids ``-q0``,
``-q10``, ...), each a separate episode.

The generic JSONL format (``data.dataset=jsonl``), one sample per line::

    {"id": "notes-1",
     "documents": [{"title": "Lab notebook", "text": "The centrifuge was serviced on 3 May. ..."},
                   {"title": "Inventory", "text": "Two spare rotors are kept in room 114."}],
     "questions": [{"question": "When was the centrifuge serviced?", "answers": ["3 May", "May 3"],
                    "supporting": ["The centrifuge was serviced on 3 May."], "category": "dates"}]}

- ``documents`` (a list of ``{title, text}``) or ``context`` (one long text): exactly one of them. Documents are
  rendered as the paper's "Document i:" blocks; a context is read as it is, and its passages (blank-line
  separated parts, cut at 4,000 characters) serve the baselines that retrieve documents.
- ``questions``: a non-empty list of ``{question, answers, supporting?, category?}``; a line with one question may
  give ``question``, ``answers``, ``supporting`` and ``category`` at the top level instead.
- ``answers``: the accepted answers, a non-empty list of strings (exact match against any one of them).
- ``supporting`` (optional): exact substrings of one document (or one passage) that answer the question; the
  oracle teacher stores them, and coverage metrics look for them in memory.
- ``id`` (optional): the sample id (default: the line number); ``category`` (optional): results per category.

Every error names the file, the line, the record id and the field (``questions[1].answers``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atom.data.longcontext import LongContextSample, render
from atom.data.records import DataError, Paragraph, dedupe

# The gold answers of a question whose answer is not in the context (LongMemEval's "_abs" questions, LoCoMo's
# adversarial ones): a reply matching any of them after SQuAD normalization counts as a correct abstention.
ABSTENTION_ANSWERS = (
    "I don't know",
    "unanswerable",
    "not mentioned",
    "no information available",
    "not enough information",
)
PASSAGE_CHARS = 4000  # longest passage of a long text: longer blank-line-separated parts are cut at whitespace


@dataclass(frozen=True)
class Question:
    """One question of a sample under construction, its gold answers and evidence."""

    text: str
    answers: tuple[str, ...]
    facts: tuple[tuple[int, int], ...] = ()  # (document index, sentence index) of its supporting sentences
    docs: tuple[int, ...] = ()  # supporting documents beyond those of its facts (e.g. an answer session)
    category: str = ""  # its category in the source ("" = none)


def build(
    sample_id: str,
    documents: Sequence[Paragraph],
    questions: Sequence[Question],
    max_questions: int,
    context: str | None = None,
) -> list[LongContextSample]:
    """Samples of ``questions`` over ``documents``, at most ``max_questions`` questions each.

    ``context``: the long text the documents are passages of (``raw_text``); None renders the documents.
    """
    text = render(documents) if context is None else context
    out = []
    for first in range(0, len(questions), max_questions):
        group = questions[first : first + max_questions]
        suffix = f"-q{first}" if len(questions) > max_questions else ""
        out.append(
            LongContextSample(
                id=sample_id + suffix,
                questions=tuple(q.text for q in group),
                answers=tuple(q.answers for q in group),
                record_ids=tuple(f"{sample_id}#{first + i}" for i in range(len(group))),
                documents=tuple(documents),
                supporting_docs=tuple(tuple(sorted({d for d, _ in q.facts} | set(q.docs))) for q in group),
                supporting_facts=tuple(tuple(sorted(set(q.facts))) for q in group),
                context=text,
                categories=tuple(q.category for q in group) if any(q.category for q in group) else (),
                raw_text=context is not None,
            )
        )
    return out


def passages(text: str) -> list[tuple[str, str]]:
    """(title, text) passages of a long text: its blank-line-separated parts, each at most PASSAGE_CHARS long.

    The passages are exact slices of ``text`` (separators included in the preceding one), in order.
    """
    parts, start = [], 0
    while start < len(text):
        end = text.find("\n\n", start)
        end = len(text) if end < 0 else end + 2
        while end < len(text) and text[end] == "\n":
            end += 1
        while end - start > PASSAGE_CHARS:  # one long part: cut it at the last whitespace before the limit
            cut = max(text.rfind(" ", start, start + PASSAGE_CHARS), text.rfind("\n", start, start + PASSAGE_CHARS))
            cut = cut + 1 if cut > start else start + PASSAGE_CHARS
            parts.append(text[start:cut])
            start = cut
        if end > start:
            parts.append(text[start:end])
        start = end
    return [(f"Passage {i + 1}", part) for i, part in enumerate(parts)]


def with_spans(
    pairs: Sequence[tuple[str, str]], spans: Sequence[str]
) -> tuple[list[Paragraph], list[tuple[tuple[int, int], ...] | None]]:
    """Paragraphs of (title, text) ``pairs``, cut so that each span of ``spans`` is whole sentences.

    Each span is looked up (first occurrence) in the documents in order; the paragraph text is cut at the span's
    start and end, so its text is unchanged and the span is the concatenation of sentences. Returns the
    paragraphs and, per span, its (document, sentence) facts, or None where no document contains the span.
    """
    located: list[tuple[int, int, int] | None] = []
    cuts: list[set[int]] = [set() for _ in pairs]
    for span in spans:
        hit = next(((d, text.find(span)) for d, (_, text) in enumerate(pairs) if span and span in text), None)
        if hit is None:
            located.append(None)
            continue
        d, a = hit
        located.append((d, a, a + len(span)))
        cuts[d].update((a, a + len(span)))
    paragraphs, starts = [], []
    for (title, text), doc_cuts in zip(pairs, cuts):
        points = [0, *sorted(c for c in doc_cuts if 0 < c < len(text)), len(text)]
        paragraphs.append(Paragraph(title, tuple(text[a:b] for a, b in zip(points, points[1:])) or ("",)))
        starts.append(points[:-1])
    facts: list[tuple[tuple[int, int], ...] | None] = []
    for hit in located:
        if hit is None:
            facts.append(None)
            continue
        d, a, b = hit
        facts.append(tuple((d, s) for s, start in enumerate(starts[d]) if a <= start < b))
    return paragraphs, facts


def numbered_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, decoded object) of each non-blank line of a JSONL file; bad JSON names its line.

    Lines end at a newline only: ``str.splitlines`` would also cut at U+2028, U+2029 and U+0085, which JSON strings
    may hold raw (``json.dumps(..., ensure_ascii=False)`` writes them so).
    """
    from atom.data.loaders import _read_text

    for line_no, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError as exc:
            hint = " (expected JSONL: one sample object per line)" if line.lstrip()[:1] == "[" else ""
            raise DataError(f"{path}: line {line_no}: not valid JSON{hint}: {exc}") from exc


def _field(raw: dict, key: str, kind: type, where: str, name: str | None = None) -> Any:
    value = raw.get(key)
    if not isinstance(value, kind) or (kind is str and not value.strip()):
        shown = "missing" if key not in raw else f"got {type(value).__name__}"
        what = {str: "a non-empty string", list: "a list", dict: "an object"}.get(kind, kind.__name__)
        raise DataError(f"{where}: field '{name or key}' must be {what} ({shown})")
    return value


def _strings(value: Any, name: str, where: str, allow_empty: bool = False) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not (value or allow_empty):
        shown = type(value).__name__ if not isinstance(value, list) else f"{len(value)} items"
        raise DataError(f"{where}: field '{name}' must be a {'' if allow_empty else 'non-empty '}list of strings "
                        f"(got {shown})")  # fmt: skip
    return value


def jsonl_samples(raw: Any, where: str, sample_id: str, max_questions: int) -> list[LongContextSample]:
    """The samples of one line of the generic JSONL format (module docstring)."""
    if not isinstance(raw, dict):
        raise DataError(f"{where}: a line must be a JSON object, got {type(raw).__name__}")
    if ("documents" in raw) == ("context" in raw):
        raise DataError(f"{where}: give exactly one of the fields 'documents' (a list of {{title, text}}) or "
                        f"'context' (one text); the line has keys {sorted(raw)}")  # fmt: skip
    if "questions" in raw:
        items = _field(raw, "questions", list, where)
        if not items:
            raise DataError(f"{where}: field 'questions' is an empty list")
        named = [(f"questions[{i}].", q) for i, q in enumerate(items)]
    else:
        named = [("", raw)]
    context = None
    if "documents" in raw:
        pairs = []
        for i, doc in enumerate(_field(raw, "documents", list, where)):
            if not isinstance(doc, dict):
                raise DataError(f"{where}: field 'documents[{i}]' must be an object {{title, text}}")
            title = doc.get("title", "")
            if not isinstance(title, str):
                raise DataError(f"{where}: field 'documents[{i}].title' must be a string")
            pairs.append((title, _field(doc, "text", str, where, f"documents[{i}].text")))
        if not pairs:
            raise DataError(f"{where}: field 'documents' is an empty list")
    else:
        context = _field(raw, "context", str, where)
        pairs = passages(context)
    parsed = []
    for prefix, q in named:
        if not isinstance(q, dict):
            raise DataError(f"{where}: field '{prefix.rstrip('.')}' must be an object {{question, answers}}")
        text = _field(q, "question", str, where, prefix + "question")
        answers = dedupe(_strings(q.get("answers"), prefix + "answers", where))
        if not answers:
            raise DataError(f"{where}: field '{prefix}answers' holds only empty strings")
        spans = _strings(q.get("supporting", []), prefix + "supporting", where, allow_empty=True)
        category = q.get("category", "")
        if not isinstance(category, (str, int)) or isinstance(category, bool):
            raise DataError(f"{where}: field '{prefix}category' must be a string")
        parsed.append((prefix, text, answers, spans, str(category)))
    all_spans = [span for *_, spans, _ in parsed for span in spans]
    paragraphs, found = with_spans(pairs, all_spans)
    questions, k = [], 0
    for prefix, text, answers, spans, category in parsed:
        facts: list[tuple[int, int]] = []
        for j, span in enumerate(spans):
            if found[k] is None:
                inside = "a document" if context is None else "one passage (a blank-line-separated part) of the context"
                raise DataError(f"{where}: field '{prefix}supporting[{j}]' is not an exact substring of {inside}: "
                                f"{span[:60]!r}")  # fmt: skip
            facts += found[k]
            k += 1
        questions.append(Question(text, answers, tuple(facts), category=category))
    return build(sample_id, paragraphs, questions, max_questions, context)


def load_jsonl(path: str | Path, max_records: int = 0, max_questions: int = 10) -> list[LongContextSample]:
    """Samples of a generic JSONL file (first ``max_records`` lines with a record; 0 = all)."""
    path = Path(path)
    out, ids = [], set()
    lines: dict[str, int] = {}  # sample id -> its line: "a" with 11 questions gives "a-q10", which another id can be
    for index, (line_no, raw) in enumerate(numbered_lines(path)):
        if max_records and index >= max_records:
            break
        rid = raw.get("id", f"line{line_no}") if isinstance(raw, dict) else "unknown"
        where = f"{path}: line {line_no} (id {rid!r})"
        if isinstance(raw, dict) and (not isinstance(rid, (str, int)) or isinstance(rid, bool)):
            raise DataError(f"{where}: field 'id' must be a string")
        if str(rid) in ids:
            raise DataError(f"{where}: field 'id' repeats an earlier line's id; sample ids must be unique")
        ids.add(str(rid))
        for sample in jsonl_samples(raw, where, f"jsonl-{rid}", max_questions):
            if sample.id in lines:
                raise DataError(f"{where}: sample id {sample.id!r} repeats line {lines[sample.id]}'s; give the line "
                                "another 'id'")  # fmt: skip
            lines[sample.id] = line_no
            out.append(sample)
    return out
