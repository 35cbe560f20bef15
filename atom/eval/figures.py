"""The report's figures as PNG (matplotlib, Agg backend): scaling, training curves, operation rates, store size.

Each function draws from what the runs hold and returns the file written, or None when no run has the data (the
report then says so). The paper's figures are drawn dashed and labelled "paper"; where only a curve's endpoints
are known they are joined by a straight segment, which the label says.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from atom.eval import paper  # noqa: E402
from atom.eval.runs import Curves, Result, ops_per_turn, rollout_steps, store_sizes  # noqa: E402
from atom.eval.tables import columns, row_key, row_name  # noqa: E402

DPI = 80
MARKERS = "osD^vP*X"  # lines that coincide (e.g. two baselines at 0 EM) stay distinguishable


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def em_vs_docs(results: Sequence[Result], path: Path) -> Path | None:
    """EM against the number of documents, one panel per dataset, one line per (method, stage, variant, run)."""
    datasets = list(dict.fromkeys(d for d, _ in columns(results)))
    if not datasets:
        return None
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        lines: dict[tuple, dict[int, float]] = {}
        for r in results:
            if r.dataset == dataset:
                lines.setdefault(row_key(r), {})[r.num_docs] = r.summary["em"]
        for i, (key, points) in enumerate(sorted(lines.items())):
            xs = sorted(points)
            ax.plot(xs, [points[x] for x in xs], marker=MARKERS[i % len(MARKERS)], markersize=7 - i % 3,
                    label=f"{row_name(key)} · {key[3]}")  # fmt: skip
        ax.set_title(dataset)
        ax.set_xlabel("documents per sample")
        ax.set_ylabel("EM (%)")
        ax.set_xscale("log", base=2)
        ticks = sorted({r.num_docs for r in results if r.dataset == dataset})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def training_curves(curves: dict[str, Curves], path: Path) -> Path | None:
    """GRPO reward and validation EM against the rollout step; the paper's reward endpoints dashed."""
    runs = {n: c for n, c in curves.items() if c.series("grpo/reward")[0]}
    if not runs:
        return None
    fig, (ax_r, ax_v) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, c in sorted(runs.items()):
        ax_r.plot(*rollout_steps(c, "grpo/reward"), marker=".", label=name)
        xs, ys = rollout_steps(c, "val/em")
        if xs:
            ax_v.plot(xs, ys, marker="o", label=name)
    for label, start, end, steps in paper.REWARD_CURVES.values():
        ax_r.plot([0, steps], [start, end], linestyle="--", alpha=0.6, label=f"paper: {label} (endpoints)")
    ax_r.set(title="training reward", xlabel="rollout step", ylabel="mean reward")
    ax_v.set(title="validation EM (greedy)", xlabel="rollout step", ylabel="EM (%)")
    for ax in (ax_r, ax_v):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def operation_rates(curves: dict[str, Curves], path: Path) -> Path | None:
    """Create / Read / Update / Delete per turn against the rollout step; the paper's start and end dashed."""
    runs = {n: c for n, c in curves.items() if c.series("memory/create_per_episode")[0]}
    if not runs:
        return None
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    for ax, (op, (start, end)) in zip(axes, paper.OPS_PER_TURN.items()):
        for name, c in sorted(runs.items()):
            xs, ys = ops_per_turn(c, op)
            ax.plot(xs, ys, marker=".", label=name)
        ax.plot([0, 100], [start, end], linestyle="--", color="gray", label="paper (endpoints, ~100 steps)")
        ax.set(title=f"{op} per turn", xlabel="rollout step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def store_size(results: Sequence[Result], path: Path) -> Path | None:
    """Mean live store entries after each read turn, per evaluation of the agents that use the store."""
    series = [(r, store_sizes(r)) for r in results if r.method in ("atommem", "oracle") and r.variant != "no_storage"]
    series = [(r, s) for r, s in series if any(s)]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for r, sizes in series:
        ax.plot(range(1, len(sizes) + 1), sizes, label=f"{row_name(row_key(r))} · {r.dataset} {r.num_docs} · {r.run}")
    ax.set(title="store size during reading", xlabel="read turn (chunk)", ylabel="live entries (mean over episodes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return _save(fig, path)
