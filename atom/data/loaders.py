"""Loaders for HotpotQA, 2WikiMultihopQA and MuSiQue: original file formats or a ``datasets`` hub copy.

Original formats (the upstream dev/train files):

- HotpotQA (distractor) and 2WikiMultihopQA: one JSON array; each record has ``_id``, ``question``,
  ``answer``, ``context: [[title, [sentence, ...]], ...]`` and
  ``supporting_facts: [[title, sentence index], ...]``.
- MuSiQue-Ans: JSONL; each record has ``id``, ``question``, ``answer``, ``answer_aliases`` and
  ``paragraphs: [{idx, title, paragraph_text, is_supporting}, ...]``.

Hub copies use the ``datasets`` layouts: ``hotpot_qa`` stores ``context={"title": [...],
"sentences": [[...]]}`` and ``supporting_facts={"title": [...], "sent_id": [...]}``; 2Wiki copies store the
same dict layout (sentences under ``content``) or the original lists; MuSiQue copies keep the upstream keys.
Every row, from a file or the hub, goes through the same per-record function.

Anything malformed raises ``DataError`` naming the source, the record (index and id) and the problem; no
record is ever skipped silently. The one tolerated defect is 2Wiki's supporting fact that points past its
paragraph's last sentence: the paragraph stays supporting and only that sentence index is dropped.

MuSiQue paragraphs are kept as one sentence each (the paragraph text): MuSiQue marks gold paragraphs, not
sentences, and a rule-based sentence split would only add abbreviation errors.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atom.data.records import DATASETS, DataError, Paragraph, QARecord, dedupe
from atom.data.synthetic import SyntheticConfig, generate

log = logging.getLogger(__name__)
_ID_RE = re.compile(r'"_?id"\s*:\s*"((?:[^"\\]|\\.)*)"')


@dataclass
class DataConfig:
    """The ``data`` section: source (read by ``load_records``), the long-context protocol (``build_samples``),
    the split and batches (``AtomDataModule``) and chunking (the rollout engine's ``TokenChunker``).

    It lives here, the lowest module that reads it, so that nothing in the package imports upward for it.
    """

    dataset: str = "synthetic"  # hotpotqa 2wiki musique synthetic jsonl longmemeval locomo memoryagentbench
    path: str = ""  # local file in the original format, or a datasets hub id (unused for synthetic)
    hub_config: str = ""  # datasets config name of a hub id ("" = default; hotpot_qa needs "distractor")
    hub_split: str = "validation"  # datasets split of a hub id
    max_records: int = 0  # use the first N records in file order; 0 = all
    val_fraction: float = 0.2  # share of records held out for validation/evaluation; 1.0 = all are evaluation
    eval_path: str = ""  # evaluation data (file or hub id) apart from path; "" = a val_fraction split of path
    eval_hub_split: str = "validation"  # datasets split of an eval_path hub id
    eval_max_records: int = 0  # with eval_path: evaluate the first N records of it; 0 = all
    num_docs: int = 200  # documents per long-context sample (the paper: 200 / 400 / 800)
    single_question_prob: float = 0.5  # probability that a sample has one question (else 2..max_questions)
    max_questions: int = 10  # most questions grouped into one sample
    seed: int = 0  # seed of the split, the grouping, the distractors and the document order
    chunk_tokens: int = 4096  # tokens per chunk the agent reads per step
    chunk_overlap: int = 100  # tokens shared by consecutive chunks
    max_chunks: int = 40  # centre-truncate contexts to this many chunks; 0 = never truncate
    chunk_margin: int = 0  # tokens of context added on both sides of each chunk (the release: 100)
    max_context_tokens: int = 0  # centre-truncate the context to this many tokens first (release: 160000); 0 = never
    locomo_adversarial: bool = False  # LoCoMo: also ask category-5 adversarial questions (scored as abstention)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # the synthetic task (dataset=synthetic)

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"data.dataset must be one of {list(DATASETS)}, got '{self.dataset}'")
        if self.max_records < 0 or self.eval_max_records < 0:
            raise ValueError(
                f"data.max_records and data.eval_max_records must be >= 0 (0 = all), got {self.max_records}, "
                f"{self.eval_max_records}"
            )
        if self.eval_path and self.dataset == "synthetic":
            raise ValueError("data.eval_path is for real datasets; the synthetic task uses data.synthetic.val_seed")
        if self.chunk_margin < 0 or self.max_context_tokens < 0:
            raise ValueError(
                f"data.chunk_margin and data.max_context_tokens must be >= 0, got {self.chunk_margin}, "
                f"{self.max_context_tokens}"
            )
        if not 0.0 <= self.val_fraction <= 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1], got {self.val_fraction}")
        if self.num_docs < 1:
            raise ValueError(f"data.num_docs must be >= 1, got {self.num_docs}")
        if not 0.0 <= self.single_question_prob <= 1.0:
            raise ValueError(f"data.single_question_prob must be in [0, 1], got {self.single_question_prob}")
        if self.max_questions < 1:
            raise ValueError(f"data.max_questions must be >= 1, got {self.max_questions}")
        if self.chunk_tokens < 1:
            raise ValueError(f"data.chunk_tokens must be >= 1, got {self.chunk_tokens}")
        if not 0 <= self.chunk_overlap < self.chunk_tokens:
            raise ValueError(
                f"data.chunk_overlap must be in 0..chunk_tokens - 1 ({self.chunk_tokens - 1}), got {self.chunk_overlap}"
            )
        if self.max_chunks < 0:
            raise ValueError(f"data.max_chunks must be >= 0 (0 = no truncation), got {self.max_chunks}")


def _where(source: str, index: int, raw: Any) -> str:
    rid = raw.get("_id", raw.get("id")) if isinstance(raw, dict) else None
    return f"{source}: record {index} (id {'unknown' if rid is None else repr(rid)})"


def _get(raw: dict, keys: tuple[str, ...], kind: type | tuple[type, ...], where: str) -> Any:
    """The value of the first present key among ``keys``, checked to be of type ``kind``."""
    for key in keys:
        if key in raw:
            value = raw[key]
            if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
                name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
                raise DataError(f"{where}: '{key}' must be {name}, got {type(value).__name__}")
            return value
    raise DataError(f"{where}: missing key '{keys[0]}' (record keys: {sorted(raw)})")


def _str_list(value: Any, what: str, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: {what} must be a list of strings")
    return value


def _context_pairs(context: Any, where: str) -> list[tuple[str, list[str]]]:
    """(title, sentences) pairs from the original list layout or the hub's dict-of-columns layout."""
    if isinstance(context, dict):
        titles = _str_list(context.get("title"), "context.title", where)
        key = "sentences" if "sentences" in context else "content"
        columns = context.get(key)
        if not isinstance(columns, list) or len(columns) != len(titles):
            raise DataError(f"{where}: context.{key} must be a list with one entry per title")
        return [(t, _str_list(s, f"sentences of paragraph {t!r}", where)) for t, s in zip(titles, columns)]
    if not isinstance(context, list):
        raise DataError(f"{where}: 'context' must be a list of [title, sentences], got {type(context).__name__}")
    pairs = []
    for j, item in enumerate(context):
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)):
            raise DataError(f"{where}: context[{j}] must be [title, [sentence, ...]]")
        pairs.append((item[0], _str_list(item[1], f"context[{j}] sentences", where)))
    return pairs


