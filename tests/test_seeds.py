"""atom.seeds: arms over training seeds, paired per seed against a baseline, and the pooled test."""

import json

import pytest
from scipy.stats import wilcoxon

from atom.eval import seeds
from atom.eval.stats import paired_test


def _eval_dir(root, name, ems, invalid=0.0, cutoff=0.0, stored=None):
    """An atom.fit evaluation directory: one question per sample, EM per question as given; ``stored`` gives
    each episode's share of gold facts in the store (its ``reward_terms.memory``)."""
    d = root / name
    d.mkdir(parents=True)
    rows = [
        json.dumps({"method": "atommem", "sample_id": f"q{i}", "em": [em], "reward_terms": {"memory": m}})
        for i, (em, m) in enumerate(zip(ems, stored or [0.0] * len(ems)))
    ]
    (d / "episodes.jsonl").write_text("\n".join(rows) + "\n")
    summary = {
        "em": 100 * sum(ems) / len(ems),
        "f1": 100 * sum(ems) / len(ems),
        "invalid_per_episode": invalid,
        "cutoff_per_episode": cutoff,
        "facts_stored": 50.0,
        "facts_retrieved": 40.0,
    }
    (d / "results.json").write_text(json.dumps({"methods": {"atommem": summary}}))
    return str(d)


def _spec(tmp_path, arms, seeds_=(0, 1), **extra):
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps({"baseline": "base", "arms": arms, "seeds": list(seeds_), **extra}))
    return path


def test_rows_per_seed_test_against_that_seeds_baseline_and_check_the_junk(tmp_path):
    base0 = [0] * 20
    base1 = [1] * 5 + [0] * 15
    good0 = [1] * 12 + [0] * 8  # +12 / -0 against base0
    good1 = [1] * 5 + [1] * 10 + [0] * 5  # +10 / -0 against base1
    arms = {
        "base": [_eval_dir(tmp_path, "b0", base0), _eval_dir(tmp_path, "b1", base1, invalid=0.1)],
        "arm": [_eval_dir(tmp_path, "a0", good0, invalid=0.2), _eval_dir(tmp_path, "a1", good1, invalid=0.1)],
    }
    spec = seeds.load_spec(_spec(tmp_path, arms))
    rows, summaries = seeds.compare(spec)
    by = {(r.arm, r.seed): r for r in rows}
    assert by[("base", 0)].test is None
    assert by[("arm", 0)].test == paired_test(base0, good0)
    assert by[("arm", 1)].test == paired_test(base1, good1)
    assert (by[("arm", 0)].junk_ok, by[("arm", 1)].junk_ok) == (False, True)  # 0.2 > 0.0; 0.1 <= 0.1
    arm = next(s for s in summaries if s.arm == "arm")
    assert arm.significant_gains == 2 and arm.junk_ok_seeds == 1
    assert arm.em_mean == pytest.approx(67.5) and arm.em_sd == pytest.approx(10.6066, abs=1e-3)
    diffs = [(a - b + c - d) / 2 for a, b, c, d in zip(good0, base0, good1, base1)]
    assert arm.pooled_delta == pytest.approx(100 * sum(diffs) / len(diffs))
    assert arm.pooled_p == pytest.approx(wilcoxon(diffs, zero_method="wilcox").pvalue)
    text = seeds.markdown(spec, rows, summaries)
    assert "| arm | 60.0 |" in text and "+12 / -0" in text and "| arm | 67.5 (10.6) | 2 of 2 | 1 of 2 |" in text


def test_a_loss_is_not_counted_as_a_significant_gain(tmp_path):
    base = [1] * 15 + [0] * 5
    worse = [0] * 20
    arms = {"base": [_eval_dir(tmp_path, "b", base)], "arm": [_eval_dir(tmp_path, "a", worse)]}
    rows, summaries = seeds.compare(seeds.load_spec(_spec(tmp_path, arms, seeds_=[0])))
    assert rows[1].test.p < 0.05 and rows[1].test.lost == 15
    assert summaries[1].significant_gains == 0 and summaries[1].pooled_delta == pytest.approx(-75.0)


