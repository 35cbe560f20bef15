"""Results per question category: LongMemEval's question types, LoCoMo's categories, MemoryAgentBench's sources.

A sample carries one category per question (``LongContextSample.categories``; empty for datasets without them).
Each method's row of ``results.json`` then gets ``by_category``: per category, its number of questions and the
mean SQuAD EM and F1 over them (percent), and ``results.md`` a second table, methods by categories.
"""

from __future__ import annotations

from collections.abc import Sequence

from atom.data.longcontext import LongContextSample
from atom.env.rollout import Trajectory


def by_category(trajectories: Sequence[Trajectory], samples: Sequence[LongContextSample]) -> dict[str, dict]:
    """{category: {"questions", "em", "f1"}} over the questions of ``trajectories``; {} when none has a category."""
    categories = {s.id: s.categories for s in samples}
    scores: dict[str, list[tuple[float, float]]] = {}
    for t in trajectories:
        cats = categories.get(t.sample_id, ())
        for i, (em, f1) in enumerate(zip(t.result.em, t.result.f1)):
            if i < len(cats) and cats[i]:
                scores.setdefault(cats[i], []).append((em, f1))
    return {
        cat: {
            "questions": len(xs),
            "em": 100 * sum(x[0] for x in xs) / len(xs),
            "f1": 100 * sum(x[1] for x in xs) / len(xs),
        }
        for cat, xs in sorted(scores.items())
    }


def category_table(rows: dict[str, dict]) -> str:
    """Methods x categories, each cell "EM (F1)" in percent; "" when no row has categories."""
    cats = sorted({c for r in rows.values() for c in r.get("by_category", {})})
    if not cats:
        return ""
    counts = {c: max(r.get("by_category", {}).get(c, {}).get("questions", 0) for r in rows.values()) for c in cats}
    lines = [
        "| method | " + " | ".join(f"{c} (n={counts[c]})" for c in cats) + " |",
        "|" + "---|" * (len(cats) + 1),
    ]
    for name, r in rows.items():
        got = r.get("by_category", {})
        cells = [f"{got[c]['em']:.1f} ({got[c]['f1']:.1f})" if c in got else "-" for c in cats]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nPer category: EM (F1) in %, SQuAD scorer; n = questions."