def _fact_pairs(facts: Any, where: str) -> list[tuple[str, int]]:
    if isinstance(facts, dict):
        titles, ids = facts.get("title"), facts.get("sent_id")
        if not isinstance(titles, list) or not isinstance(ids, list) or len(titles) != len(ids):
            raise DataError(f"{where}: supporting_facts must have equally long 'title' and 'sent_id' lists")
        facts = list(zip(titles, ids))
    if not isinstance(facts, list):
        raise DataError(f"{where}: 'supporting_facts' must be a list of [title, sentence index]")
    pairs = []
    for j, item in enumerate(facts):
        ok = isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)
        if not ok or not isinstance(item[1], int) or isinstance(item[1], bool) or item[1] < 0:
            raise DataError(f"{where}: supporting_facts[{j}] must be [title, sentence index >= 0], got {item!r}")
        pairs.append((item[0], item[1]))
    return pairs


def _spaced(i: int, sentence: str) -> str:
    return " " + sentence if i > 0 and sentence and not sentence[0].isspace() else sentence


def hotpot_style_record(raw: Any, dataset: str, where: str) -> QARecord:
    """Convert one HotpotQA or 2Wiki record (original list layout or hub dict layout)."""
    if not isinstance(raw, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(raw).__name__}")
    rid = _get(raw, ("_id", "id"), str, where)
    question = _get(raw, ("question",), str, where)
    answer = _get(raw, ("answer",), str, where)
    if not answer.strip():
        raise DataError(f"{where}: 'answer' is empty")
    pairs = _context_pairs(_get(raw, ("context",), (list, dict), where), where)
    if dataset == "2wiki":  # bare sentences: give each later one its separator (the Paragraph convention)
        pairs = [(title, [_spaced(i, s) for i, s in enumerate(sentences)]) for title, sentences in pairs]
    paragraphs = tuple(Paragraph(title, tuple(sentences)) for title, sentences in pairs)
    first_index: dict[str, int] = {}
    for i, (title, _) in enumerate(pairs):
        first_index.setdefault(title, i)  # 2Wiki repeats identical paragraphs; facts point at the first copy
    supporting: set[int] = set()
    sentences: set[tuple[int, int]] = set()
    for title, s in _fact_pairs(_get(raw, ("supporting_facts",), (list, dict), where), where):
        if title not in first_index:
            raise DataError(f"{where}: supporting fact title {title!r} is not a context title {list(first_index)}")
        p = first_index[title]
        supporting.add(p)
        if s < len(paragraphs[p].sentences):
            sentences.add((p, s))
        else:  # the documented 2Wiki quirk: keep the paragraph as supporting, drop the missing sentence
            log.info(
                "%s: supporting fact (%r, %d) points past the paragraph's last sentence; dropped",
                where,
                title,
                s,
            )
    return QARecord(
        id=rid,
        question=question,
        answers=(answer,),
        paragraphs=paragraphs,
        supporting=tuple(sorted(supporting)),
        supporting_sentences=tuple(sorted(sentences)),
        dataset=dataset,
    )


