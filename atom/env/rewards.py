"""Answer scoring: SQuAD-style exact match and token F1, the boxed-answer option, and the episode reward.

The episode reward is the mean exact match over a sample's questions. ``score_questions`` pairs
predictions with questions by position: each question contributes one prediction scored against its own gold
aliases, exactly once. So the reward lies in [0, 1], and one correct answer can never be counted for several
golds (the AtomMem release's rule reward could count it several times and go above 1).

Normalization is the official SQuAD / HotpotQA ``normalize_answer``. It lower-cases, removes ASCII
punctuation (``string.punctuation``), removes the articles a/an/the and collapses whitespace. Non-ASCII
punctuation and accents are kept unchanged, so scores can be compared with published numbers. Two
conventions are added on top: a prediction whose normalized form is empty scores 0, and a gold alias whose
normalized form is empty never matches. This stops ``"the"`` from matching ``"a"``.

Boxed mode (``agent.boxed_answers``; NOT the release's match, which is ``atom.env.scorers``): the prediction must
contain ``\\boxed{...}``. Only the content of the last complete top-level box is compared (see ``extract_boxed``).
A prediction without one scores 0.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
_SPECIAL = ("yes", "no", "noanswer")  # HotpotQA's F1 convention: these only ever match themselves
_BOXED = re.compile(r"\\boxed\s*\{")


def normalize_answer(s: str) -> str:
    """SQuAD normalization: lower-case, drop punctuation, drop articles, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def extract_boxed(text: str | None) -> str | None:
    """Content of the last top-level ``\\boxed{...}`` of ``text``, stripped, or None.

    Braces are matched with nesting (``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``). Escaped braces
    ``\\{`` and ``\\}`` do not count. A box nested inside another box belongs to the outer one. If the last
    box that was opened is never closed, meaning the reply was cut off in its final answer, the result is
    None, not an earlier box the model moved on from.
    """
    if not isinstance(text, str):
        return None
    last = None
    pos = 0
    while (m := _BOXED.search(text, pos)) is not None:
        depth, i = 1, m.end()
        while i < len(text) and depth:
            ch = text[i]
            if ch == "\\":
                i += 2  # an escaped character (\{ or \}) never opens or closes a group
                continue
            depth += (ch == "{") - (ch == "}")
            i += 1
        if depth:
            return None
        last = text[m.end() : i - 1].strip()
        pos = i
    return last


def _check_golds(golds: Sequence[str], where: str) -> None:
    if isinstance(golds, str):
        raise ValueError(f"{where} must be a sequence of gold aliases, not a str ({golds!r}); wrap it in a list")
    if len(golds) == 0:
        raise ValueError(f"{where} is empty: a question needs at least one gold answer")
    for alias in golds:
        if not isinstance(alias, str):
            raise ValueError(f"{where} must hold str aliases, got {type(alias).__name__}: {alias!r}")


def _prediction_text(prediction: str | None, boxed: bool) -> str | None:
    if prediction is None:
        return None
    if not isinstance(prediction, str):
        raise TypeError(f"prediction must be a str or None, got {type(prediction).__name__}")
    return extract_boxed(prediction) if boxed else prediction


def exact_match(prediction: str | None, golds: Sequence[str], boxed: bool = False) -> float:
    """1.0 if the normalized prediction equals any normalized gold alias, else 0.0 (None or empty -> 0.0)."""
    _check_golds(golds, "golds")
    text = _prediction_text(prediction, boxed)
    pred = normalize_answer(text) if text is not None else ""
    if not pred:
        return 0.0
    return float(any(pred == normalize_answer(g) for g in golds))


def _f1(pred: str, gold: str) -> float:
    if not pred or not gold:
        return 0.0
    if (pred in _SPECIAL or gold in _SPECIAL) and pred != gold:
        return 0.0
    pred_tokens, gold_tokens = pred.split(), gold.split()
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str | None, golds: Sequence[str], boxed: bool = False) -> float:
    """Token F1 between the normalized prediction and the best gold alias (None or empty -> 0.0).

    If either normalized side is yes, no or noanswer and the two sides differ, the F1 is 0 (HotpotQA's rule).
    """
    _check_golds(golds, "golds")
    text = _prediction_text(prediction, boxed)
    if text is None:
        return 0.0
    pred = normalize_answer(text)
    return max(_f1(pred, normalize_answer(g)) for g in golds)


@dataclass
class QuestionScores:
    em: list[float]  # exact match per question, 0.0 or 1.0
    f1: list[float]  # token F1 per question, in [0, 1]
    reward: float  # mean EM over the questions, in [0, 1]
    mean_f1: float  # mean F1 over the questions, in [0, 1]


def score_questions(
    predictions: Sequence[str | None], golds: Sequence[Sequence[str]], boxed: bool = False
) -> QuestionScores:
    """Score one prediction per question against that question's gold aliases.

    Args:
        predictions: one answer per question; None means the question was never answered.
        golds: per question, its non-empty list of gold aliases.
        boxed: require ``\\boxed{...}`` answers and compare their content, SQuAD-normalised.

    Raises:
        ValueError: the two lengths differ, there are no questions, or a question's golds are malformed.
    """
    if isinstance(golds, str) or isinstance(predictions, str):
        raise ValueError("predictions and golds must be sequences with one entry per question, not a str")
    if len(predictions) != len(golds):
        raise ValueError(
            f"predictions has {len(predictions)} entries but golds has {len(golds)}: need one prediction per question"
        )
    if len(golds) == 0:
        raise ValueError("score_questions needs at least one question")
    for q, aliases in enumerate(golds):
        _check_golds(aliases, f"golds[{q}]")
    em = [exact_match(p, g, boxed=boxed) for p, g in zip(predictions, golds, strict=True)]
    f1 = [f1_score(p, g, boxed=boxed) for p, g in zip(predictions, golds, strict=True)]
    return QuestionScores(em=em, f1=f1, reward=sum(em) / len(em), mean_f1=sum(f1) / len(f1))
