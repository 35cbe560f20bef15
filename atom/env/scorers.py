"""The AtomMem release's rule scorer, reproduced rule by rule, next to atom's SQuAD EM/F1 (``atom.env.rewards``).

What the release's evaluation does to one answer (``verl/utils/reward_score/hotpotqa.py`` and
``parse_final_answer`` in ``verl/utils/reward_score/__init__.py`` of RUCBM/AtomMem):

1. Answer text of a reply: the body of the ``<final_answer ...>...</final_answer>`` tag when the reply has exactly
   one (case-insensitive); otherwise the whole reply when it contains ``\\boxed{`` (case-sensitive test);
   otherwise the reply has no answer.
2. Only the LAST 300 characters of the answer text are looked at, lower-cased; the gold is lower-cased too.
3. Box: if the window contains ``\\boxed `` (with a space) anywhere, the answer is what follows the last
   ``\\boxed `` up to the first ``$``. Otherwise the last ``\\boxed`` is found and braces are counted from it
   (no escapes) up to the ``}`` that brings the count back to 0; no such brace gives no answer. The span must
   start with ``\\boxed{`` (``\\fbox{...}`` or ``\\boxedx{...}`` give no answer: the release's assertion fails
   and its exception handler scores 0), and its content is the answer.
4. ``strip_string`` (MATH normalisation) on both sides, then string equality: remove newlines, ``\\!``; turn
   ``\\\\`` into ``\\``; ``tfrac``/``dfrac`` into ``frac``; remove ``\\left``, ``\\right``, ``^{\\circ}``,
   ``^\\circ``, ``\\$``, ``\\%``; turn `` .`` into `` 0.`` and ``{.`` into ``{0.``; then remove every space.
   Articles and punctuation are kept: ``\\boxed{Beatles}`` does not match "The Beatles" (SQuAD EM says 1).
5. A question scores the best over its gold aliases (0 or 1); a sample scores the mean over its questions; the
   table is the mean over samples.

The release's own multi-question reward differs from step 5 in one known way, reproduced only by
``release_flat_score`` (``agent.release_double_count``): it takes the answer text of EVERY reply of the episode
(read-phase replies included), scores each against the gold aliases of ALL questions pooled, sums, and divides
by the number of questions. One answer can then be counted for another question's gold, or several times, and a
sample can score above 1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

RELEASE_WINDOW_CHARS = 300  # the release scores the last 300 characters of an answer text
_FINAL_ANSWER = re.compile(r"<final_answer[^>]*>(.*?)</final_answer>", re.DOTALL | re.IGNORECASE)

# strip_string's replacements, in the release's order (before the final removal of spaces).
_STRIP_STEPS: tuple[tuple[str, str], ...] = (
    ("\n", ""),
    ("\\!", ""),
    ("\\\\", "\\"),
    ("tfrac", "frac"),
    ("dfrac", "frac"),
    ("\\left", ""),
    ("\\right", ""),
    ("^{\\circ}", ""),
    ("^\\circ", ""),
    ("\\$", ""),
    ("\\%", ""),
    (" .", " 0."),
    ("{.", "{0."),
)


def strip_string(s: str) -> str:
    """The release's MATH-style ``strip_string`` (no lower-casing: the scorer lower-cases before calling it)."""
    for old, new in _STRIP_STEPS:
        s = s.replace(old, new)
    return s.replace(" ", "")


def release_normalize(s: str) -> str:
    """What the release compares: ``strip_string`` of the lower-cased text."""
    return strip_string(s.lower())


def release_boxed(window: str) -> str | None:
    """The release's box content of an (already cut and lower-cased) window, or None (rule 3)."""
    if "\\boxed " in window:
        return window.split("\\boxed ")[-1].split("$")[0]
    start = window.rfind("\\boxed")
    if start < 0:
        return None  # the release then looks for \fbox, whose span its box remover rejects: no answer either
    depth, close = 0, None
    for i in range(start, len(window)):
        if window[i] == "{":
            depth += 1
        elif window[i] == "}":
            depth -= 1
            if depth == 0:
                close = i
                break
    if close is None:
        return None
    span = window[start : close + 1]
    return span[len("\\boxed{") : -1] if span.startswith("\\boxed{") else None


def release_answer_text(reply: str | None) -> str | None:
    """The answer text the release scores in a reply (rule 1), or None."""
    if not isinstance(reply, str):
        return None
    bodies = _FINAL_ANSWER.findall(reply)
    if len(bodies) == 1:
        return bodies[0]
    return reply if "\\boxed{" in reply else None


def release_match(prediction: str | None, golds: Sequence[str]) -> float:
    """1.0 when the release's box of ``prediction`` equals a gold alias after ``strip_string`` (rules 2-5)."""
    if isinstance(golds, str) or not golds:
        raise ValueError(f"golds must be a non-empty sequence of aliases, got {golds!r}")
    if prediction is None:
        return 0.0
    if not isinstance(prediction, str):
        raise TypeError(f"prediction must be a str or None, got {type(prediction).__name__}")
    boxed = release_boxed(prediction[-RELEASE_WINDOW_CHARS:].lower())
    if boxed is None:
        return 0.0
    answer = strip_string(boxed)
    return float(any(answer == release_normalize(g) for g in golds))


def release_scores(predictions: Sequence[str | None], golds: Sequence[Sequence[str]]) -> list[float]:
    """Per question: its prediction scored against its own aliases (the sample score is their mean)."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions")
    return [release_match(p, g) for p, g in zip(predictions, golds, strict=True)]


def release_flat_score(replies: Sequence[str], golds: Sequence[Sequence[str]]) -> float:
    """The release's multi-question reward with its double counting (see the module docstring); may exceed 1."""
    if not golds:
        raise ValueError("release_flat_score needs at least one question")
    pooled = [alias for aliases in golds for alias in aliases]
    total = 0.0
    for reply in replies:
        text = release_answer_text(reply)
        if text:  # the release skips a reply whose answer text is empty
            total += release_match(text, pooled)
    return total / len(golds)
