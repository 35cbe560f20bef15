"""Loaders: the original formats (invented fixture files), the real shipped samples (realdata), hub-layout rows,
and clear errors on corrupted copies."""

from __future__ import annotations

import json

import datasets
import pytest

from atom.data.loaders import DataConfig, load_2wiki, load_hotpotqa, load_musique, load_records, records_from_rows
from atom.data.records import DataError, Paragraph

from .conftest import FIXTURE_FILES, REAL_FILES

HOTPOT, WIKI, MUSIQUE = FIXTURE_FILES["hotpotqa"], FIXTURE_FILES["2wiki"], FIXTURE_FILES["musique"]


@pytest.fixture(scope="module")
def hotpot():
    return load_hotpotqa(HOTPOT)


@pytest.fixture(scope="module")
def wiki():
    return load_2wiki(WIKI)


@pytest.fixture(scope="module")
def musique():
    return load_musique(MUSIQUE)


def check_first(records, id, question, answers, paragraphs, supporting, titles=None, sentences=None) -> None:
    """The first record of a file, field by field (titles: of its supporting paragraphs)."""
    first = records[0]
    assert (first.id, first.question, first.answers) == (id, question, answers)
    assert (len(first.paragraphs), first.supporting) == (paragraphs, supporting)
    if titles is not None:
        assert [first.paragraphs[i].title for i in first.supporting] == titles
    if sentences is not None:
        assert first.supporting_sentences == sentences


def test_hotpotqa_format(hotpot):
    assert [r.id for r in hotpot] == [f"hq-000{i}" for i in range(1, 7)] and hotpot[0].dataset == "hotpotqa"
    question = "Were Mira Koval and Tobin Ashe both painters?"
    check_first(hotpot, "hq-0001", question, ("yes",), 4, (1, 3), ["Mira Koval", "Tobin Ashe"], ((1, 0), (3, 0)))
    first = hotpot[0]
    # HotpotQA sentences after the first carry their separating space: the text is their plain concatenation
    para = first.paragraphs[0]
    assert para.sentences[1].startswith(" ")
    assert para.text == "".join(para.sentences)
    # one paragraph holding two supporting sentences: one supporting paragraph, two gold facts
    third = hotpot[2]
    assert third.supporting == (0,) and third.supporting_sentences == ((0, 0), (0, 1))


def test_2wiki_format(wiki):
    assert [r.id for r in wiki] == ["w-0001", "w-0002", "w-0003", "w-0004"]
    question = "Where does the founder of Kessel Films work?"
    check_first(
        wiki, "w-0001", question, ("Lumen Review",), 3, (0, 1), ["Orla Brant", "Kessel Films"], ((0, 2), (1, 1))
    )
    first = wiki[0]
    # 2Wiki stores bare sentences: the loader gives each later one its separating space
    raw = json.loads(WIKI.read_text())[0]["context"][0][1]
    para = first.paragraphs[0]
    assert para.text == " ".join(raw)
    assert para.sentences == (raw[0], *(" " + s for s in raw[1:]))


def test_2wiki_fact_past_last_sentence_keeps_the_paragraph(wiki):
    record = next(r for r in wiki if r.id == "w-0003")
    j = next(i for i, p in enumerate(record.paragraphs) if p.title == "Princess Ysolde of Marrin")
    assert len(record.paragraphs[j].sentences) == 1
    assert j in record.supporting
    assert all(p != j or s == 0 for p, s in record.supporting_sentences)


def test_2wiki_repeated_paragraph_facts_point_at_first_copy(wiki):
    record = next(r for r in wiki if r.id == "w-0004")
    titles = [p.title for p in record.paragraphs]
    assert len(titles) > len(set(titles))
    for i in record.supporting:
        assert titles.index(titles[i]) == i


def test_musique_format(musique):
    assert [r.id for r in musique] == ["2hop__1001_1002", "2hop__1003_1004", "3hop1__1005_1006_1007"]
    question = "What is the seat of the county where Hale Township is located?"
    check_first(musique, "2hop__1001_1002", question, ("Millford",), 4, (1, 3), sentences=((1, 0), (3, 0)))
    check_musique_against_raw(musique, MUSIQUE)
    assert musique[1].answers == ("Ostry", "Ostry port")  # gold first, aliases after, no repeat


def check_musique_against_raw(records, path) -> None:
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    assert [p.text for p in records[0].paragraphs] == [p["paragraph_text"] for p in raw[0]["paragraphs"]]
    # gold answer first, then the aliases, without repeats
    for record, row in zip(records, raw, strict=True):
        assert record.answers[0] == row["answer"]
        assert set(record.answers) == {row["answer"], *row["answer_aliases"]}
        assert len(record.answers) == len(set(record.answers))
        assert record.supporting == tuple(i for i, p in enumerate(row["paragraphs"]) if p["is_supporting"])
    assert any(len(r.answers) > 1 for r in records)


