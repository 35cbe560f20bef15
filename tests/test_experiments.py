"""Every experiment YAML loads strictly, its header gives its command, and it runs end to end with a tiny overlay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atom.config import load_config
from atom.fit import fit

from .conftest import FIXTURE_FILES, TINY_EXPERIMENT

ROOT = Path(__file__).resolve().parents[1]
YAMLS = sorted((ROOT / "experiments").rglob("*.yaml"))
PAPER_ABLATIONS = ROOT / "experiments" / "ablations" / "paper"


def local_data(path: Path) -> list[str]:
    """The YAML's dataset read from the invented fixture file of its format (the YAMLs name ../shared/data)."""
    cfg = load_config(path)
    if cfg.data.dataset == "synthetic":
        return []
    fixture = FIXTURE_FILES[cfg.data.dataset]
    return [f"data.path={fixture}"] + ([f"data.eval_path={fixture}"] if cfg.data.eval_path else [])


def test_there_are_experiments():
    names = {p.relative_to(ROOT / "experiments").as_posix() for p in YAMLS}
    assert {
        "quickstart.yaml",
        "eval_cpu.yaml",
        "grpo_hotpotqa.yaml",
        "grpo_2wiki.yaml",
        "grpo_musique.yaml",
    } <= names


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.relative_to(ROOT / "experiments").as_posix())
def test_yaml_loads_strictly_and_header_names_its_command(path):
    cfg = load_config(path)
    head = path.read_text().splitlines()[0]
    rel = path.relative_to(ROOT).as_posix()
    assert head.startswith("# python -m atom.") and rel in head, f"{rel}: first line must be its command"
    if "atom.evaluate" in head or "atom.sweep" in head:
        assert cfg.eval.methods


@pytest.mark.realdata
@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.relative_to(ROOT / "experiments").as_posix())
def test_yaml_data_path_exists(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # data paths in the YAMLs are relative to the repository root, like the README's commands
    cfg = load_config(path)
    assert cfg.data.dataset == "synthetic" or Path(cfg.data.path).is_file(), f"{path.name}: {cfg.data.path}"


@pytest.mark.slow
@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.relative_to(ROOT / "experiments").as_posix())
def test_yaml_smoke_runs_with_a_tiny_overlay(path, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # data paths in the YAMLs are relative to the repository root, like the README's commands
    extra = []
    if PAPER_ABLATIONS in path.parents:
        # The paper-scale ablations differ from their base (smoke-run above) only in agent switches: run those
        # switches end to end through the oracle's evaluation, which needs no model and no training.
        extra = ["run.stages=[eval]", "eval.methods=[oracle]"]
    cfg = load_config(path, TINY_EXPERIMENT + local_data(path) + [f"run.out_dir={tmp_path}"] + extra)
    head = path.read_text().splitlines()[0]
    if "atom.evaluate" in head:
        from atom.evaluate import run

        rows = run(cfg, progress=False)
        assert set(rows) == set(cfg.eval.methods)
    elif "atom.sweep" in head:
        from atom.sweep import run

        grid = [f"sweep.paths.{d}={FIXTURE_FILES[d]}" for d in cfg.sweep.datasets if d in FIXTURE_FILES]
        grid += ["sweep.num_docs=[4]", "eval.methods=[atommem]", f"run.out_dir={tmp_path}"]
        cfg = load_config(path, TINY_EXPERIMENT + local_data(path) + grid)
        cells = json.loads(run(cfg, progress=False).read_text())["cells"]
        assert {c["dataset"] for c in cells} == set(cfg.sweep.datasets)
        assert all(set(c["methods"]) == set(cfg.eval.methods) for c in cells)
        assert (cfg.run.dir / "sweep" / "config.yaml").is_file()
        return
    else:
        table = fit(cfg)
        if "eval" in cfg.run.stages:
            assert table and all(0.0 <= r["em"] <= 100.0 for r in table.values())
    assert (cfg.run.dir / "config.yaml").is_file() or (cfg.run.dir / "eval" / "evaluate-1" / "config.yaml").is_file()


@pytest.mark.slow
def test_an_evaluation_after_each_stage_is_labelled_by_what_was_trained(tmp_path):
    cfg = load_config(
        ROOT / "experiments" / "quickstart.yaml",
        TINY_EXPERIMENT + [f"run.out_dir={tmp_path}", "run.stages=[sft,eval,grpo,eval]", "eval.before_training=true"],
    )
    table = fit(cfg)
    assert list(table) == ["atommem (before)", "atommem (after sft)", "atommem (after sft+grpo)"]
    for tag in ("before", "after_sft", "after_sft_grpo"):
        assert (cfg.run.dir / "eval" / tag / "results.json").is_file()
    assert "(after sft+grpo)" in (cfg.run.dir / "results.md").read_text()
    paired = json.loads((cfg.run.dir / "paired.json").read_text())
    assert list(paired) == [
        "atommem (before) -> atommem (after sft)",
        "atommem (after sft) -> atommem (after sft+grpo)",
        "atommem (before) -> atommem (after sft+grpo)",
    ]
    questions = sum(len(r["em"]) for r in map(json.loads, open(cfg.run.dir / "eval" / "before" / "episodes.jsonl")))
    assert all(t["n"] == questions and 0 <= t["p"] <= 1 for t in paired.values())
    assert "exact McNemar" in (cfg.run.dir / "results.md").read_text()
