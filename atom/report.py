"""``python -m atom.report RUN_DIR [RUN_DIR ...] --out DIR``: the paper's tables and figures from any runs.

Reads every evaluation (``atom.fit``, ``atom.evaluate``, ``atom.sweep``) and the TensorBoard scalars of each run
directory, and writes into ``DIR``: ``report.md`` (the main table in the paper's layout with the paper's published
averages beside ours, the ablation table, the training table) and the PNGs it links: ``em_vs_docs.png``,
``training.png`` (reward and validation EM against step), ``operations.png`` (Create/Read/Update/Delete per turn
against step) and ``store_size.png`` (store size against read turn).
"""

from __future__ import annotations

from pathlib import Path

from atom.cli import entry_point
from atom.cli import parser as cli_parser
from atom.eval import figures, paper
from atom.eval.runs import find_results, read_curves
from atom.eval.tables import ablation_table, main_table, training_table

FIGURES = {
    "em_vs_docs.png": ("EM against the number of documents (the scaling claim)", figures.em_vs_docs, "results"),
    "training.png": ("GRPO reward and validation EM against the rollout step", figures.training_curves, "curves"),
    "operations.png": ("memory operations per turn against the rollout step", figures.operation_rates, "curves"),
    "store_size.png": ("store size against the read turn (evaluations)", figures.store_size, "results"),
}


def build(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Write the report for ``run_dirs`` into ``out``; returns the markdown file."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = [r for d in run_dirs for r in find_results(d)]
    curves = {c.run: c for c in (read_curves(d) for d in run_dirs)}
    if not results and not any(c.scalars for c in curves.values()):
        raise ValueError(f"no evaluation results and no TensorBoard scalars under {[str(d) for d in run_dirs]}")
    parts = [
        "# atom report",
        "Runs: " + ", ".join(f"`{d}`" for d in run_dirs),
        "## Main table (EM %)",
        main_table(results) if results else "No evaluation results in these runs.",
        "## Ablations (AtomMem)",
        ablation_table(results, curves),
        "## Training",
        training_table(curves),
        f"Paper reference: {paper.SOURCE}.",
        "## Figures",
    ]
    data = {"results": results, "curves": curves}
    for name, (caption, draw, source) in FIGURES.items():
        written = draw(data[source], out / name)
        if written is None:
            (out / name).unlink(missing_ok=True)
            parts.append(f"*{caption}: no run has the data for it.*")
        else:
            parts.append(f"**{caption}**\n\n![{caption}]({name})")
    path = out / "report.md"
    path.write_text("\n\n".join(parts) + "\n")
    return path


@entry_point("atom.report")
def main(argv: list[str] | None = None) -> Path:
    parser = cli_parser("python -m atom.report", __doc__)
    parser.add_argument("runs", nargs="+", help="run directories (runs/<name>), any mix of fit, evaluate, sweep")
    parser.add_argument("--out", required=True, help="folder for report.md and its PNGs")
    args = parser.parse_args(argv)
    path = build(args.runs, args.out)
    print(path.read_text())
    print(f"report written to {path}")
    return path


if __name__ == "__main__":
    main()
