"""The report's tables in markdown: the paper's main table across runs, the ablations, the training curves.

Rows are (method, training stage, ablation variant, run); columns of the main table are (dataset, documents) with
the average over the cells a row has. The paper's published figures sit in rows of their own, marked as the
paper's, with their scorer; atom's scorer is named in the header of the columns it fills.
"""

from __future__ import annotations

from collections.abc import Sequence

from atom.eval import paper
from atom.eval.runs import Curves, Result, rollout_steps

DATASET_ORDER = ("hotpotqa", "2wiki", "musique", "synthetic")
METHOD_NAMES = {"atommem": "AtomMem", "memagent": "MemAgent", "rag": "RAG", "full_context": "Full context",
                "oracle": "Oracle teacher"}  # fmt: skip
REMOVES = {
    "full": "nothing",
    "no_update": "Update on the store",
    "no_delete": "Delete on the store",
    "no_scratchpad": "the scratchpad (storage only)",
    "no_storage": "the vector store (scratchpad only)",
    "no_memory": "store and scratchpad",
}

RowKey = tuple[str, str, str, str]  # method, stage, variant, run


def row_key(r: Result) -> RowKey:
    return (r.method, r.stage, r.variant, r.run)


def row_name(key: RowKey) -> str:
    method, stage, variant, _ = key
    name = METHOD_NAMES.get(method, method)
    if stage:
        name += f" ({stage})"
    if variant != "full":
        name += f" [{variant}]"
    return name


def _order(key: RowKey) -> tuple:
    methods = list(METHOD_NAMES)
    stages = ["untrained", "", "sft", "grpo", "sft+grpo"]
    m, s, v, run = key
    return (methods.index(m) if m in methods else 99, stages.index(s) if s in stages else 50, s, v != "full", v, run)


def columns(results: Sequence[Result]) -> list[tuple[str, int]]:
    def dataset_rank(d: str) -> int:
        return DATASET_ORDER.index(d) if d in DATASET_ORDER else 99

    return sorted({(r.dataset, r.num_docs) for r in results}, key=lambda c: (dataset_rank(c[0]), c[0], c[1]))


def paper_row(method: str, stage: str) -> tuple[str, float] | None:
    """The paper's row for a (method, stage) of atom: AtomMem after any GRPO stage is AtomMem-RL."""
    stage_key = "rl" if ("grpo" in stage or stage == "rl") else ""
    return paper.AVERAGE_EM.get((method, stage_key))


def main_table(results: Sequence[Result], metric: str = "em") -> str:
    """Methods x (dataset, documents) of ``metric`` (%), average over the row's cells, the paper's rows beneath."""
    cols = columns(results)
    cells: dict[RowKey, dict[tuple[str, int], float]] = {}
    for r in results:
        cells.setdefault(row_key(r), {})[(r.dataset, r.num_docs)] = r.summary[metric]
    scorers = sorted({r.scorer for r in results})
    head = "| method | run | " + " | ".join(f"{d} {n}" for d, n in cols) + " | avg |"
    lines = [head, "|" + "---|" * (len(cols) + 3)]
    for key in sorted(cells, key=_order):
        row = cells[key]
        vals = [row.get(c) for c in cols]
        have = [v for v in vals if v is not None]
        avg = f"{sum(have) / len(have):.1f}" + ("" if len(have) == len(cols) else "*") if have else "-"
        body = " | ".join("-" if v is None else f"{v:.1f}" for v in vals)
        lines.append(f"| {row_name(key)} | {key[3]} | {body} | {avg} |")
    shown = {paper_row(k[0], k[1]) for k in cells} - {None}
    for name, value in sorted(shown or paper.AVERAGE_EM.values(), key=lambda x: -x[1]):
        lines.append(f"| **{name} (paper)** | paper | " + " | ".join("n/a" for _ in cols) + f" | **{value:.1f}** |")
    notes = [
        f"{metric.upper()} in %, atom's scorer: {', '.join(scorers) or '-'}; "
        f"paper rows: {paper.SCORER}, average over {paper.GRID} ({paper.SOURCE}); per-cell paper values are not "
        "available here (n/a).",
    ]
    if any("*" in line.rsplit("|", 2)[-2] for line in lines[2:]):
        notes.append("\\* average over the cells this row has, not the full grid.")
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes)