def musique_record(raw: Any, where: str) -> QARecord:
    """Convert one MuSiQue record (upstream keys, from a file or a hub copy)."""
    if not isinstance(raw, dict):
        hint = " (MuSiQue files are JSONL: one record object per line)" if isinstance(raw, list) else ""
        raise DataError(f"{where}: a record must be a JSON object, got {type(raw).__name__}{hint}")
    rid = _get(raw, ("id",), str, where)
    question = _get(raw, ("question",), str, where)
    answer = _get(raw, ("answer",), str, where)
    if raw.get("answerable") is False:
        raise DataError(f"{where}: unanswerable record (answerable: false); use the MuSiQue-Ans file")
    if not answer.strip():
        raise DataError(f"{where}: 'answer' is empty")
    aliases = _str_list(raw.get("answer_aliases", []), "'answer_aliases'", where)
    paragraphs, supporting = [], []
    for j, item in enumerate(_get(raw, ("paragraphs",), list, where)):
        here = f"{where}: paragraphs[{j}]"
        if not isinstance(item, dict):
            raise DataError(f"{here} must be an object with title, paragraph_text, is_supporting")
        title = _get(item, ("title",), str, here)
        text = _get(item, ("paragraph_text",), str, here)
        if _get(item, ("is_supporting",), bool, here):
            supporting.append(j)
        paragraphs.append(Paragraph(title, (text,)))
    return QARecord(
        id=rid,
        question=question,
        answers=dedupe([answer, *aliases]),
        paragraphs=tuple(paragraphs),
        supporting=tuple(supporting),
        supporting_sentences=tuple((j, 0) for j in supporting),  # MuSiQue marks paragraphs, not sentences
        dataset="musique",
    )


def _json_array(path: Path) -> Iterator[tuple[int, Any]]:
    """Decode a JSON array element by element, so a broken file names the record where decoding failed."""
    text = _read_text(path)
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "[":
        raise DataError(
            f"{path}: expected one JSON array of records (the upstream format), found {text[pos : pos + 20]!r}"
        )
    pos, index = _skip_ws(text, pos + 1), 0
    if text.startswith("]", pos):
        _check_end(text, pos, path)
        return
    while True:
        if pos >= len(text):
            raise DataError(f"{path}: record {index} (id unknown): file ends inside the record array (truncated?)")
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            rid = _partial_id(text[pos : pos + 4096])
            raise DataError(f"{path}: record {index} (id {rid}): not valid JSON: {exc}") from exc
        yield index, obj
        pos, index = _skip_ws(text, pos), index + 1
        if text.startswith(",", pos):
            pos = _skip_ws(text, pos + 1)
        elif text.startswith("]", pos):
            _check_end(text, pos, path)
            return
        else:
            raise DataError(
                f"{path}: record {index} (id unknown): expected ',' or ']' after record {index - 1} (file truncated?)"
            )


def _partial_id(head: str) -> str:
    # A broken record usually still starts with its id ("_id" / "id" come first upstream): name it if we can.
    match = _ID_RE.search(head)
    return repr(match.group(1)) if match else "unknown"


def _check_end(text: str, pos: int, path: Path) -> None:
    if text[pos + 1 :].strip():
        raise DataError(f"{path}: unexpected data after the closing ']' of the record array")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from exc


