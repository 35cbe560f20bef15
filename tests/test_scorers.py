"""The release scorer on hand-worked examples of the release's own code paths (hotpotqa.compute_score,
last_boxed_only_string, remove_boxed, strip_string, parse_final_answer, the multi-question reward)."""

from __future__ import annotations

import pytest

from atom.env.rewards import exact_match
from atom.env.scorers import (
    release_answer_text,
    release_boxed,
    release_flat_score,
    release_match,
    release_scores,
    strip_string,
)


def test_beatles_release_zero_squad_one() -> None:
    # strip_string keeps articles: "beatles" != "thebeatles"; SQuAD drops "the" from the gold.
    assert release_match("\\boxed{Beatles}", ["The Beatles"]) == 0.0
    assert exact_match("\\boxed{Beatles}", ["The Beatles"], boxed=True) == 1.0
    assert release_match("\\boxed{The Beatles}", ["the beatles"]) == 1.0


@pytest.mark.parametrize(
    "prediction,gold,score",
    [
        ("\\boxed{Washington, D.C.}", "Washington DC", 0.0),  # punctuation kept
        ("\\boxed{Washington, D.C.}", "washington, d.c.", 1.0),
        ("\\boxed{ 1 9 9 2 }", "1992", 1.0),  # every space removed
        ("\\BOXED{PARIS}", "paris", 1.0),  # the window and the gold are lower-cased
        ("\\boxed{London} then \\boxed{Paris}", "Paris", 1.0),  # the last box
        ("\\boxed{Paris} then \\boxed{London}", "Paris", 0.0),
        ("\\boxed{Paris", "Paris", 0.0),  # unclosed: no answer
        ("\\fbox{Paris}", "Paris", 0.0),  # found, but the box remover rejects it
        ("\\boxed{\\frac{1}{2}}", "\\dfrac{1}{2}", 1.0),  # nested braces; dfrac -> frac
        ("\\boxed{50\\%}", "50", 1.0),  # \% removed
        ("\\boxed{version .5}", "version 0.5", 1.0),  # " ." -> " 0." before spaces go
        ("\\boxed{.5}", "0.5", 0.0),  # "{." only inside the string, not at its start
        ("\\boxed 1992$ and more", "1992", 1.0),  # the "\boxed " form: up to the first "$"
        ("Paris", "Paris", 0.0),  # no box at all
        ("\\boxed{Paris}" + " " * 300, "Paris", 0.0),  # the box is outside the last 300 characters
        ("x" * 1000 + "\\boxed{Paris}", "Paris", 1.0),
    ],
)
def test_release_match(prediction: str, gold: str, score: float) -> None:
    assert release_match(prediction, [gold]) == score


def test_best_alias_and_none() -> None:
    assert release_match("\\boxed{NYC}", ["New York City", "NYC"]) == 1.0
    assert release_match(None, ["Paris"]) == 0.0
    with pytest.raises(ValueError, match="golds"):
        release_match("\\boxed{a}", "a")


def test_strip_string_steps() -> None:
    assert strip_string("a\nb \\!c") == "abc"
    assert strip_string("\\left( x \\right)") == "(x)"
    assert strip_string("90^{\\circ}") == "90"
    assert strip_string("\\$5") == "5"
    assert strip_string("the beatles") == "thebeatles"
    assert release_boxed("\\boxed{a{b}c}") == "a{b}c"
    assert release_boxed("\\boxedx{a}") is None


def test_release_answer_text() -> None:
    assert release_answer_text("think <final_answer>\\boxed{A}</final_answer>") == "\\boxed{A}"
    assert release_answer_text("<FINAL_ANSWER x=1>B</FINAL_ANSWER>") == "B"
    two = "<final_answer>\\boxed{A}</final_answer><final_answer>\\boxed{B}</final_answer>"
    assert release_answer_text(two) == two  # two tags: the whole reply (it has a box)
    assert release_answer_text("no tag but \\boxed{C}") == "no tag but \\boxed{C}"
    assert release_answer_text("<update_query>q</update_query>") is None


def test_per_question_scores_and_double_counting() -> None:
    golds = [["Paris"], ["London"]]
    answers = ["<final_answer>\\boxed{Paris}</final_answer>", "<final_answer>\\boxed{Paris}</final_answer>"]
    # Per question (atom's fix): the second answer is wrong for its own question.
    assert release_scores(["\\boxed{Paris}", "\\boxed{Paris}"], golds) == [1.0, 0.0]
    # The release's reward pools every question's gold: both answers count.
    assert release_flat_score(answers, golds) == 1.0
    # Read-phase replies with a box count too, and the sample goes above 1.
    reading = "Noted: \\boxed{London} is in document 3. <add_memory>x</add_memory>"
    assert release_flat_score([reading, *answers], golds) == 1.5
    assert release_flat_score(["<update_query>q</update_query>"], golds) == 0.0
