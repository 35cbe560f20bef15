"""Paired significance for per-question 0/1 outcomes of two policies on the same questions.

The exact McNemar test: only discordant questions carry information; under H0 (no difference) a question that
changed is equally likely to have been gained or lost, so ``lost ~ Binomial(gained + lost, 1/2)``; the p-value is
two-sided (scipy's ``binomtest``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from scipy.stats import binomtest

from atom import jsonl


@dataclass(frozen=True)
class PairedTest:
    n: int  # questions compared
    before: float  # mean score before (fraction)
    after: float  # mean score after
    gained: int  # wrong before, right after
    lost: int  # right before, wrong after
    p: float  # two-sided exact McNemar p-value (1.0 when nothing changed)

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{100 * self.before:.1f} -> {100 * self.after:.1f} on {self.n} questions: "
            f"+{self.gained} / -{self.lost}, exact McNemar p = {self.p:.3g}"
        )


def paired_test(before: Sequence[float], after: Sequence[float]) -> PairedTest:
    """Compare 0/1 outcomes (EM per question, in the same order). Scores other than 0 and 1 are refused."""
    if len(before) != len(after):
        raise ValueError(f"paired_test needs the same questions twice, got {len(before)} and {len(after)} scores")
    if any(x not in (0, 1) for x in (*before, *after)):
        raise ValueError("paired_test compares 0/1 outcomes (exact match per question)")
    gained = sum(1 for b, a in zip(before, after) if a > b)
    lost = sum(1 for b, a in zip(before, after) if a < b)
    p = binomtest(lost, gained + lost, 0.5).pvalue if gained + lost else 1.0
    n = len(before)
    return PairedTest(n, sum(before) / max(n, 1), sum(after) / max(n, 1), gained, lost, float(p))


def question_em(eval_dir: Path, method: str) -> dict[tuple[str, int], float]:
    """Per-question SQuAD EM of ``method`` in an evaluation directory (its ``episodes.jsonl``), keyed by
    (sample id, question index)."""
    path = Path(eval_dir) / "episodes.jsonl"
    out = {}

    def parse(row: dict) -> dict[tuple[str, int], float]:
        return {(row["sample_id"], i): float(em) for i, em in enumerate(row["em"])} if row["method"] == method else {}

    for ems in jsonl.read(path, parse, "an episode record"):
        out.update(ems)
    return out


def paired_evaluations(before: Path, after: Path, method: str) -> PairedTest:
    """``paired_test`` of one method's per-question EM in two evaluation directories, on the questions both
    hold (an atom.fit run evaluates the same held-out samples each time)."""
    a, b = question_em(before, method), question_em(after, method)
    keys = sorted(a.keys() & b.keys())
    if not keys:
        raise ValueError(f"{before} and {after} share no question of method {method!r}")
    return paired_test([a[k] for k in keys], [b[k] for k in keys])


def paired_markdown(tests: dict[str, PairedTest]) -> str:
    """The paired comparisons of a run as a table (one row per 'X -> Y')."""
    lines = [
        "| comparison (per-question EM) | before | after | gained | lost | p (exact McNemar) |",
        "|---|---|---|---|---|---|",
    ]
    for name, t in tests.items():
        lines.append(f"| {name} | {100 * t.before:.1f} | {100 * t.after:.1f} | {t.gained} | {t.lost} | {t.p:.3g} |")
    return "\n".join(lines)