def _first_last(xs: Sequence[float]) -> str:
    return f"{xs[0]:.3f} -> {xs[-1]:.3f}" if xs else "-"


def ablation_table(results: Sequence[Result], curves: dict[str, Curves]) -> str:
    """AtomMem rows by ablation variant: what is removed, EM/F1 (mean over cells), ops, and the reward curve
    (first -> last GRPO step) beside the paper's where it published one."""
    groups: dict[RowKey, list[Result]] = {}
    for r in results:
        if r.method == "atommem":
            groups.setdefault(row_key(r), []).append(r)
    lines = [
        "| variant | removes | run | stage | cells | EM | F1 | create | read | update | delete | invalid "
        "| reward (ours) | reward (paper) |",
        "|" + "---|" * 14,
    ]
    for key in sorted(groups, key=lambda k: (k[2] != "full", k[2], _order(k))):
        rs = groups[key]
        mean = {k: sum(r.summary[k] for r in rs) / len(rs) for k in ("em", "f1", "invalid_per_episode")}
        ops = {op: sum(r.summary["ops_per_episode"].get(op, 0.0) for r in rs) / len(rs) for op in paper.OPS_PER_TURN}
        c = curves.get(key[3]) if "grpo" in key[1] or key[1] == "rl" else None  # rows evaluated after GRPO
        ours = _first_last(rollout_steps(c, "grpo/reward")[1]) if c else "-"
        ref = paper.REWARD_CURVES.get(key[2]) if c else None
        theirs = f"{ref[1]:.2f} -> {ref[2]:.2f} ({ref[0]}, ~{ref[3]} steps)" if ref else "-"
        lines.append(
            f"| {key[2]} | {REMOVES.get(key[2], key[2])} | {key[3]} | {key[1] or '-'} | {len(rs)} "
            f"| {mean['em']:.1f} | {mean['f1']:.1f} | {ops['create']:.2f} | {ops['read']:.2f} "
            f"| {ops['update']:.2f} | {ops['delete']:.2f} | {mean['invalid_per_episode']:.2f} | {ours} | {theirs} |"
        )
    ran = {k[2] for k in groups}
    for variant, (label, start, end, steps) in paper.REWARD_CURVES.items():
        if variant not in ran:
            lines.append(f"| {variant} | {REMOVES[variant]} | paper | - | - |" + " - |" * 7
                         + f" - | {start:.2f} -> {end:.2f} ({label}, ~{steps} steps) |")  # fmt: skip
    return "\n".join(lines) + (
        "\n\nOperations are per episode (evaluation, greedy). Reward (ours): `grpo/reward` of the run's first and "
        "last rollout step; the paper's are read off its curves (endpoints only)."
    )


TRAINING_TAGS = ("grpo/reward", "val/em", "grpo/kl", "grpo/clip_ratio", "grpo/entropy", "memory/store_size")


def training_table(curves: dict[str, Curves]) -> str:
    """First -> last value of the main training scalars of each run that has a GRPO stage."""
    lines = ["| run | steps | " + " | ".join(TRAINING_TAGS) + " |", "|" + "---|" * (len(TRAINING_TAGS) + 2)]
    for run, c in sorted(curves.items()):
        steps = rollout_steps(c, "grpo/reward")[0]
        if not steps:
            continue
        vals = " | ".join(_first_last(rollout_steps(c, t)[1]) for t in TRAINING_TAGS)
        lines.append(f"| {run} | {len(steps)} | {vals} |")
    ref = paper.REWARD_CURVES["full"]
    lines.append(f"| **paper (AtomMem-RL)** | ~{ref[3]} | **{ref[1]:.2f} -> {ref[2]:.2f}** |" + " - |" * 5)
    return "\n".join(lines)
