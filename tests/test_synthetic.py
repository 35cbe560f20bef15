"""The synthetic multi-hop task: seeded, consistent, chains that can be followed, look-alike distractors."""

from __future__ import annotations

import re

import pytest

from atom.data.synthetic import SyntheticConfig, generate


def test_same_seed_same_records_different_seed_different():
    cfg = SyntheticConfig(num_records=30, hops=3, seed=7)
    assert generate(cfg) == generate(SyntheticConfig(num_records=30, hops=3, seed=7))
    other = generate(SyntheticConfig(num_records=30, hops=3, seed=8))
    assert [r.question for r in other] != [r.question for r in generate(cfg)]


@pytest.mark.parametrize("hops", [1, 2, 3, 4])
def test_question_chains_hops_facts_to_a_short_answer(hops):
    cfg = SyntheticConfig(num_records=40, hops=hops, num_entities=30, distractors=5, seed=hops)
    records = generate(cfg)
    assert len(records) == 40
    assert len({r.question for r in records}) == 40  # no repeated questions
    for r in records:
        assert r.dataset == "synthetic"
        assert len(r.paragraphs) == hops + 5
        assert len(r.supporting) == hops and len(r.supporting_sentences) == hops
        assert len({p.title for p in r.paragraphs}) == len(r.paragraphs)
        assert r.question.startswith("What is ") and r.question.endswith("?")
        assert r.question.count(" of ") == hops
        links = dict(_parse(r.paragraphs[p].sentences[s_]) for p, s_ in r.supporting_sentences)
        # each fact sits in its subject's paragraph
        assert {r.paragraphs[p].title for p, _ in r.supporting_sentences} == set(links)
        # follow the chain from the one subject named in the question: it uses every fact, ends at the answer
        (start,) = [subject for subject in links if subject in r.question]
        node, steps = start, 0
        while node in links:
            node, steps = links[node], steps + 1
        (answer,) = r.answers
        assert steps == hops and node == answer
        assert answer not in r.question
        assert 1 <= len(answer.split()) <= 2


def test_distractors_are_entities_of_the_chain_types():
    records = generate(SyntheticConfig(num_records=20, hops=2, distractors=8, seed=3))
    for r in records:
        gold_kinds = {_kind(r.paragraphs[i]) for i in r.supporting}
        distractor_kinds = {_kind(p) for i, p in enumerate(r.paragraphs) if i not in r.supporting}
        assert gold_kinds <= distractor_kinds  # every gold kind has look-alike distractors


_PATTERNS = {
    "person": r"^(.+) was born in (.+)\.$",
    "person2": r"^(.+) works for (.+)\.$",
    "company": r"^(.+) was founded by (.+)\.$",
    "company2": r"^(.+) is headquartered in (.+)\.$",
    "city": r"^(.+) lies in (.+)\.$",
    "country": r"^The capital of (.+) is (.+)\.$",
}


def _parse(fact: str) -> tuple[str, str]:
    """(subject, object) of a fact sentence."""
    for pattern in _PATTERNS.values():
        if match := re.match(pattern, fact.strip()):
            return match.group(1), match.group(2)
    raise AssertionError(f"fact {fact!r} matches no template")


def _kind(paragraph) -> str:
    return next(k for k, pattern in _PATTERNS.items() if re.match(pattern, paragraph.sentences[0]))


def test_world_is_consistent_across_records():
    # the long-context builder pools paragraphs of many records: one entity must never get two stories
    text_of: dict[str, str] = {}
    for r in generate(SyntheticConfig(num_records=200, hops=3, seed=11)):
        for p in r.paragraphs:
            assert text_of.setdefault(p.title, p.text) == p.text


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="hops"):
        SyntheticConfig(hops=5)
    with pytest.raises(ValueError, match="distractors"):
        SyntheticConfig(num_entities=10, distractors=20)
    with pytest.raises(ValueError, match="num_records"):
        SyntheticConfig(num_records=0)
