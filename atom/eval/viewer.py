"""A static HTML trajectory viewer: every turn's prompt (folded), reply, and the episode's outcome.

Written next to the evaluation results as ``trajectories.html``; open it in any browser. All model and dataset text
is HTML-escaped, so a reply can never inject markup.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from atom.agent.actions import parse_actions
from atom.agent.rollout import Trajectory

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; }
details.episode { border: 1px solid #ccc; border-radius: 6px; margin: 0.6em 0; padding: 0.4em 0.8em; }
.turn { border-left: 3px solid #8ab; margin: 0.6em 0; padding-left: 0.8em; }
.turn.answer { border-color: #b8a; }
pre { white-space: pre-wrap; background: #f6f6f6; padding: 0.5em; margin: 0.3em 0; }
.ok { color: #080; } .bad { color: #b00; } .meta { color: #555; font-size: 0.9em; }
"""


def _turn(index: int, turn) -> str:
    parsed = parse_actions(turn.reply.text)
    kinds = ", ".join(a.kind for a in parsed.actions) or "no action"
    invalid = sum(parsed.invalid.values())
    prompt = html.escape(turn.messages[-1]["content"])
    return (
        f'<div class="turn {html.escape(turn.phase)}"><div class="meta">turn {index + 1} · {html.escape(turn.phase)}'
        f" · {html.escape(kinds)}{f' · {invalid} invalid' if invalid else ''}</div>"
        f"<details><summary>prompt</summary><pre>{prompt}</pre></details>"
        f"<pre>{html.escape(turn.reply.text)}</pre></div>"
    )


def _episode(method: str, traj: Trajectory, questions: Sequence[str], answers: Sequence[Sequence[str]]) -> str:
    r = traj.result
    rows = []
    for q, pred, gold, em in zip(questions, r.predictions, answers, r.em):
        mark = "ok" if em else "bad"
        rows.append(
            f'<li>{html.escape(q)} → <span class="{mark}">{html.escape(str(pred))}</span> '
            f"(gold: {html.escape(' | '.join(gold))})</li>"
        )
    turns = "".join(_turn(i, t) for i, t in enumerate(traj.turns))
    return (
        f'<details class="episode"><summary>{html.escape(method)} · {html.escape(r.sample_id)} · reward '
        f"{r.reward:.2f} · {len(traj.turns)} turns · store {r.stats.store_sizes[-1] if r.stats.store_sizes else 0}"
        f"</summary><ul>{''.join(rows)}</ul>{turns}</details>"
    )


def write_viewer(path: str | Path, trajectories: dict[str, list[Trajectory]], samples, max_episodes: int = 50) -> Path:
    """Write the viewer for the first ``max_episodes`` episodes of each method; ``samples`` gives the questions."""
    by_id = {s.id: s for s in samples}
    parts = [f"<!doctype html><meta charset='utf-8'><title>atom trajectories</title><style>{_STYLE}</style>"]
    parts.append("<h1>atom trajectories</h1>")
    for method, trajs in trajectories.items():
        parts.append(f"<h2>{html.escape(method)}</h2>")
        for traj in trajs[:max_episodes]:
            sample = by_id[traj.sample_id]
            parts.append(_episode(method, traj, sample.questions, sample.answers))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))
    return out
