"""Answer metrics: SQuAD normalization, EM/F1 on known cases, the boxed option and the episode reward."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atom.env.rewards import exact_match, extract_boxed, f1_score, normalize_answer, score_questions


@pytest.mark.parametrize(
    "raw,norm",
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  A   cat,  an   owl and THE dog. ", "cat owl and dog"),
        ("theatre anthem", "theatre anthem"),  # articles only as whole words
        ("U.S.A.", "usa"),
        ("Café  Zürich", "café zürich"),  # accents kept (official SQuAD behaviour)
        ("«Ἀθῆναι»", "«ἀθῆναι»"),  # non-ASCII punctuation kept too
        ("", ""),
    ],
)
def test_normalize_answer(raw: str, norm: str) -> None:
    assert normalize_answer(raw) == norm


@pytest.mark.parametrize(
    "pred,golds,em,f1",
    [
        ("The Eiffel Tower!", ["eiffel tower"], 1.0, 1.0),
        ("Paris, France", ["Paris"], 0.0, 2 / 3),
        ("Paris", ["Paris, France"], 0.0, 2 / 3),
        ("NYC", ["New York City", "NYC"], 1.0, 1.0),  # any alias
        ("New York", ["New York City", "NYC"], 0.0, 0.8),  # best alias for F1
        ("London", ["Paris"], 0.0, 0.0),
        (None, ["Paris"], 0.0, 0.0),
        ("", ["Paris"], 0.0, 0.0),
        ("the", ["a"], 0.0, 0.0),  # both normalize to "": never a match
        ("Zürich", ["zürich"], 1.0, 1.0),
        ("Zurich", ["Zürich"], 0.0, 0.0),
        ("yes", ["no"], 0.0, 0.0),
        ("yes", ["Yes."], 1.0, 1.0),
        ("yes it is", ["yes"], 0.0, 0.0),  # HotpotQA rule: a special token only matches itself
        ("no answer", ["noanswer"], 0.0, 0.0),
        ("the the cat cat", ["cat"], 0.0, 2 / 3),  # token counts are clipped
    ],
)
def test_em_and_f1_known_cases(pred: str | None, golds: list[str], em: float, f1: float) -> None:
    assert exact_match(pred, golds) == em
    assert f1_score(pred, golds) == pytest.approx(f1)


@pytest.mark.parametrize(
    "text,content",
    [
        (r"The answer is \boxed{Paris}.", "Paris"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{a} then \boxed{ b }", "b"),  # the last one, stripped
        (r"\boxed {x}", "x"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not nest
        (r"\boxed{\boxed{x}}", r"\boxed{x}"),  # the outer box is the top-level one
        (r"\boxed{a} and \boxed{unfinished", None),  # cut off in the final answer
        ("no box here", None),
        (r"\boxed", None),
        (None, None),
    ],
)
def test_extract_boxed(text: str | None, content: str | None) -> None:
    assert extract_boxed(text) == content


def test_boxed_mode_requires_a_box() -> None:
    assert exact_match(r"I think \boxed{The Eiffel Tower}", ["eiffel tower"], boxed=True) == 1.0
    assert exact_match("The Eiffel Tower", ["eiffel tower"], boxed=True) == 0.0
    assert exact_match("The Eiffel Tower", ["eiffel tower"], boxed=False) == 1.0
    assert exact_match(r"\boxed{Paris} is not Lyon", ["Paris"]) == 0.0  # without boxed the whole text counts
    assert f1_score(r"\boxed{Paris, France}", ["Paris"], boxed=True) == pytest.approx(2 / 3)
    assert f1_score("Paris", ["Paris"], boxed=True) == 0.0


def test_score_questions() -> None:
    scores = score_questions(["Paris", "Paris, France", None], [["Paris"], ["Paris"], ["Lyon"]])
    assert scores.em == [1.0, 0.0, 0.0]
    assert scores.f1 == pytest.approx([1.0, 2 / 3, 0.0])
    assert scores.reward == pytest.approx(1 / 3)
    assert scores.mean_f1 == pytest.approx(5 / 9)


def test_one_answer_counts_once() -> None:
    """The AtomMem release could credit one answer to several questions; here answers pair by position."""
    scores = score_questions(["Paris", "Paris"], [["Paris"], ["Lyon"]])
    assert scores.em == [1.0, 0.0] and scores.reward == 0.5
    scores = score_questions(["Paris Lyon Nice"], [["Paris", "Lyon", "Nice"]])
    assert scores.reward == 0.0  # a shotgun answer matches no alias exactly


def test_score_questions_boxed() -> None:
    scores = score_questions([r"\boxed{1/2}", "1/2"], [["1/2"], ["1/2"]], boxed=True)
    assert scores.em == [1.0, 0.0]


@pytest.mark.parametrize(
    "predictions,golds,match",
    [
        (["a"], [["a"], ["b"]], "one prediction per question"),
        ([], [], "at least one question"),
        (["a"], ["a"], r"golds\[0\] must be a sequence of gold aliases, not a str"),
        (["a"], [[]], r"golds\[0\] is empty"),
        (["a"], [[None]], r"golds\[0\] must hold str aliases"),
        ("a", [["a"]], "not a str"),
    ],
)
def test_score_questions_rejects_bad_input(predictions, golds, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        score_questions(predictions, golds)


def test_single_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="not a str"):
        exact_match("Paris", "Paris")
    with pytest.raises(ValueError, match="empty"):
        f1_score("Paris", [])
    with pytest.raises(TypeError, match="prediction"):
        exact_match(42, ["42"])  # type: ignore[arg-type]


answers = st.one_of(st.none(), st.text(max_size=30), st.sampled_from(["Paris", "the Paris!", "yes", "no"]))
golds_st = st.lists(st.text(min_size=1, max_size=20) | st.sampled_from(["Paris", "yes"]), min_size=1, max_size=3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(answers, golds_st), min_size=1, max_size=10), st.booleans())
def test_scores_are_bounded(pairs, boxed: bool) -> None:
    preds, golds = [p for p, _ in pairs], [g for _, g in pairs]
    scores = score_questions(preds, golds, boxed=boxed)
    assert 0.0 <= scores.reward <= 1.0 and 0.0 <= scores.mean_f1 <= 1.0
    for em, f1 in zip(scores.em, scores.f1, strict=True):
        assert em in (0.0, 1.0) and 0.0 <= f1 <= 1.0
        assert em <= f1  # an exact match always has F1 1