def _jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    index = 0
    # "\n" only: str.splitlines also cuts at U+2028 / U+2029 / U+0085, which JSON strings may hold raw
    for line_no, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            rid = _partial_id(line[:4096])
            hint = " (expected JSONL: one record per line, not a JSON array)" if line.lstrip()[:1] == "[" else ""
            raise DataError(f"{path}: record {index} (line {line_no}, id {rid}): not valid JSON{hint}: {exc}") from exc
        yield index, obj
        index += 1


def _take(items: Iterator[tuple[int, Any]], max_records: int) -> Iterator[tuple[int, Any]]:
    for index, raw in items:
        if max_records and index >= max_records:
            return
        yield index, raw


def load_hotpotqa(path: str | Path, max_records: int = 0) -> list[QARecord]:
    """HotpotQA distractor-setting records from the upstream JSON array (first ``max_records``; 0 = all)."""
    path = Path(path)
    items = _take(_json_array(path), max_records)
    return [hotpot_style_record(raw, "hotpotqa", _where(str(path), i, raw)) for i, raw in items]


def load_2wiki(path: str | Path, max_records: int = 0) -> list[QARecord]:
    """2WikiMultihopQA records from the upstream JSON array (first ``max_records``; 0 = all)."""
    path = Path(path)
    items = _take(_json_array(path), max_records)
    return [hotpot_style_record(raw, "2wiki", _where(str(path), i, raw)) for i, raw in items]


def load_musique(path: str | Path, max_records: int = 0) -> list[QARecord]:
    """MuSiQue-Ans records from the upstream JSONL file (first ``max_records``; 0 = all)."""
    path = Path(path)
    return [musique_record(raw, _where(str(path), i, raw)) for i, raw in _take(_jsonl(path), max_records)]


FILE_LOADERS = {"hotpotqa": load_hotpotqa, "2wiki": load_2wiki, "musique": load_musique}


def records_from_rows(rows: Iterable[dict], dataset: str, source: str, max_records: int = 0) -> list[QARecord]:
    """Convert rows of a ``datasets`` hub copy (or any dicts in an upstream or hub layout) into records."""
    if dataset not in FILE_LOADERS:
        raise DataError(f"unknown dataset {dataset!r} for row conversion; valid: {sorted(FILE_LOADERS)}")
    out = []
    for i, raw in enumerate(rows):
        if max_records and i >= max_records:
            break
        where = _where(source, i, raw)
        out.append(musique_record(raw, where) if dataset == "musique" else hotpot_style_record(raw, dataset, where))
    return out


def _looks_local(path: str) -> bool:
    # Hub ids look like "owner/name"; a file suffix or an explicit directory prefix means a local file.
    return path.startswith(("/", ".", "~")) or Path(path).suffix in (".json", ".jsonl", ".gz")


def load_records(cfg: DataConfig) -> list[QARecord]:
    """The records ``cfg`` names: a local file in its original format, a hub id, or the synthetic task."""
    if cfg.dataset not in DATASETS:
        raise DataError(f"data.dataset: unknown dataset {cfg.dataset!r}; valid names are {list(DATASETS)}")
    if cfg.dataset == "synthetic":
        records = generate(cfg.synthetic)
        return records[: cfg.max_records] if cfg.max_records else records
    if not cfg.path:
        raise DataError(
            f"data.path is empty: set data.path to a local {cfg.dataset} file in its original format "
            f"(e.g. the samples under the shared data folder) or to a datasets hub id"
        )
    path = Path(cfg.path).expanduser()
    if path.is_file():
        records = FILE_LOADERS[cfg.dataset](path, cfg.max_records)
        if not records:  # an empty array or JSONL would evaluate "0 samples" and report EM 0.0
            raise DataError(f"{path}: the file holds no records; point data.path at a {cfg.dataset} file with records")
        return records
    if path.exists():
        raise DataError(f"data.path={cfg.path!r} is a directory; point it at the {cfg.dataset} file itself")
    if _looks_local(cfg.path):
        raise DataError(f"data.path={cfg.path!r}: file not found")
    source = f"hub dataset {cfg.path} (config {cfg.hub_config or 'default'}, split {cfg.hub_split})"
    try:
        import datasets

        rows = datasets.load_dataset(cfg.path, cfg.hub_config or None, split=cfg.hub_split)
    except Exception as exc:  # network, missing split, unknown id: all end here, with the cause attached
        raise DataError(f"data.path={cfg.path!r} is not a local file and loading it as {source} failed: {exc}") from exc
    if cfg.max_records:
        rows = rows.select(range(min(cfg.max_records, len(rows))))
    if len(rows) == 0:
        raise DataError(f"{source}: no records; choose another data.hub_split or data.hub_config")
    return records_from_rows(rows, cfg.dataset, source)
