"""Sample datasets on invented fixture files: the generic JSONL format, LongMemEval, LoCoMo and MemoryAgentBench
(fields, evidence, categories, abstention), one-line errors naming file, record and field, their statistics
through ``python -m atom.data_stats``, and the oracle and a baseline through ``python -m atom.evaluate``."""

from __future__ import annotations

import dataclasses
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from atom.data.datamodule import AtomDataModule
from atom.data.loaders import DataConfig
from atom.data.memory_benchmarks import load_samples
from atom.data.records import DataError
from atom.data.samples import ABSTENTION_ANSWERS, passages
from atom.data_stats import main as data_main
from atom.evaluate import main as evaluate_main

from .conftest import FIXTURES, TINY

FILES = {
    "jsonl": FIXTURES / "own_data.jsonl",
    "longmemeval": FIXTURES / "longmemeval.json",
    "locomo": FIXTURES / "locomo.json",
    "memoryagentbench": FIXTURES / "Accurate_Retrieval-invented.parquet",
}


def load(dataset: str, **kw):
    return load_samples(DataConfig(dataset=dataset, path=str(kw.pop("path", FILES[dataset])), **kw))


def facts(sample, q: int) -> list[str]:
    return [sample.documents[d].sentences[s].strip() for d, s in sample.supporting_facts[q]]


def test_generic_jsonl_documents_context_and_supporting_spans():
    notes, memo, recipe = load("jsonl")
    assert notes.id == "jsonl-notes-1" and notes.answers == (("3 May", "May 3"), ("room 114",))
    assert notes.context.startswith("Document 1:\nLab notebook\nThe centrifuge") and not notes.raw_text
    assert facts(notes, 0) == ["The centrifuge in room 9 was serviced on 3 May."]
    assert notes.documents[0].text.endswith("replaced both seals.")  # the span cut leaves the text whole
    assert notes.categories == ("dates", "places")
    # one long text: read as it is, its passages are exact slices; a top-level single question
    assert memo.raw_text and memo.context.startswith("Minutes of the garden committee.\n\nThe committee")
    assert "".join(p.text for p in memo.documents) == memo.context
    assert facts(memo, 0) == ["Mrs. Ostrova will order the saplings."] and memo.questions == (
        "Who will order the saplings?",
    )
    assert recipe.id == "jsonl-line3" and recipe.categories == () and recipe.supporting_facts == ((),)


def test_max_questions_splits_a_record_into_samples_over_one_context():
    first, second = load("locomo", max_questions=3)
    assert (first.id, second.id) == ("locomo-conv-x1-q0", "locomo-conv-x1-q3")
    assert len(first.questions) == 3 and len(second.questions) == 1 and first.context == second.context


def test_longmemeval_dated_chat_sessions_evidence_and_abstention():
    plain, temporal, abstain = load("longmemeval")
    assert plain.questions == ("What colour did I paint the garden shed? (asked on 2024/03/02 (Sat) 10:15)",)
    assert "Document 2:\nSession 2 (2024/02/18 (Sun) 14:30)\nuser: I finally painted" in plain.context
    assert "s-b" not in plain.context  # session ids are never shown
    assert facts(plain, 0) == ["user: I finally painted the garden shed teal last weekend."]
    assert temporal.answers == (("6",),) and temporal.supporting_docs == ((1, 2),)  # a number answer as text
    assert temporal.categories == ("temporal-reasoning",)
    assert abstain.answers == (ABSTENTION_ANSWERS,) and abstain.categories == ("abstention",)


def test_locomo_sessions_categories_evidence_and_adversarial_switch():
    (conv,) = load("locomo")
    assert conv.categories == ("single-hop", "temporal", "multi-hop", "open-domain")  # category 5 left out
    assert conv.context.startswith("Document 1:\nSession 1 (4:05 pm on 2 March, 2023)\nIlse: I signed up")
    assert "[shares a photo: a lopsided blue bowl on a table]" in conv.context
    assert facts(conv, 2) == [
        "Ilse: I signed up for a pottery class at the community centre!",
        "Ilse: Congratulations! My pottery teacher, Rosalind, says my glazing improved.",
    ]
    assert facts(conv, 3) == ["Marek: Nice! I am still training for the Lisbon half marathon."]  # D9:9 dropped
    (adv,) = load("locomo", locomo_adversarial=True)
    assert adv.categories[-1] == "adversarial" and adv.answers[-1] == ABSTENTION_ANSWERS


def test_memoryagentbench_rows_any_of_answers_and_sources():
    island, memos = load("memoryagentbench")
    assert island.id == "memoryagentbench-Accurate_Retrieval-0" and island.raw_text
    assert island.answers == (("Odile Farrant", "Odile"), ("07:40", "7:40"))
    assert island.categories == ("invented_island_notes",) * 2 and memos.categories == ("invented_memos",)
    assert len(island.documents) == 3 and island.documents[1].text.startswith("Entry 2:")


