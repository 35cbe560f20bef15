"""Loaders of the memory-agent benchmarks, in their original formats, and ``load_samples`` for every sample dataset.

- **LongMemEval** (``data.dataset=longmemeval``; the upstream JSON array, e.g. ``longmemeval_s.json``): each record
  is one question over its own chat-history haystack. Sessions become documents titled
  ``"Session k (<haystack date>)"`` whose sentences are the turns, ``"user: ..."`` / ``"assistant: ..."`` one per
  line, in haystack order. Session ids are never shown (upstream, the answer sessions' ids say ``answer_``).
  Turns with ``has_answer: true`` are the supporting facts; the ``answer_session_ids`` sessions are supporting
  documents. The question is asked as ``"<question> (asked on <question_date>)"``. Its category is
  ``question_type``, except abstention questions (``question_id`` ending in ``_abs``): category ``abstention``,
  and their gold answers are ``ABSTENTION_ANSWERS`` ("I don't know", "unanswerable", ...), so a reply is correct
  when it declines; the upstream explanation in ``answer`` is not a string to match and is not used.
- **LoCoMo** (``data.dataset=locomo``; the upstream JSON array of conversations): sessions ``session_<n>`` in
  order of n become documents ``"Session n (<session_<n>_date_time>)"`` with one sentence per turn,
  ``"<speaker>: <text>"`` (a shared photo's caption appended as ``[shares a photo: ...]``). QA ``evidence`` dia_ids
  ("D1:3") are the supporting facts; an id that names no turn is dropped with a log line (the upstream data has a
  few). Categories: 1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5 adversarial. Adversarial questions
  are left out unless ``data.locomo_adversarial=true``; they are then scored as abstention (their premise is false).
- **MemoryAgentBench** (``data.dataset=memoryagentbench``; a split's parquet file, or the hub id with
  ``data.hub_split``): each row's ``context`` is read as one long text (its passages serve the retrieval
  baselines), with its ``questions`` and, per question, ``answers`` (any one of the listed strings is correct).
  The category is ``metadata.source`` when the row has one, else the split (Accurate_Retrieval,
  Test_Time_Learning, Long_Range_Understanding, Conflict_Resolution; read from the file name).

Records with more questions than ``data.max_questions`` become several samples over the same context
(``atom.data.samples.build``). Errors name the file, the record (index and id) and the field.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from atom.data.loaders import DataConfig, _json_array, _take
from atom.data.longcontext import LongContextSample
from atom.data.records import SAMPLE_DATASETS, DataError, Paragraph
from atom.data.samples import ABSTENTION_ANSWERS, Question, build, load_jsonl, passages

log = logging.getLogger(__name__)

LOCOMO_CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
MAB_SPLITS = ("Accurate_Retrieval", "Test_Time_Learning", "Long_Range_Understanding", "Conflict_Resolution")
_SESSION = re.compile(r"session_(\d+)$")


def _where(source: str, index: int, rid: Any) -> str:
    return f"{source}: record {index} (id {'unknown' if rid is None else repr(rid)})"


def _need(raw: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in raw:
        raise DataError(f"{where}: missing field '{key}' (record keys: {sorted(raw)})")
    value = raw[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataError(f"{where}: field '{key}' must be {name}, got {type(value).__name__}")
    return value


def _answer(value: Any, field: str, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).strip():
        raise DataError(f"{where}: field '{field}' must be a non-empty string or number, got {value!r}")
    if isinstance(value, float) and value.is_integer():  # 6.0 is the answer "6", not "6.0" (EM compares text)
        value = int(value)
    return str(value)


def _ids(raw: dict, key: str, n: int | None, where: str) -> list:
    """Session ids: a list of strings or numbers (``n``: its required length), compared with ``in``."""
    ids = raw[key] if n is None else raw.get(key, [None] * n)
    if not isinstance(ids, list) or not all(isinstance(i, (str, int, type(None))) for i in ids):
        raise DataError(f"{where}: field '{key}' must be a list of session ids (strings), got {ids!r:.80}")
    return ids


def _object(raw: Any, where: str) -> dict:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(raw).__name__}")
    return raw


def longmemeval_samples(raw: Any, where: str, max_questions: int) -> list[LongContextSample]:
    """The sample of one LongMemEval record (module docstring)."""
    raw = _object(raw, where)
    qid = _need(raw, "question_id", str, where)
    sessions = _need(raw, "haystack_sessions", list, where)
    dates = _need(raw, "haystack_dates", list, where)
    ids = _ids(raw, "haystack_session_ids", len(sessions), where)
    if len(dates) != len(sessions) or len(ids) != len(sessions):
        raise DataError(f"{where}: fields 'haystack_sessions', 'haystack_dates' and 'haystack_session_ids' must "
                        f"be lists of one length ({len(sessions)}, {len(dates)}, {len(ids)})")  # fmt: skip
    _need(raw, "answer_session_ids", list, where)
    wanted = set(_ids(raw, "answer_session_ids", None, where))
    documents, facts, docs = [], [], []
    for k, (session, date) in enumerate(zip(sessions, dates)):
        if not isinstance(session, list):
            raise DataError(f"{where}: field 'haystack_sessions[{k}]' must be a list of turns")
        turns = []
        for j, turn in enumerate(session):
            here = f"haystack_sessions[{k}][{j}]"
            if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or "content" not in turn:
                raise DataError(f"{where}: field '{here}' must be a turn {{role, content, has_answer?}}")
            if not isinstance(turn["content"], str):
                raise DataError(f"{where}: field '{here}.content' must be a string")
            turns.append(("\n" if j else "") + f"{turn['role']}: {turn['content']}")
            if turn.get("has_answer") is True:
                facts.append((k, j))
        documents.append(Paragraph(f"Session {k + 1} ({date})", tuple(turns) or ("(empty session)",)))
        if ids[k] in wanted:
            docs.append(k)
    abstain = qid.endswith("_abs")
    question = _need(raw, "question", str, where)
    date = raw.get("question_date")
    text = f"{question} (asked on {date})" if isinstance(date, str) and date else question
    answers = ABSTENTION_ANSWERS if abstain else (_answer(raw.get("answer"), "answer", where),)
    category = "abstention" if abstain else _need(raw, "question_type", str, where)
    q = Question(text, answers, tuple(facts), tuple(docs), category)
    return build(f"longmemeval-{qid}", documents, [q], max_questions)


def _locomo_turn(turn: Any, where: str, here: str) -> tuple[str, str]:
    if not isinstance(turn, dict):
        raise DataError(f"{where}: field '{here}' must be a turn {{speaker, dia_id, text}}")
    for key in ("speaker", "dia_id", "text"):
        if not isinstance(turn.get(key), str):
            raise DataError(f"{where}: field '{here}.{key}' must be a string")
    line = f"{turn['speaker']}: {turn['text']}"
    if isinstance(turn.get("blip_caption"), str) and turn["blip_caption"].strip():
        line += f" [shares a photo: {turn['blip_caption'].strip()}]"
    return turn["dia_id"], line


def locomo_samples(raw: Any, where: str, max_questions: int, adversarial: bool) -> list[LongContextSample]:
    """The samples of one LoCoMo conversation (module docstring)."""
    raw = _object(raw, where)
    sid = _need(raw, "sample_id", (str, int), where)
    conv = _need(raw, "conversation", dict, where)
    numbers = sorted(int(m.group(1)) for key in conv if (m := _SESSION.match(key)) and isinstance(conv[key], list))
    if not numbers:
        raise DataError(f"{where}: field 'conversation' has no session_<n> list of turns (keys: {sorted(conv)})")
    documents, position = [], {}
    for k, n in enumerate(numbers):
        lines = []
        for j, turn in enumerate(conv[f"session_{n}"]):
            dia_id, line = _locomo_turn(turn, where, f"conversation.session_{n}[{j}]")
            position[dia_id] = (k, j)
            lines.append(("\n" if j else "") + line)
        date = conv.get(f"session_{n}_date_time", "")
        title = f"Session {n} ({date})" if isinstance(date, str) and date else f"Session {n}"
        documents.append(Paragraph(title, tuple(lines) or ("(empty session)",)))
    questions = []
    for i, qa in enumerate(_need(raw, "qa", list, where)):
        here = f"{where}: qa[{i}]"
        if not isinstance(qa, dict):
            raise DataError(f"{here} must be an object {{question, answer, evidence, category}}")
        category = _need(qa, "category", int, here)
        if category not in LOCOMO_CATEGORIES:
            raise DataError(f"{here}: field 'category' must be one of {sorted(LOCOMO_CATEGORIES)}, got {category}")
        if category == 5 and not adversarial:
            continue
        text = _need(qa, "question", str, here)
        answers = ABSTENTION_ANSWERS if category == 5 else (_answer(qa.get("answer"), "answer", here),)
        evidence = qa.get("evidence") or []
        evidence = [evidence] if isinstance(evidence, str) else evidence  # one dia_id, not its characters
        if not isinstance(evidence, list):
            raise DataError(f"{here}: field 'evidence' must be a list of dia_ids, got {type(evidence).__name__}")
        facts = []
        for item in evidence:
            for dia_id in re.split(r"[;,\s]+", str(item).strip()):
                if dia_id in position:
                    facts.append(position[dia_id])
                elif dia_id:
                    log.info("%s: evidence %r names no turn of the conversation; dropped", here, dia_id)
        questions.append(Question(text, answers, tuple(facts), category=LOCOMO_CATEGORIES[category]))
    if not questions:
        return []
    return build(f"locomo-{sid}", documents, questions, max_questions)


def mab_samples(raw: Any, where: str, sample_id: str, split: str, max_questions: int) -> list[LongContextSample]:
    """The samples of one MemoryAgentBench row (module docstring)."""
    raw = _object(raw, where)
    context = _need(raw, "context", str, where)
    if not context.strip():
        raise DataError(f"{where}: field 'context' is empty")
    questions, answers = _need(raw, "questions", list, where), _need(raw, "answers", list, where)
    if not questions or len(questions) != len(answers):
        raise DataError(f"{where}: fields 'questions' and 'answers' must be non-empty lists of one length "
                        f"({len(questions)} questions, {len(answers)} answer lists)")  # fmt: skip
    metadata = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    source = metadata.get("source")
    category = source if isinstance(source, str) and source else split
    parsed = []
    for i, (question, accepted) in enumerate(zip(questions, answers)):
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{where}: field 'questions[{i}]' must be a non-empty string")
        accepted = [accepted] if isinstance(accepted, (str, int, float)) else accepted
        if not isinstance(accepted, (list, tuple)) or not accepted:
            raise DataError(f"{where}: field 'answers[{i}]' must be a non-empty list of accepted strings")
        golds = tuple(dict.fromkeys(_answer(a, f"answers[{i}]", where) for a in accepted))
        parsed.append(Question(question, golds, category=category))
    documents = [Paragraph(title, (text,)) for title, text in passages(context)]
    return build(sample_id, documents, parsed, max_questions, context=context)


def _mab_split(path: Path) -> str:
    return next((s for s in MAB_SPLITS if s.lower() in str(path).lower()), "")


def _parquet_rows(path: Path) -> Iterator[dict]:
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged or non-parquet file
        raise DataError(f"{path}: not a readable parquet file ({exc})") from exc
    for batch in reader.iter_batches(batch_size=1):  # one row at a time: contexts can be millions of characters
        yield from batch.to_pylist()


def samples_from_rows(
    rows: Iterable[Any], cfg: DataConfig, source: str, split: str = "", stem: str = ""
) -> list[LongContextSample]:
    """Samples of ``cfg.dataset`` from its records in order (a file's or a hub split's), the first max_records."""
    out: list[LongContextSample] = []
    seen: dict[str, int] = {}  # sample id -> its record: ids key the rollout engine's chunk cache and the split
    for index, raw in _take(enumerate(rows), cfg.max_records):
        before = len(out)
        rid = raw.get({"longmemeval": "question_id", "locomo": "sample_id"}.get(cfg.dataset, "id")) if isinstance(
            raw, dict) else None  # fmt: skip
        where = _where(source, index, rid)
        if cfg.dataset == "longmemeval":
            out += longmemeval_samples(raw, where, cfg.max_questions)
        elif cfg.dataset == "locomo":
            out += locomo_samples(raw, where, cfg.max_questions, cfg.locomo_adversarial)
        else:
            sample_id = f"memoryagentbench-{split or stem}-{index}"
            out += mab_samples(raw, where, sample_id, split, cfg.max_questions)
        for sample in out[before:]:
            if sample.id in seen:
                raise DataError(f"{where}: sample id {sample.id!r} repeats record {seen[sample.id]}'s; the ids of "
                                "a file's records must be unique")  # fmt: skip
            seen[sample.id] = index
    return out


def load_samples(cfg: DataConfig) -> list[LongContextSample]:
    """The samples of a sample dataset (``SAMPLE_DATASETS``): a local file in its format, or a hub split."""
    if cfg.dataset not in SAMPLE_DATASETS:
        raise DataError(f"data.dataset={cfg.dataset!r} is not a sample dataset {list(SAMPLE_DATASETS)}")
    if not cfg.path:
        raise DataError(f"data.path is empty: set it to a {cfg.dataset} file (docs/data.md)")
    path = Path(cfg.path).expanduser()
    if path.is_dir():
        raise DataError(f"data.path={cfg.path!r} is a directory; point it at the {cfg.dataset} file itself")
    if path.is_file():
        if cfg.dataset == "jsonl":
            samples = load_jsonl(path, cfg.max_records, cfg.max_questions)
        elif cfg.dataset == "memoryagentbench":
            samples = samples_from_rows(_parquet_rows(path), cfg, str(path), _mab_split(path), path.stem)
        else:
            samples = samples_from_rows((raw for _, raw in _json_array(path)), cfg, str(path))
    elif cfg.dataset == "jsonl" or cfg.path.startswith(("/", ".", "~")) or path.suffix:
        raise DataError(f"data.path={cfg.path!r}: file not found")
    else:
        source = f"hub dataset {cfg.path} (config {cfg.hub_config or 'default'}, split {cfg.hub_split})"
        try:
            import datasets

            rows = datasets.load_dataset(cfg.path, cfg.hub_config or None, split=cfg.hub_split)
        except Exception as exc:  # network, missing split, unknown id: all end here, with the cause attached
            raise DataError(f"data.path={cfg.path!r}: loading it as {source} failed: {exc}") from exc
        samples = samples_from_rows(rows, cfg, source, _mab_split(Path(cfg.hub_split)), cfg.hub_split)
    if not samples:
        raise DataError(f"{path}: no samples (no records, or no question kept); check data.path and its format")
    return samples
