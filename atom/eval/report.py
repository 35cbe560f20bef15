"""Aggregate episode results into the evaluation table (results.json, results.md, episodes.jsonl)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from atom import jsonl
from atom.env.rollout import Trajectory
from atom.env.shaping import TERMS, reward_terms

OPS = ("create", "read", "update", "delete", "scratchpad", "answer")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarize(
    trajectories: Sequence[Trajectory], wall_s: float, terms: Sequence[dict[str, float]] | None = None
) -> dict:
    """Mean figures per episode, and operations per LLM call (the release's "action rate").

    Scorers: ``em``/``f1`` are SQuAD EM/F1, means over questions; ``release_em`` is the release's scorer (boxed
    answer, ``strip_string``), mean over samples as the release averaged (with ``agent.release_double_count``
    its pooled double count, which can pass 100). All in percent. ``release_applies``: the answers were asked for
    boxed; otherwise ``release_em`` is 0 by construction and tables print "-". ``terms``: each episode's
    ``reward_terms`` when the caller has them already (GRPO's step computes them once).
    """
    results = [t.result for t in trajectories]
    em = [x for r in results for x in r.em]
    f1 = [x for r in results for x in r.f1]
    stats = [r.stats for r in results]
    kinds = sorted({k for s in stats for k in s.ops})
    calls = sum(s.llm_calls for s in stats)
    out = {
        "episodes": len(results),
        "questions": len(em),
        "em": 100 * _mean(em),
        "f1": 100 * _mean(f1),
        "release_em": 100 * _mean([r.release_score for r in results]),
        "release_applies": any(r.boxed for r in results),
        "reward": _mean([r.reward for r in results]),
        "ops_per_episode": {k: _mean([s.ops[k] for s in stats]) for k in kinds},
        "ops_per_turn": {k: sum(s.ops[k] for s in stats) / calls if calls else 0.0 for k in kinds},
        "invalid_per_episode": _mean([sum(s.invalid.values()) for s in stats]),
        "invalid_by_kind": {
            k: _mean([s.invalid[k] for s in stats]) for k in sorted({k for s in stats for k in s.invalid})
        },
        "mean_store_size": _mean([_mean(s.store_sizes) for s in stats if s.store_sizes]),
        "llm_calls_per_episode": _mean([s.llm_calls for s in stats]),
        "prompt_tokens_per_episode": _mean([s.prompt_tokens for s in stats]),
        "completion_tokens_per_episode": _mean([s.completion_tokens for s in stats]),
        "truncated_prompts_per_episode": _mean([s.truncated_prompts for s in stats]),  # centre-cut to the budget
        # turns cut at max_new_tokens without EOS or a stop string (a reply the limit cut mid-action)
        "cutoff_per_episode": _mean([sum(bool(t.reply.cut_off) for t in tr.turns) for tr in trajectories]),
        "wall_s": wall_s,
    }
    stored = [r.facts_stored for r in results if r.facts_stored is not None]
    retrieved = [r.facts_retrieved for r in results if r.facts_retrieved is not None]
    out["facts_stored"] = 100 * _mean(stored) if stored else None
    out["facts_retrieved"] = 100 * _mean(retrieved) if retrieved else None
    # grpo.reward's terms (atom.env.shaping), unweighted episode means: what a shaped reward would see
    terms = [reward_terms(t) for t in trajectories] if terms is None else terms
    out["reward_terms"] = {k: _mean([x[k] for x in terms]) for k in TERMS}
    return out


def markdown_table(rows: dict[str, dict]) -> str:
    """One row per method, the columns of the paper's comparison plus the cost of each method.

    EM and F1 are SQuAD's (question mean); "release EM" is the release's scorer (sample mean; "-" when the answers
    were not asked boxed, where it is 0 by construction); operations are per episode, with per LLM call in
    brackets; "cut-off" is turns per episode that the token limit cut.
    """
    head = (
        "| method | EM (SQuAD) | F1 (SQuAD) | release EM | create | read | update | delete | invalid | cut-off "
        "| store | LLM calls | tokens (in/out) | facts stored | facts retrieved | wall s |"
    )
    judged = any("judge" in r for r in rows.values())
    if judged:  # the LLM judge's column sits next to EM/F1 (judged questions; failures counted apart)
        head = head.replace("| F1 (SQuAD) |", "| F1 (SQuAD) | judge (failed) |")
    lines = [head, "|" + "---|" * (16 + judged)]
    for name, r in rows.items():
        ops, rate = r["ops_per_episode"], r.get("ops_per_turn", {})
        pct = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        op = lambda k, ops=ops, rate=rate: f"{ops.get(k, 0):.1f} ({rate.get(k, 0):.2f})"  # noqa: E731
        lines.append(
            f"| {name} | {r['em']:.1f} | {r['f1']:.1f} |"
            + (f" {pct(r.get('judge'))} ({r.get('judge_failed', 0)}) |" if judged else "")
            + f" {pct(r.get('release_em', 0) if r.get('release_applies', True) else None)} | {op('create')} "
            f"| {op('read')} | {op('update')} | {op('delete')} | {r['invalid_per_episode']:.1f} "
            f"| {r.get('cutoff_per_episode', 0.0):.2f} | {r['mean_store_size']:.1f} | {r['llm_calls_per_episode']:.1f} "
            f"| {r['prompt_tokens_per_episode']:.0f}/{r['completion_tokens_per_episode']:.0f} "
            f"| {pct(r['facts_stored'])} | {pct(r['facts_retrieved'])} | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def write_results(out_dir: str | Path, rows: dict[str, dict], trajectories: dict[str, list[Trajectory]],
                  meta: dict, terms: dict[str, list[dict]] | None = None) -> Path:  # fmt: skip
    """Write results.json, results.md and one episodes.jsonl line per episode (predictions, golds, counters).
    ``terms``: each method's episodes' ``reward_terms`` when the caller computed them already."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "methods": rows}, indent=2))
    (out / "results.md").write_text(markdown_table(rows) + "\n")
    jsonl.write(out / "episodes.jsonl", (
        {
            "method": method, "sample_id": t.result.sample_id, "predictions": t.result.predictions,
            "em": t.result.em, "f1": t.result.f1, "release_em": t.result.release_em,
            "release_score": t.result.release_score, "ops": dict(t.result.stats.ops),
            "invalid": dict(t.result.stats.invalid), "llm_calls": t.result.stats.llm_calls,
            "store_sizes": t.result.stats.store_sizes, "truncated_prompts": t.result.stats.truncated_prompts,
            "cut_off_turns": sum(bool(x.reply.cut_off) for x in t.turns), "reward_terms": t_terms,
        }
        for method, trajs in trajectories.items()
        for t, t_terms in zip(trajs, terms[method] if terms is not None else [reward_terms(x) for x in trajs])
    ))  # fmt: skip
    return out / "results.json"