def test_passages_cut_long_parts_at_whitespace_and_keep_the_text():
    text = ("word " * 2000) + "\n\n" + "tail"
    parts = passages(text)
    assert "".join(t for _, t in parts) == text and all(len(t) <= 4000 for _, t in parts)
    assert parts[0][1].endswith(" ") and parts[-1] == (f"Passage {len(parts)}", "tail")


def _write(path, text):
    path.write_text(text)
    return path


def bad_files(tmp_path):
    good_lme = json.loads(FILES["longmemeval"].read_text())
    lme = [good_lme[0], dict(good_lme[1], haystack_sessions=[[{"content": "no role"}], [], []])]
    good_locomo = json.loads(FILES["locomo"].read_text())
    qa = [dict(good_locomo[0]["qa"][0], answer=None)]
    rows = [{"context": "A text.", "questions": ["q1", "q2"], "answers": [["a"]], "metadata": {"source": "s"}}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "Conflict_Resolution-bad.parquet")
    return {
        "jsonl": (
            _write(
                tmp_path / "bad.jsonl",
                FILES["jsonl"].read_text() + '{"id": "x", "context": "t", "questions": '
                '[{"question": "q?", "answers": "yes"}]}\n',
            ),  # fmt: skip
            r"{f}: line 4 \(id 'x'\): field 'questions\[0\].answers' must be a non-empty list of strings \(got str\)",
        ),
        "longmemeval": (
            _write(tmp_path / "bad_lme.json", json.dumps(lme)),
            r"{f}: record 1 \(id 'lme-0002'\): field 'haystack_sessions\[0\]\[0\]' must be a turn \{role, content, "
            r"has_answer\?\}",
        ),
        "locomo": (
            _write(tmp_path / "bad_locomo.json", json.dumps([dict(good_locomo[0], qa=qa)])),
            r"{f}: record 0 \(id 'conv-x1'\): qa\[0\]: field 'answer' must be a non-empty string or number, got None",
        ),
        "memoryagentbench": (
            tmp_path / "Conflict_Resolution-bad.parquet",
            r"{f}: record 0 \(id unknown\): fields 'questions' and 'answers' must be non-empty lists of one length "
            r"\(2 questions, 1 answer lists\)",
        ),
    }


@pytest.mark.parametrize("dataset", list(FILES))
def test_a_malformed_record_is_one_line_naming_file_record_and_field(dataset, tmp_path):
    path, pattern = bad_files(tmp_path)[dataset]
    with pytest.raises(DataError) as err:
        load(dataset, path=path)
    message = str(err.value)
    assert "\n" not in message and re.fullmatch(pattern.replace("{f}", re.escape(str(path))), message), message


def test_jsonl_errors_name_the_field(tmp_path):
    cases = {
        '{"id": "a", "documents": [{"title": "T", "text": "x"}], "context": "y", "question": "q", "answers": ["a"]}':
            "give exactly one of the fields 'documents'",
        '{"id": "b", "documents": [{"title": "T", "text": "x"}], "question": "q", "answers": ["a"], '
        '"supporting": ["nowhere"]}': "field 'supporting[0]' is not an exact substring of a document: 'nowhere'",
        '{"id": "c", "documents": [{"title": "T"}], "question": "q", "answers": ["a"]}':
            "field 'documents[0].text' must be a non-empty string (missing)",
        '[1, 2]': "line 1 (id 'unknown'): a line must be a JSON object, got list",
    }  # fmt: skip
    for line, expected in cases.items():
        path = _write(tmp_path / "one.jsonl", line + "\n")
        with pytest.raises(DataError, match=re.escape(expected)):
            load("jsonl", path=path)
    path = _write(tmp_path / "dup.jsonl", '{"id": "d", "context": "x", "question": "q", "answers": ["a"]}\n' * 2)
    with pytest.raises(DataError, match=r"line 2 \(id 'd'\): field 'id' repeats"):
        load("jsonl", path=path)


def test_the_split_keeps_one_records_samples_together():
    cfg = DataConfig(dataset="locomo", path=str(FILES["locomo"]), max_questions=1, val_fraction=0.5)
    data = AtomDataModule(cfg)
    data.setup()
    assert (len(data.train_samples), len(data.val_samples)) in ((4, 0), (0, 4))  # one conversation: one side
    lme = AtomDataModule(dataclasses.replace(cfg, dataset="longmemeval", path=str(FILES["longmemeval"])))
    lme.setup()
    assert len(lme.train_samples) + len(lme.val_samples) == 3 and len(lme.all_samples()) == 3


