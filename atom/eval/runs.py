"""Read what runs left on disk: every evaluation's results and the TensorBoard scalars, from any run directory.

A run directory may hold ``atom.fit`` evaluations (``eval/<tag>/results.json``, tag = before, after_sft, ...),
an ``atom.evaluate`` table (``eval/results.json``) or a sweep (``sweep/<dataset>/<num_docs>/results.json``);
``find_results`` finds them all and reads the settings of each from the nearest ``config.yaml`` above it. Configs
are read as plain YAML, not through the strict loader, so runs made by older versions of atom still report.
Scalars come from the event files under ``tb/`` through TensorBoard's ``EventAccumulator``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from atom import jsonl

# eval/<tag> of atom.fit -> the training stages before the evaluation
_TAG_STAGE = {"before": "untrained", "final": ""}


@dataclass(frozen=True)
class Result:
    """One method's summary row of one evaluation."""

    run: str  # run directory name
    method: str  # eval method: atommem, oracle, full_context, rag, memagent
    stage: str  # training before the evaluation: "untrained", "sft", "sft+grpo", a sweep label, or ""
    variant: str  # ablation: "full", or the switches that are off ("no_update", "no_scratchpad", ...)
    dataset: str
    num_docs: int
    scorer: str  # how EM was computed
    summary: dict  # atom.eval.report.summarize's row (em, f1, ops_per_episode, ...)
    path: Path  # the results.json it came from

    @property
    def episodes_file(self) -> Path:
        return self.path.parent / "episodes.jsonl"


@dataclass
class Curves:
    """TensorBoard scalars of one run: tag -> (steps, values), steps in the logger's step (optimizer steps)."""

    run: str
    config: dict
    scalars: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)

    def series(self, tag: str) -> tuple[list[int], list[float]]:
        return self.scalars.get(tag, ([], []))


def _config_above(path: Path, root: Path) -> dict:
    for parent in [path, *path.parents]:
        if (parent / "config.yaml").is_file():
            return OmegaConf.to_container(OmegaConf.load(parent / "config.yaml")) or {}
        if parent == root:
            break
    return {}


def variant_of(agent: dict) -> str:
    """The ablation of an agent config section, named as experiments/ablations/ names it."""
    storage, pad = agent.get("use_storage", True), agent.get("use_scratchpad", True)
    if not storage and not pad:
        return "no_memory"
    off = [name for name, on in (("no_storage", storage), ("no_scratchpad", pad)) if not on]
    if storage:
        off += [name for name, key in (("no_update", "allow_update"), ("no_delete", "allow_delete"))
                if not agent.get(key, True)]  # fmt: skip
    return "+".join(off) or "full"


def _stage(results: Path, root: Path, cfg: dict) -> str:
    rel = results.parent.relative_to(root).parts
    if len(rel) >= 2 and rel[0] == "eval":  # atom.fit: eval/<tag>
        tag = rel[1]
        return _TAG_STAGE.get(tag, tag.removeprefix("after_").replace("_", "+"))
    if rel and rel[0] == "sweep":
        return str(cfg.get("sweep", {}).get("label", ""))
    return ""


def find_results(run_dir: str | Path) -> list[Result]:
    """Every method row of every evaluation under ``run_dir``."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run directory not found: {root}")
    out = []
    for path in sorted(root.rglob("results.json")):
        if path.parent.name.endswith(".partial"):
            continue
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("methods"), dict):
            continue  # the run-level table of atom.fit repeats the eval/<tag> rows
        cfg = _config_above(path.parent, root)
        d, agent = cfg.get("data", {}), cfg.get("agent", {})
        boxed = agent.get("boxed_answers") or agent.get("protocol") == "release"  # AgentConfig.boxed
        scorer = "boxed-answer EM" if boxed else "EM after SQuAD normalisation"
        for method, summary in data["methods"].items():
            out.append(Result(
                run=root.name, method=method, stage=_stage(path, root, cfg), variant=variant_of(agent),
                dataset=str(d.get("dataset", "?")), num_docs=int(d.get("num_docs", 0)), scorer=scorer,
                summary=summary, path=path,
            ))  # fmt: skip
    return out


def read_curves(run_dir: str | Path) -> Curves:
    """All scalars of the event files under ``<run_dir>/tb`` (every stage), merged by tag and sorted by step."""
    root = Path(run_dir)
    cfg = _config_above(root, root)
    curves = Curves(root.name, cfg)
    for events_dir in sorted({p.parent for p in (root / "tb").rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(events_dir), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            steps, values = curves.scalars.setdefault(tag, ([], []))
            for event in acc.Scalars(tag):
                steps.append(event.step)
                values.append(event.value)
    for tag, (steps, values) in curves.scalars.items():
        order = sorted(range(len(steps)), key=steps.__getitem__)
        curves.scalars[tag] = ([steps[i] for i in order], [values[i] for i in order])
    return curves


def rollout_steps(curves: Curves, tag: str) -> tuple[list[float], list[float]]:
    """``tag`` against the GRPO rollout step (logged as ``rollout_step``) where known, else the logged step."""
    steps, values = curves.series(tag)
    by_step = dict(zip(*curves.series("rollout_step")))
    return [by_step.get(s, s) for s in steps], values


def ops_per_turn(curves: Curves, op: str) -> tuple[list[float], list[float]]:
    """``memory/<op>_per_episode`` divided by the LLM calls (turns) per episode at the same step.

    Turns per episode come from ``memory/turns_per_episode`` when the run logged it, else from the turn sequences
    of the step over its episodes (``grpo/sequences`` / (prompts_per_step x group_size)), which undercounts when
    zero-std groups are dropped.
    """
    steps, per_episode = curves.series(f"memory/{op}_per_episode")
    turns = dict(zip(*curves.series("memory/turns_per_episode")))
    if not turns:
        g = curves.config.get("grpo", {})
        episodes = max(int(g.get("prompts_per_step", 1)) * int(g.get("group_size", 1)), 1)
        turns = {s: v / episodes for s, v in zip(*curves.series("grpo/sequences"))}
    by_step = dict(zip(*curves.series("rollout_step")))
    xs, ys = [], []
    for s, v in zip(steps, per_episode):
        if turns.get(s):
            xs.append(by_step.get(s, s))
            ys.append(v / turns[s])
    return xs, ys


def store_sizes(result: Result) -> list[float]:
    """Mean live store size after each read-phase turn, over the evaluation's episodes of ``result.method``."""
    if not result.episodes_file.is_file():
        return []
    sums: list[float] = []
    counts: list[int] = []
    for ep in jsonl.read(result.episodes_file, what="an episode record"):
        if ep.get("method") != result.method:
            continue
        for t, size in enumerate(ep.get("store_sizes", [])):
            if t == len(sums):
                sums.append(0.0)
                counts.append(0)
            sums[t] += size
            counts[t] += 1
    return [s / c for s, c in zip(sums, counts)]
