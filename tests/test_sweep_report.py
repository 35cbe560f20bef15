"""The sweep (grid, resume, config guard) and the report (tables with the paper's figures, PNGs) across runs."""

from __future__ import annotations

import json

import pytest
from torch.utils.tensorboard import SummaryWriter

import atom.sweep
from atom.config import load_config, save_config
from atom.eval.runs import find_results, read_curves, variant_of
from atom.report import build

from .conftest import TINY_EXPERIMENT

# The oracle needs no model: a sweep of it is fast and its EM is high and varies with the cell.
SWEEP = TINY_EXPERIMENT + ["eval.methods=[oracle]", "sweep.num_docs=[4,6]", "sweep.label=teacher", "eval.max_samples=2"]


def sweep(tmp_path, *extra):
    return load_config("experiments/quickstart.yaml", SWEEP + [f"run.out_dir={tmp_path}", "run.name=sw", *extra])


def test_sweep_fills_the_grid_then_resumes_without_rerunning(tmp_path, monkeypatch):
    cfg = sweep(tmp_path)
    out = atom.sweep.run(cfg, progress=False)
    cells = json.loads(out.read_text())["cells"]
    assert sorted((c["dataset"], c["num_docs"]) for c in cells) == [("synthetic", 4), ("synthetic", 6)]
    root = cfg.run.dir / "sweep" / "synthetic"
    for n in (4, 6):
        assert {p.name for p in (root / str(n)).iterdir()} >= {"results.json", "trajectories.html", "config.yaml"}
    assert not list(root.glob("*.partial"))
    assert "synthetic 4" in (out.parent / "results.md").read_text()

    calls = []
    real = atom.sweep.pipeline.evaluate

    def counting(model, pieces, out_dir, progress=True):
        calls.append(out_dir)
        return real(model, pieces, out_dir, progress)

    monkeypatch.setattr(atom.sweep.pipeline, "evaluate", counting)
    atom.sweep.run(cfg, progress=False)
    assert calls == []  # finished cells are not re-run
    atom.sweep.run(sweep(tmp_path, "sweep.num_docs=[4,6,8]"), progress=False)
    assert [p.name for p in calls] == ["8.partial"]  # only the new cell
    with pytest.raises(ValueError, match="another config"):
        atom.sweep.run(sweep(tmp_path, "agent.answer_reads=2"), progress=False)


def test_sweep_rejects_a_dataset_without_a_file():
    with pytest.raises(ValueError, match="sweep.paths.hotpotqa"):
        atom.sweep.cells(load_config(None, ["sweep.datasets=[synthetic,hotpotqa]"]).sweep, "synthetic", "", 4)


def fake_training_run(tmp_path, name="rl_no_update"):
    """A run directory as atom.fit leaves it: config.yaml, tb/grpo events and an eval/<tag> table."""
    cfg = load_config("experiments/quickstart.yaml", [f"run.out_dir={tmp_path}", f"run.name={name}",
                                                      "agent.allow_update=false", "grpo.prompts_per_step=1",
                                                      "grpo.group_size=4", "data.num_docs=8"])  # fmt: skip
    save_config(cfg, cfg.run.dir)
    writer = SummaryWriter(str(cfg.run.dir / "tb" / "grpo"))
    for step in range(5):
        writer.add_scalar("grpo/reward", 0.1 + 0.05 * step, step)
        writer.add_scalar("rollout_step", step + 1, step)
        writer.add_scalar("grpo/sequences", 40.0, step)  # 10 turns per episode
        writer.add_scalar("memory/create_per_episode", 20.0 + step, step)
        for op in ("read", "update", "delete"):
            writer.add_scalar(f"memory/{op}_per_episode", 1.0, step)
        if step % 2 == 0:
            writer.add_scalar("val/em", 10.0 * step, step)
    writer.close()
    row = {"em": 42.0, "f1": 50.0, "ops_per_episode": {"create": 3.0}, "invalid_per_episode": 0.5}
    tagged = cfg.run.dir / "eval" / "after_sft_grpo"
    tagged.mkdir(parents=True)
    (tagged / "results.json").write_text(json.dumps({"meta": {}, "methods": {"atommem": row}}))
    (tagged / "episodes.jsonl").write_text(json.dumps({"method": "atommem", "store_sizes": [1, 3, 4]}) + "\n")
    (cfg.run.dir / "results.json").write_text(json.dumps({"atommem (after sft+grpo)": row}))  # fit's own table
    return cfg.run.dir


def test_runs_are_read_with_stage_variant_and_curves(tmp_path):
    run = fake_training_run(tmp_path)
    (r,) = find_results(run)
    assert (r.method, r.stage, r.variant, r.dataset, r.num_docs) == ("atommem", "sft+grpo", "no_update", "synthetic", 8)
    curves = read_curves(run)
    assert curves.series("grpo/reward")[1] == pytest.approx([0.1, 0.15, 0.2, 0.25, 0.3])
    assert variant_of({"use_storage": False, "use_scratchpad": False}) == "no_memory"
    assert variant_of({"use_scratchpad": False, "allow_delete": False}) == "no_scratchpad+no_delete"


def test_report_builds_tables_and_figures_from_several_runs(tmp_path):
    atom.sweep.run(sweep(tmp_path), progress=False)
    out = build([tmp_path / "sw", fake_training_run(tmp_path)], tmp_path / "report")
    text = out.read_text()
    main = text.split("## Main table")[1].split("##")[0]
    assert "| Oracle teacher (teacher) | sw |" in main and "| AtomMem (sft+grpo) [no_update] | rl_no_update |" in main
    assert "**AtomMem-RL (paper)**" in main and "**64.0**" in main and "61.7" not in main  # no MemAgent row here
    assert "EM after SQuAD normalisation" in main and "boxed" in main  # both scorers named
    ablations = text.split("## Ablations")[1].split("##")[0]
    assert "| no_update | Update on the store | rl_no_update |" in ablations and "0.100 -> 0.300" in ablations
    assert "0.10 -> 0.30" not in text and "0.60 -> 0.68" in text  # the paper's reward beside ours
    for png in ("em_vs_docs.png", "training.png", "operations.png", "store_size.png"):
        assert (tmp_path / "report" / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in text
    oracle = [r for r in find_results(tmp_path / "sw") if r.method == "oracle"]
    assert {r.num_docs for r in oracle} == {4, 6} and all(r.stage == "teacher" for r in oracle)


def test_operation_rates_are_per_turn(tmp_path):
    from atom.eval.runs import ops_per_turn

    xs, ys = ops_per_turn(read_curves(fake_training_run(tmp_path)), "create")
    assert xs == [1, 2, 3, 4, 5] and ys == pytest.approx([2.0, 2.1, 2.2, 2.3, 2.4])  # 20+step creates / 10 turns