# ---- the real shipped samples (../shared/data) -----------------------------------------------------------


@pytest.mark.realdata
def test_real_hotpotqa_sample():
    hotpot = load_hotpotqa(REAL_FILES["hotpotqa"])
    assert len(hotpot) == 103
    question = "Were Scott Derrickson and Ed Wood of the same nationality?"
    titles = ["Scott Derrickson", "Ed Wood"]
    check_first(hotpot, "5a8b57f25542995d1e6f1371", question, ("yes",), 10, (1, 4), titles, ((1, 0), (4, 0)))
    assert hotpot[-1].id == "5ae738f75542991bbc9761c4"
    assert sum(len(r.paragraphs) == 2 for r in hotpot) == 1  # the one record with 2 paragraphs (data README)
    # HotpotQA's splitter sometimes cuts inside a quoted title; plain concatenation must not add a space there
    assert any('"I...Amanda Lepore"' in p.text for r in hotpot for p in r.paragraphs)
    assert load_records(DataConfig(dataset="hotpotqa", path=str(REAL_FILES["hotpotqa"]))) == hotpot


@pytest.mark.realdata
def test_real_2wiki_sample():
    wiki = load_2wiki(REAL_FILES["2wiki"])
    assert len(wiki) == 400
    question, titles = (
        "Where does the founder of Les Films Du Losange work at?",
        ["Les films du losange", "Éric Rohmer"],
    )
    check_first(wiki, "91edc89c0bdc11eba7f7acde48001122", question, ("Cahiers du cinéma",), 10, (2, 4), titles)
    assert wiki[0].supporting_sentences == ((2, 0), (4, 2))
    assert all(len(r.paragraphs) == 10 for r in wiki)
    # the upstream quirk the data README names: a supporting fact past its paragraph's only sentence
    record = next(r for r in wiki if r.id == "77f5a3dc0bb011ebab90acde48001122")
    j = next(i for i, p in enumerate(record.paragraphs) if p.title == "Princess Alexandra of Hanover (born 1999)")
    assert len(record.paragraphs[j].sentences) == 1 and j in record.supporting
    assert all(p != j for p, _ in record.supporting_sentences)
    assert len(load_records(DataConfig(dataset="2wiki", path=str(REAL_FILES["2wiki"]), max_records=7))) == 7


@pytest.mark.realdata
def test_real_musique_sample():
    musique = load_musique(REAL_FILES["musique"])
    assert len(musique) == 150
    question = "What is the seat of the county where Van Hook Township is located?"
    check_first(musique, "2hop__574419_270105", question, ("Stanley",), 20, (1, 8))
    check_musique_against_raw(musique, REAL_FILES["musique"])


def test_max_records_takes_the_first_in_file_order(hotpot, musique):
    assert [r.id for r in load_hotpotqa(HOTPOT, max_records=5)] == [r.id for r in hotpot[:5]]
    assert [r.id for r in load_musique(MUSIQUE, max_records=2)] == [r.id for r in musique[:2]]
    cfg = DataConfig(dataset="2wiki", path=str(WIKI), max_records=3)
    assert len(load_records(cfg)) == 3


def test_load_records_dispatches_local_files(hotpot):
    records = load_records(DataConfig(dataset="hotpotqa", path=str(HOTPOT)))
    assert records == hotpot


# ---- hub layouts (offline: rows built here, converted through the same per-record function) ----------------


def _hub_hotpot_row(raw: dict, sentences_key: str = "sentences") -> dict:
    return {
        "id": raw["_id"],
        "question": raw["question"],
        "answer": raw["answer"],
        "type": raw["type"],
        "supporting_facts": {
            "title": [t for t, _ in raw["supporting_facts"]],
            "sent_id": [s for _, s in raw["supporting_facts"]],
        },
        "context": {"title": [t for t, _ in raw["context"]], sentences_key: [s for _, s in raw["context"]]},
    }


def test_hotpot_hub_rows_match_the_original_format(hotpot):
    raw = json.loads(HOTPOT.read_text())[:4]
    rows = datasets.Dataset.from_list([_hub_hotpot_row(r) for r in raw])
    converted = records_from_rows(rows, "hotpotqa", "hub hotpot_qa")
    assert converted == hotpot[:4]


def test_2wiki_hub_rows_with_content_key(wiki):
    raw = json.loads(WIKI.read_text())[:3]
    rows = datasets.Dataset.from_list([_hub_hotpot_row(r, "content") for r in raw])
    assert records_from_rows(rows, "2wiki", "hub 2wiki") == wiki[:3]


def test_musique_hub_rows(musique):
    raw = [json.loads(line) for line in MUSIQUE.read_text().splitlines()[:3]]
    rows = datasets.Dataset.from_list(raw)
    assert records_from_rows(rows, "musique", "hub musique") == musique[:3]