@pytest.mark.parametrize("dataset", list(FILES))
def test_statistics_by_atom_data(dataset, tmp_path, capsys):
    config = _write(tmp_path / "c.yaml", "run:\n  name: t\n")
    stats = data_main([str(config), *TINY, f"data.dataset={dataset}", f"data.path={FILES[dataset]}", "--split=all"])
    got = stats["splits"]["all"]
    expected = {"jsonl": (3, 4), "longmemeval": (3, 3), "locomo": (2, 4), "memoryagentbench": (2, 3)}[
        dataset
    ]  # TINY: 2 a sample
    assert (got["samples"], got["questions"]) == expected and got["support_in_documents_share"] == 1.0
    assert sum(got["questions_by_category"].values()) == {"jsonl": 3}.get(dataset, expected[1])
    assert "questions by category" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("dataset", list(FILES))
def test_evaluate_runs_the_oracle_and_a_baseline_with_results_per_category(dataset, tmp_path):
    config = _write(tmp_path / "c.yaml", "run:\n  name: t\n")
    evaluate_main([
        str(config), *TINY, f"data.dataset={dataset}", f"data.path={FILES[dataset]}", "data.val_fraction=1.0",
        "eval.methods=[oracle,memagent]", "sampling.max_new_tokens=4", f"run.out_dir={tmp_path}/runs", "--tag=e",
    ])  # fmt: skip
    out = tmp_path / "runs" / "t" / "eval" / "e"
    rows = json.loads((out / "results.json").read_text())["methods"]
    assert rows["oracle"]["em"] == 100.0 and set(rows) == {"oracle", "memagent"}
    cats = rows["oracle"]["by_category"]
    assert all(c["em"] == 100.0 for c in cats.values())
    assert sum(c["questions"] for c in cats.values()) == {"jsonl": 3, "longmemeval": 3, "locomo": 4}.get(dataset, 3)
    assert "| method | " in (out / "results.md").read_text().split("\n\n", 1)[1]  # the per-category table


def test_jsonl_lines_end_only_at_newlines(tmp_path):
    # json.dumps(..., ensure_ascii=False) writes U+2028, U+2029 and U+0085 raw inside strings: they are not line
    # ends of a JSONL file (str.splitlines would cut the record there)
    context = "The ferry leaves at 07:40.\u2028Tickets are sold on board.\x85 The captain is Odile Farrant.\u2029"
    record = {"id": "u", "context": context, "question": "Who is the captain?", "answers": ["Odile Farrant"]}
    path = _write(tmp_path / "u.jsonl", json.dumps(record, ensure_ascii=False) + "\n")
    (sample,) = load("jsonl", path=path)
    assert sample.context == context and sample.answers == (("Odile Farrant",),)


def test_sample_ids_are_unique_across_records(tmp_path):
    # the rollout engine caches each sample's chunk stream by sample id: a repeated id would read the first
    # record's context for the second's questions
    lme = json.loads(FILES["longmemeval"].read_text())
    path = _write(tmp_path / "twice.json", json.dumps([lme[0], lme[1], dict(lme[2], question_id="lme-0001")]))
    with pytest.raises(DataError, match=r"record 2 \(id 'lme-0001'\): sample id 'longmemeval-lme-0001' repeats rec"):
        load("longmemeval", path=path)
    first = {"id": "a", "context": "x", "questions": [{"question": q, "answers": ["x"]} for q in ("q", "r")]}
    second = {"id": "a-q1", "context": "y", "question": "s", "answers": ["y"]}
    two = json.dumps(first) + "\n" + json.dumps(second) + "\n"
    with pytest.raises(DataError, match=r"line 2 \(id 'a-q1'\): sample id 'jsonl-a-q1' repeats line 1's"):
        load("jsonl", path=_write(tmp_path / "q.jsonl", two), max_questions=1)


def test_odd_but_upstream_shaped_fields(tmp_path):
    lme = json.loads(FILES["longmemeval"].read_text())
    (six,) = load("longmemeval", path=_write(tmp_path / "f.json", json.dumps([dict(lme[1], answer=6.0)])))
    assert six.answers == (("6",),)  # a float-typed whole number is written as the integer it is
    bad = dict(lme[0], answer_session_ids=[["s-b"]])
    with pytest.raises(DataError, match=r"record 0 \(id 'lme-0001'\): field 'answer_session_ids' must be a list of "):
        load("longmemeval", path=_write(tmp_path / "ids.json", json.dumps([bad])))
    locomo = json.loads(FILES["locomo"].read_text())
    locomo[0]["qa"][0]["evidence"] = "D1:1"  # one dia_id as a bare string, not its characters
    (conv,) = load("locomo", path=_write(tmp_path / "ev.json", json.dumps(locomo)))
    assert facts(conv, 0) == ["Ilse: I signed up for a pottery class at the community centre!"]
