"""Arms of a training experiment over seeds: a table per seed, paired tests against a baseline, a pooled test.

An experiment is a baseline (e.g. "after SFT") and arms (e.g. "outcome only", "gated"), each evaluated once per
training seed on the same held-out questions. A spec (YAML) names the evaluation directories
(``eval/<tag>`` of ``atom.fit``, each with ``results.json`` and ``episodes.jsonl``)::

    method: atommem             # the evaluated method to compare (default atommem)
    baseline: after SFT         # the arm every other arm is tested against, seed by seed
    arms:                       # arm -> one evaluation directory per seed, in the order of `seeds`
      after SFT: [runs/gate_s0/eval/after_sft, runs/gate_s1/eval/after_sft]
      gated: [runs/gate_s0/eval/after_sft_grpo, runs/gate_s1/eval/after_sft_grpo]
    seeds: [0, 1]

Per seed, each arm's row holds EM, the exact McNemar test against that seed's baseline, invalid actions and
cut-off turns per episode, gold facts stored / retrieved, EM of the episodes that stored every gold fact and of the
others (storing apart from answering), and whether its junk (invalid, cut-off) is not above the
baseline's. Over seeds, each arm gets EM mean and standard deviation, how many seeds were significant gains, and a
pooled test: the per-question difference against the baseline, averaged over seeds, under the Wilcoxon
signed-rank test (questions are the random unit; seeds are averaged, not counted as more questions, since every
seed answers the same ones).

Each arm's training run (the directory above ``eval/<tag>``) also gives its GRPO curves from TensorBoard: every
reward term (outcome, memory, invalid, cut-off, validity, compression), the total reward, the share of groups with
zero reward spread, and creates per episode, first step -> last step (``curves``).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import OmegaConf
from scipy.stats import wilcoxon

from atom import jsonl
from atom.errors import AtomError
from atom.eval.runs import read_curves
from atom.eval.stats import PairedTest, paired_test, question_em

SPEC_KEYS = ("method", "baseline", "arms", "seeds")
CURVE_TAGS = {  # TensorBoard tag -> column: the reward terms GRPO logs apart, then what they move
    "grpo/reward": "reward",
    "grpo/reward_outcome": "outcome",
    "grpo/reward_memory": "memory",
    "grpo/reward_invalid": "invalid",
    "grpo/reward_cutoff": "cut-off",
    "grpo/reward_validity": "validity",
    "grpo/reward_compression": "compression",
    "grpo/frac_reward_zero_std": "zero-std groups",
    "memory/create_per_episode": "creates / ep",
}


class SpecError(AtomError, ValueError):
    """A spec or an evaluation directory it names that cannot be compared; the message names the file."""


@dataclass(frozen=True)
class Row:
    """One arm on one seed."""

    arm: str
    seed: int
    em: float
    f1: float
    invalid: float  # invalid actions per episode
    cutoff: float  # cut-off turns per episode
    facts_stored: float  # % of gold facts in the store when reading ended
    facts_retrieved: float  # % shown at answer time
    em_stored: float  # EM over the episodes that stored every gold fact (nan when none did): the answering skill
    em_unstored: float  # EM over the others: what the store did not carry
    test: PairedTest | None  # against the baseline of the same seed; None for the baseline itself
    junk_ok: bool  # invalid and cut-off per episode not above the baseline's


@dataclass(frozen=True)
class Summary:
    """One arm over all seeds."""

    arm: str
    em_mean: float
    em_sd: float
    significant_gains: int  # seeds with p < alpha and more gained than lost
    seeds: int
    junk_ok_seeds: int
    pooled_delta: float  # mean per-question EM difference against the baseline, in points
    pooled_p: float | None  # Wilcoxon signed-rank on the per-question differences averaged over seeds


def load_spec(path: str | Path) -> dict:
    """Read and check a spec; errors name the file and what is wrong."""
    path = Path(path)
    spec = OmegaConf.to_container(OmegaConf.load(path)) or {}
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise SpecError(f"{path}: unknown key(s) {unknown}; valid keys: {list(SPEC_KEYS)}")
    spec.setdefault("method", "atommem")
    for key in ("baseline", "arms", "seeds"):
        if key not in spec:
            raise SpecError(f"{path}: missing key {key!r}")
    if spec["baseline"] not in spec["arms"]:
        raise SpecError(f"{path}: baseline {spec['baseline']!r} is not one of the arms {list(spec['arms'])}")
    for arm, dirs in spec["arms"].items():
        if len(dirs) != len(spec["seeds"]):
            raise SpecError(f"{path}: arm {arm!r} has {len(dirs)} directories for {len(spec['seeds'])} seeds")
    spec["arms"] = {arm: [Path(d) for d in dirs] for arm, dirs in spec["arms"].items()}  # relative: to the cwd
    return spec


def _summary(eval_dir: Path, method: str) -> dict:
    path = eval_dir / "results.json"
    try:
        methods = json.loads(path.read_text())["methods"]
    except (json.JSONDecodeError, KeyError) as err:
        raise SpecError(f"{path}: not an evaluation's results.json ({err})") from err
    if method not in methods:
        raise SpecError(f"{path}: no method {method!r}; it has {sorted(methods)}")
    return methods[method]


def _em_by_storage(eval_dir: Path, method: str) -> tuple[float, float]:
    """EM (%) of the episodes whose store held every gold fact when reading ended, and of the others."""

    def parse(row: dict) -> tuple:
        return row["method"], row.get("reward_terms", {}).get("memory"), row["em"]

    stored: list[float] = []
    unstored: list[float] = []
    for m, memory, ems in jsonl.read(eval_dir / "episodes.jsonl", parse, "an episode record", SpecError):
        if m == method and memory is not None:
            (stored if memory >= 1.0 else unstored).extend(ems)
    return tuple(100 * statistics.fmean(v) if v else float("nan") for v in (stored, unstored))


def compare(spec: dict, alpha: float = 0.05) -> tuple[list[Row], list[Summary]]:
    """Rows per (seed, arm) and a summary per arm; the baseline arm is summarised too (its own reference)."""
    method, baseline, arms = spec["method"], spec["baseline"], spec["arms"]
    rows: list[Row] = []
    deltas: dict[str, dict[tuple, list[float]]] = {arm: {} for arm in arms}
    for i, seed in enumerate(spec["seeds"]):
        base_dir = arms[baseline][i]
        base_sum, base_em = _summary(base_dir, method), question_em(base_dir, method)
        for arm, dirs in arms.items():
            s = _summary(dirs[i], method)
            test = None
            if arm != baseline:
                em = question_em(dirs[i], method)
                keys = sorted(base_em.keys() & em.keys())
                if not keys:
                    raise SpecError(f"{dirs[i]} and {base_dir} share no question of method {method!r}")
                test = paired_test([base_em[k] for k in keys], [em[k] for k in keys])
                for k in keys:
                    deltas[arm].setdefault(k, []).append(em[k] - base_em[k])
            junk_ok = (
                s["invalid_per_episode"] <= base_sum["invalid_per_episode"]
                and s["cutoff_per_episode"] <= base_sum["cutoff_per_episode"]
            )
            rows.append(
                Row(arm, seed, s["em"], s["f1"], s["invalid_per_episode"], s["cutoff_per_episode"],
                    s.get("facts_stored", float("nan")), s.get("facts_retrieved", float("nan")),
                    *_em_by_storage(dirs[i], method), test, junk_ok)
            )  # fmt: skip
    summaries = []
    for arm in arms:
        mine = [r for r in rows if r.arm == arm]
        ems = [r.em for r in mine]
        per_question = [statistics.fmean(d) for d in deltas[arm].values() if len(d) == len(spec["seeds"])]
        pooled_p = None
        if per_question and any(per_question):
            pooled_p = float(wilcoxon(per_question, zero_method="wilcox").pvalue)
        summaries.append(
            Summary(
                arm,
                statistics.fmean(ems),
                statistics.stdev(ems) if len(ems) > 1 else 0.0,
                sum(1 for r in mine if r.test and r.test.p < alpha and r.test.gained > r.test.lost),
                len(mine),
                sum(1 for r in mine if r.junk_ok),
                100 * statistics.fmean(per_question) if per_question else 0.0,
                pooled_p,
            )
        )
    return rows, summaries


def curves(spec: dict) -> dict[str, dict[int, dict[str, list[float]]]]:
    """arm -> seed -> column -> values per GRPO step, from each non-baseline arm's run's TensorBoard events."""
    out: dict[str, dict[int, dict[str, list[float]]]] = {}
    for arm, dirs in spec["arms"].items():
        if arm == spec["baseline"]:
            continue
        for seed, eval_dir in zip(spec["seeds"], dirs):
            scalars = read_curves(eval_dir.parent.parent).scalars
            found = {col: [round(v, 4) for v in scalars[tag][1]] for tag, col in CURVE_TAGS.items() if tag in scalars}
            if found:
                out.setdefault(arm, {})[seed] = found
    return out


def curves_markdown(table: dict[str, dict[int, dict[str, list[float]]]]) -> str:
    """One row per (arm, seed): each column's first -> last GRPO step (mean of the first and last two steps)."""
    if not table:
        return ""
    present = {col for by_seed in table.values() for by_col in by_seed.values() for col in by_col}
    cols = [c for c in CURVE_TAGS.values() if c in present]
    out = [
        "GRPO curves (TensorBoard), mean of the first two steps -> mean of the last two:",
        "",
        "| arm | seed | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for arm, by_seed in table.items():
        for seed, by_col in by_seed.items():
            cells = []
            for col in cols:
                v = by_col.get(col, [])
                cells.append(f"{statistics.fmean(v[:2]):.2f} -> {statistics.fmean(v[-2:]):.2f}" if v else "")
            out.append(f"| {arm} | {seed} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def markdown(spec: dict, rows: list[Row], summaries: list[Summary]) -> str:
    """The per-seed tables and the summary as markdown."""
    baseline = spec["baseline"]
    out = []
    for seed in spec["seeds"]:
        out += [
            f"Seed {seed}:",
            "",
            f"| arm | EM | F1 | vs {baseline}: gained / lost, p | invalid / ep | cut-off / ep | facts stored | "
            f"facts retrieved | EM if stored / not | junk not above {baseline} |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in rows if r.seed == seed):
            test = f"+{r.test.gained} / -{r.test.lost}, {r.test.p:.2g}" if r.test else ""
            junk = "" if r.test is None else ("yes" if r.junk_ok else "no")
            out.append(
                f"| {r.arm} | {r.em:.1f} | {r.f1:.1f} | {test} | {r.invalid:.2f} | {r.cutoff:.2f} | "
                f"{r.facts_stored:.0f}% | {r.facts_retrieved:.0f}% | {r.em_stored:.0f} / {r.em_unstored:.0f} | {junk} |"
            )
        out.append("")
    out += [
        f"Over {len(spec['seeds'])} seeds:",
        "",
        f"| arm | EM mean (sd) | significant gains | junk not above {baseline} | mean per-question gain | "
        "pooled p (Wilcoxon) |",
        "|---|---|---|---|---|---|",
    ]
    for s in summaries:
        if s.arm == baseline:
            out.append(f"| {s.arm} | {s.em_mean:.1f} ({s.em_sd:.1f}) | | | | |")
            continue
        p = "" if s.pooled_p is None else f"{s.pooled_p:.2g}"
        out.append(
            f"| {s.arm} | {s.em_mean:.1f} ({s.em_sd:.1f}) | {s.significant_gains} of {s.seeds} | "
            f"{s.junk_ok_seeds} of {s.seeds} | {s.pooled_delta:+.1f} | {p} |"
        )
    return "\n".join(out) + "\n"


def as_json(rows: list[Row], summaries: list[Summary]) -> dict:
    return {"rows": [asdict(r) for r in rows], "summary": [asdict(s) for s in summaries]}
