"""The GRPO sanity task (atom.train.sanity) and the paired test (atom.eval.stats)."""

import pytest

from atom.env.episode import Episode
from atom.eval.stats import paired_test
from atom.train.sanity import CITIES, FactEpisode, fact_samples, first_city


def test_first_city_is_the_earliest_whole_word_city():
    assert first_city("Omar lives in oslo, not Cairo.") == "Oslo"
    assert first_city("Cairo. Also Oslo") == "Cairo"
    assert first_city("Limassol and Bernard") is None  # whole words only: not Lima, not Bern
    assert first_city("") is None
    assert first_city("<answer>\\boxed{Lisbon}</answer>") == "Lisbon"


def test_fact_samples_are_seeded_and_answerable_from_the_prompt():
    a, b = fact_samples(20, 3, seed=4), fact_samples(20, 3, seed=4)
    assert a == b and a != fact_samples(20, 3, seed=5)
    for s in a:
        gold = s.answers[0][0]
        assert gold in CITIES and len(s.documents[0].sentences) == 3
        person = s.questions[0].removeprefix("Where does ").removesuffix(" live?")
        assert f"{person} lives in {gold}." in s.context
        assert s.context == s.documents[0].text  # sentences keep HotpotQA's leading spaces
        doc, sent = s.supporting_facts[0][0]
        assert gold in s.documents[doc].sentences[sent]
    assert len({s.id for s in a}) == 20
    with pytest.raises(ValueError, match="facts"):
        fact_samples(1, 0, seed=0)


def test_fact_episode_is_one_turn_and_flip_negates_the_reward():
    sample = fact_samples(1, 3, seed=0)[0]
    gold = sample.answers[0][0]
    wrong = next(c for c in CITIES if c != gold)
    for reply, success in ((f"It is {gold}.", 1.0), (f"{wrong}, maybe {gold}", 0.0), ("no idea", 0.0)):
        for flip in (False, True):
            ep = FactEpisode(sample, flip)
            assert isinstance(ep, Episode) and not ep.done
            assert sample.questions[0] in ep.messages()[-1]["content"]
            assert ep.observe(reply) == []  # nothing to embed
            ep.commit()
            assert ep.done
            r = ep.result()
            assert r.em == [success] and r.reward == (1.0 - success if flip else success)
            assert r.stats.llm_calls == 1


def test_paired_test_counts_discordant_questions_exactly():
    t = paired_test([0, 0, 0, 0, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1, 1, 0])
    assert (t.n, t.gained, t.lost) == (8, 6, 1)
    assert t.before == pytest.approx(0.25) and t.after == pytest.approx(0.875)
    assert t.p == pytest.approx(2 * 8 / 128)  # P(X <= 1) for X ~ Bin(7, 1/2), two-sided
    assert paired_test([1, 0], [1, 0]).p == 1.0
    assert paired_test([0] * 10, [1] * 10).p == pytest.approx(2 / 1024)
    with pytest.raises(ValueError, match="same questions"):
        paired_test([0, 1], [1])
    with pytest.raises(ValueError, match="0/1"):
        paired_test([0.5], [1])


def test_paired_evaluations_pair_questions_of_two_eval_dirs_and_name_a_bad_line(tmp_path):
    import json

    from atom.eval.stats import paired_evaluations

    def write(name, rows):
        d = tmp_path / name
        d.mkdir()
        lines = [json.dumps({"method": m, "sample_id": s, "em": em}) for m, s, em in rows]
        (d / "episodes.jsonl").write_text("\n".join(lines) + "\n")
        return d

    a = write("a", [("atommem", "s0", [0, 1]), ("atommem", "s1", [0]), ("rag", "s0", [1, 1])])
    b = write("b", [("atommem", "s1", [1]), ("atommem", "s0", [1, 0]), ("rag", "s0", [0, 0])])
    t = paired_evaluations(a, b, "atommem")
    assert (t.n, t.gained, t.lost) == (3, 2, 1)
    assert paired_evaluations(a, b, "rag").lost == 2
    (b / "episodes.jsonl").write_text('{"method": "atommem"}\n')
    with pytest.raises(ValueError, match=r"episodes\.jsonl:1: not an episode record"):
        paired_evaluations(a, b, "atommem")
