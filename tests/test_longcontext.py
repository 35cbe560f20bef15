"""The long-context protocol: grouping, documents, distractors, supporting indices, rendering, determinism."""

from __future__ import annotations

import warnings

import pytest

from atom.data.loaders import DataConfig, load_hotpotqa
from atom.data.longcontext import build_samples, document_spans, paragraph_pool, render
from atom.data.synthetic import SyntheticConfig, generate

from .conftest import FIXTURE_FILES, REAL_FILES


@pytest.fixture(scope="module")
def synthetic():
    return generate(SyntheticConfig(num_records=60, hops=2, num_entities=80, distractors=6, seed=1))


def cfg(**kw) -> DataConfig:
    return DataConfig(**{"num_docs": 40, "max_questions": 4, "seed": 3, **kw})


def test_same_seed_same_bytes_other_seed_differs(synthetic):
    a = build_samples(synthetic, cfg())
    b = build_samples(synthetic, cfg())
    assert [s.context for s in a] == [s.context for s in b]
    assert a == b
    c = build_samples(synthetic, cfg(seed=4))
    assert [s.context for s in a] != [s.context for s in c]


def test_records_grouped_in_file_order(synthetic):
    samples = build_samples(synthetic, cfg())
    assert [rid for s in samples for rid in s.record_ids] == [r.id for r in synthetic]
    sizes = [len(s.questions) for s in samples]
    assert min(sizes) == 1 and max(sizes) > 1 and max(sizes) <= 4
    assert all(len(s.answers) == len(s.questions) == len(s.supporting_docs) == len(s.supporting_facts) for s in samples)
    assert len({s.id for s in samples}) == len(samples)
    assert all(len(s.questions) == 1 for s in build_samples(synthetic, cfg(single_question_prob=1.0)))
    multi = build_samples(synthetic, cfg(single_question_prob=0.0))
    assert all(len(s.questions) >= 2 for s in multi[:-1])  # the last group takes what is left


def test_documents_hold_own_paragraphs_padded_with_pool_distractors(synthetic):
    by_id = {r.id: r for r in synthetic}
    pool_keys = {p.key for p in paragraph_pool(synthetic)}
    for sample in build_samples(synthetic, cfg()):
        keys = [p.key for p in sample.documents]
        assert len(keys) == 40 and len(set(keys)) == 40
        assert set(keys) <= pool_keys
        own = {p.key for rid in sample.record_ids for p in by_id[rid].paragraphs}
        assert own <= set(keys)
        for q, rid in enumerate(sample.record_ids):
            record = by_id[rid]
            assert sorted(sample.documents[d].key for d in sample.supporting_docs[q]) == sorted(
                record.paragraphs[j].key for j in record.supporting
            )
            facts = [sample.documents[d].sentences[s] for d, s in sample.supporting_facts[q]]
            assert sorted(facts) == sorted(record.paragraphs[p].sentences[s] for p, s in record.supporting_sentences)
            assert sample.answers[q] == record.answers


def test_documents_are_shuffled_not_grouped_first(synthetic):
    samples = build_samples(synthetic, cfg(num_docs=60))
    first_positions = [min(d for docs in s.supporting_docs for d in docs) for s in samples]
    assert max(first_positions) > 5  # gold paragraphs are not simply placed at the front


def test_render_format_and_spans(synthetic):
    sample = build_samples(synthetic, cfg(num_docs=5, single_question_prob=1.0))[0]
    docs = sample.documents
    assert sample.context == render(docs)
    assert sample.context.startswith(f"Document 1:\n{docs[0].title}\n{docs[0].text}\n\nDocument 2:\n{docs[1].title}\n")
    assert sample.context.endswith(f"Document {len(docs)}:\n{docs[-1].title}\n{docs[-1].text}")
    for i, (start, end) in enumerate(document_spans(docs)):
        assert sample.context[start:end] == f"Document {i + 1}:\n{docs[i].title}\n{docs[i].text}"


def test_supporting_paragraphs_kept_first_when_own_paragraphs_exceed_num_docs(synthetic):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 3 documents still hold the 2 gold paragraphs of a single question
        samples = build_samples(synthetic, cfg(num_docs=3, single_question_prob=1.0))
    for sample in samples:
        assert len(sample.documents) == 3
        assert len(sample.supporting_docs[0]) == 2
    with pytest.warns(UserWarning, match="gold paragraphs were dropped"):
        build_samples(synthetic, cfg(num_docs=3, single_question_prob=0.0))


def test_small_pool_uses_all_of_it_with_a_warning(synthetic):
    records = synthetic[:4]
    pool_size = len(paragraph_pool(records))
    with pytest.warns(UserWarning, match="too small"):
        samples = build_samples(records, cfg(num_docs=500))
    assert all(len(s.documents) == pool_size for s in samples)


def test_external_pool_supplies_distractors(synthetic):
    train, val = synthetic[:40], synthetic[40:]
    pool = paragraph_pool(synthetic)
    train_keys = {p.key for p in paragraph_pool(train)} - {p.key for p in paragraph_pool(val)}
    samples = build_samples(val, cfg(num_docs=60), pool=pool, split="val")
    assert all(s.id.startswith("synthetic-60-val-") for s in samples)
    assert any(p.key in train_keys for s in samples for p in s.documents)


def test_hotpotqa_file_samples():
    records = load_hotpotqa(FIXTURE_FILES["hotpotqa"])
    samples = build_samples(records, DataConfig(dataset="hotpotqa", num_docs=8, seed=0))
    assert sum(len(s.questions) for s in samples) == len(records)
    first = samples[0]
    assert first.id == "hotpotqa-8-all-0" and first.questions[0] == records[0].question
    assert all(len(s.documents) == 8 for s in samples)
    assert {first.documents[d].title for d in first.supporting_docs[0]} == {"Mira Koval", "Tobin Ashe"}
    for s in samples:  # every gold fact points at its sentence inside the sample's documents
        for per_q in s.supporting_facts:
            assert all(s.documents[d].sentences[i] in s.context for d, i in per_q)


@pytest.mark.realdata
def test_real_hotpotqa_samples():
    records = load_hotpotqa(REAL_FILES["hotpotqa"])
    samples = build_samples(records, DataConfig(dataset="hotpotqa", num_docs=200, seed=0))
    assert sum(len(s.questions) for s in samples) == 103
    first = samples[0]
    assert first.id == "hotpotqa-200-all-0"
    assert first.questions[0] == records[0].question
    assert all(len(s.documents) == 200 for s in samples)
    titles = {first.documents[d].title for d in first.supporting_docs[0]}
    assert titles == {"Scott Derrickson", "Ed Wood"}
    # context length in the paper's range: 200 HotpotQA documents are ~28K tokens, i.e. ~120K characters
    mean_chars = sum(len(s.context) for s in samples) / len(samples)
    assert 100_000 < mean_chars < 150_000