def test_load_records_treats_unknown_paths_as_hub_ids(monkeypatch, hotpot):
    raw = json.loads(HOTPOT.read_text())[:6]
    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_list([_hub_hotpot_row(r) for r in raw])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = DataConfig(dataset="hotpotqa", path="hotpotqa/hotpot_qa", hub_config="distractor", max_records=2)
    assert load_records(cfg) == hotpot[:2]
    assert calls == [("hotpotqa/hotpot_qa", "distractor", "validation")]


def test_hub_row_errors_name_the_row():
    row = {
        "id": "abc",
        "question": "q?",
        "answer": "a",
        "context": {"title": ["T"], "sentences": [["s."]]},
        "supporting_facts": {"title": ["Missing"], "sent_id": [0]},
    }
    with pytest.raises(DataError, match=r"hub x: record 0 \(id 'abc'\).*'Missing'"):
        records_from_rows([row], "hotpotqa", "hub x")


# ---- configuration errors -------------------------------------------------------------------------------


def test_empty_path_says_to_set_data_path():
    with pytest.raises(DataError, match="data.path"):
        load_records(DataConfig(dataset="musique", path=""))


def test_missing_local_file_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_records(DataConfig(dataset="hotpotqa", path=str(tmp_path / "nope.json")))


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"hotpotqa.*2wiki.*musique.*synthetic"):
        DataConfig(dataset="nq")


# ---- corrupted copies ----------------------------------------------------------------------------------


def test_truncated_json_names_the_broken_record(tmp_path):
    text = HOTPOT.read_text()
    records = json.loads(text)
    cut = text.index(f'"_id":"{records[4]["_id"]}"') + 150  # the file is compact JSON, as upstream
    bad = tmp_path / "truncated.json"
    bad.write_text(text[:cut])
    with pytest.raises(DataError) as err:
        load_hotpotqa(bad)
    message = str(err.value)
    assert str(bad) in message and "record 4" in message and records[4]["_id"] in message


def test_truncated_after_a_record_says_so(tmp_path):
    bad = tmp_path / "cut.json"
    bad.write_text(json.dumps(json.loads(HOTPOT.read_text())[:2]).rstrip("]"))
    with pytest.raises(DataError, match=r"cut.json.*truncated"):
        load_hotpotqa(bad)


def test_missing_key_names_record_and_key(tmp_path):
    records = json.loads(WIKI.read_text())[:4]
    del records[3]["question"]
    bad = tmp_path / "nokey.json"
    bad.write_text(json.dumps(records))
    with pytest.raises(DataError, match=rf"nokey.json: record 3 \(id '{records[3]['_id']}'\): missing key 'question'"):
        load_2wiki(bad)


def test_bad_supporting_title_names_record_and_title(tmp_path):
    records = json.loads(HOTPOT.read_text())[:6]
    records[5]["supporting_facts"][0][0] = "No Such Title"
    bad = tmp_path / "title.json"
    bad.write_text(json.dumps(records))
    with pytest.raises(DataError, match=rf"title.json: record 5 \(id '{records[5]['_id']}'\).*'No Such Title'"):
        load_hotpotqa(bad)


def test_wrong_types_and_container(tmp_path):
    records = json.loads(HOTPOT.read_text())[:3]
    records[1]["context"] = "not a list"
    bad = tmp_path / "types.json"
    bad.write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"record 1 .*'context'"):
        load_hotpotqa(bad)
    obj = tmp_path / "object.json"
    obj.write_text(json.dumps({"data": records}))
    with pytest.raises(DataError, match=r"object.json: expected one JSON array"):
        load_hotpotqa(obj)
    with pytest.raises(DataError, match=r"types.json: record 0 .*JSON object, got list .*JSONL"):
        load_musique(bad)  # a JSON array is not the MuSiQue format


def test_non_json_line_in_jsonl_names_line_and_record(tmp_path):
    lines = MUSIQUE.read_text().splitlines()[:3]
    lines[2] = "this is not json"
    bad = tmp_path / "broken.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"broken.jsonl: record 2 \(line 3, id unknown\): not valid JSON"):
        load_musique(bad)


def test_musique_paragraph_errors_name_the_paragraph(tmp_path):
    rows = [json.loads(line) for line in MUSIQUE.read_text().splitlines()[:2]]
    rows[1]["paragraphs"][2]["is_supporting"] = "yes"
    bad = tmp_path / "para.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError, match=rf"record 1 \(id '{rows[1]['id']}'\): paragraphs\[2\].*is_supporting"):
        load_musique(bad)


def test_hotpotqa_text_keeps_splitter_cuts_inside_quotes(hotpot):
    # HotpotQA's splitter sometimes cuts inside a quoted title; plain concatenation must not add a space there
    texts = [p.text for r in hotpot for p in r.paragraphs]
    assert any('"Moon...River Lights"' in t for t in texts)
    assert Paragraph("t", ()).text == ""