def test_bad_specs_name_the_file_and_the_fix(tmp_path):
    d = _eval_dir(tmp_path, "b", [0, 1])
    with pytest.raises(seeds.SpecError, match=r"spec\.yaml: unknown key\(s\) \['sedes'\]; valid keys"):
        seeds.load_spec(_spec(tmp_path, {"base": [d]}, sedes=[0]))
    with pytest.raises(seeds.SpecError, match="arm 'base' has 1 directories for 2 seeds"):
        seeds.load_spec(_spec(tmp_path, {"base": [d]}))
    with pytest.raises(seeds.SpecError, match="baseline 'base' is not one of the arms"):
        seeds.load_spec(_spec(tmp_path, {"other": [d, d]}))
    spec = seeds.load_spec(_spec(tmp_path, {"base": [d]}, seeds_=[0], method="rag"))
    with pytest.raises(seeds.SpecError, match=r"results\.json: no method 'rag'"):
        seeds.compare(spec)


def test_the_command_prints_and_writes_the_tables(tmp_path, capsys):
    from atom.seeds import main

    arms = {"base": [_eval_dir(tmp_path, "b", [0, 0, 1])], "arm": [_eval_dir(tmp_path, "a", [1, 1, 1])]}
    out = tmp_path / "out"
    main([str(_spec(tmp_path, arms, seeds_=[3])), "--out", str(out)])
    assert "Seed 3:" in capsys.readouterr().out
    data = json.loads((out / "seeds.json").read_text())
    assert data["rows"][1]["test"]["gained"] == 2 and (out / "seeds.md").read_text().startswith("Seed 3:")


def test_each_arms_grpo_curves_come_from_its_runs_tensorboard(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "gate_s0"
    base = _eval_dir(run / "eval", "after_sft", [0, 0, 1, 0])
    arm = _eval_dir(run / "eval", "after_sft_grpo", [1, 0, 1, 1])
    writer = SummaryWriter(str(run / "tb" / "grpo"))
    for step, (outcome, invalid) in enumerate([(0.1, 0.3), (0.3, 0.1), (0.5, 0.2), (0.7, 0.0)]):
        writer.add_scalar("grpo/reward_outcome", outcome, step)
        writer.add_scalar("grpo/reward_invalid", invalid, step)
    writer.close()
    spec = seeds.load_spec(_spec(tmp_path, {"base": [base], "arm": [arm]}, seeds_=[0]))
    table = seeds.curves(spec)
    assert list(table) == ["arm"]  # the baseline's run is the same run: its curves belong to the arm
    assert table["arm"][0]["outcome"] == pytest.approx([0.1, 0.3, 0.5, 0.7])
    text = seeds.curves_markdown(table)
    assert "| arm | seed | outcome | invalid |" in text and "| arm | 0 | 0.20 -> 0.60 | 0.20 -> 0.10 |" in text


def test_em_is_split_by_whether_the_episode_stored_every_gold_fact(tmp_path):
    base = _eval_dir(tmp_path, "b", [1, 1, 0, 1, 0], stored=[1.0, 1.0, 1.0, 0.5, 0.0])  # stored: 2 of 3 right
    arm = _eval_dir(tmp_path, "a", [0, 0, 0, 0, 0])  # nothing stored: no EM-if-stored
    rows, _ = seeds.compare(seeds.load_spec(_spec(tmp_path, {"base": [base], "arm": [arm]}, seeds_=[0])))
    assert rows[0].em_stored == pytest.approx(200 / 3) and rows[0].em_unstored == pytest.approx(50.0)
    assert rows[1].em_stored != rows[1].em_stored and rows[1].em_unstored == 0.0  # nan: no episode stored
