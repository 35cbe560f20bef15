"""Bad input on every ``python -m atom.*`` command: one line on stderr (what, where, how to fix), exit status 2,
no traceback, and nothing half-written. Table-driven: each case is (command, arguments, expected line)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from atom.collect import main as collect_main
from atom.data_stats import main as data_main
from atom.evaluate import main as evaluate_main
from atom.fit import main as fit_main
from atom.rundir import RunLocked, hold

ROOT = Path(__file__).resolve().parents[1]
MAINS = {
    "atom.fit": fit_main,
    "atom.evaluate": evaluate_main,
    "atom.data_stats": data_main,
    "atom.collect": collect_main,
}
FAST = [
    "model.name_or_path=tiny",
    "memory.embedder=hash",
    "memory.hash_dim=64",
    "data.num_docs=4",
    "trainer.accelerator=cpu",
]
HOTPOT = {
    "_id": "h1",
    "question": "Where is Paris?",
    "answer": "France",
    "context": [["Paris", ["Paris is in France."]], ["Rome", ["Rome is in Italy."]]],
    "supporting_facts": [["Paris", 0]],
}
MUSIQUE = {
    "id": "m1",
    "question": "Where is Paris?",
    "answer": "France",
    "paragraphs": [{"idx": 0, "title": "Paris", "paragraph_text": "Paris is in France.", "is_supporting": True}],
}


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """Every good and bad input file a case refers to, under tmp_path."""
    (tmp_path / "good.yaml").write_text("run:\n  name: t\n")
    (tmp_path / "empty.yaml").write_text("# nothing but a comment\n")
    (tmp_path / "syntax.yaml").write_text("run:\n  name: [unclosed\n")
    (tmp_path / "cycle_a.yaml").write_text("base: cycle_b.yaml\nrun:\n  name: a\n")
    (tmp_path / "cycle_b.yaml").write_text("base: cycle_a.yaml\n")
    (tmp_path / "orphan.yaml").write_text("base: gone.yaml\nrun:\n  name: o\n")
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "truncated.json").write_text(json.dumps([HOTPOT, dict(HOTPOT, _id="h2")])[:-40])
    (tmp_path / "no_answer.json").write_text(json.dumps([{k: v for k, v in HOTPOT.items() if k != "answer"}]))
    (tmp_path / "bad_line.jsonl").write_text(json.dumps(MUSIQUE) + "\n" + '{"id": "m2", "question": \n')
    (tmp_path / "demos.jsonl").write_text('{"sample_id": "s", "reward": 1.0}\n')
    (tmp_path / "empty_model").mkdir()
    return tmp_path


HP = ["data.dataset=hotpotqa", "data.val_fraction=1.0"]
# (id, command, arguments after the config, config file, the line's pattern). {d} is the files folder.
CASES = [
    ("unknown key", "atom.fit", ["grpo.lr=1", "grpo.clip_hi=1"], "good.yaml",
     r"override 'grpo.clip_hi=1': unknown config key 'grpo.clip_hi'; did you mean 'clip_high'\? Valid keys under "),
    ("bad type", "atom.fit", ["data.num_docs=many"], "good.yaml",
     r"override 'data.num_docs=many': bad value for 'data.num_docs': Value 'many' .* not be converted to Integer"),
    ("key= on a number", "atom.fit", ["sft.epochs="], "good.yaml",
     r"override 'sft.epochs=': bad value for 'sft.epochs': Value '' of type 'str' could not be converted to Integer"),
    ("key= on a string", "atom.fit", ["run.name="], "good.yaml",
     r"invalid config \(.*good.yaml \+ overrides\): run.name must name a run directory under run.out_dir, got ''"),
    ("missing config", "atom.fit", [], "nope.yaml",
     r"config file {d}/nope.yaml is not found; pass an experiment YAML, e.g. experiments/quickstart.yaml"),
    ("empty YAML", "atom.fit", [], "empty.yaml",
     r"{d}/empty.yaml: the config file is empty; give at least one key \(e.g. run.name: my_run\)"),
    ("YAML syntax error", "atom.evaluate", [], "syntax.yaml", r"{d}/syntax.yaml: not valid YAML: "),
    ("base: cycle", "atom.fit", [], "cycle_a.yaml", r"{d}/cycle_a.yaml: 'base' cycle through "),
    ("missing base: file", "atom.data_stats", [], "orphan.yaml",
     r"{d}/orphan.yaml: its base: file {d}/gone.yaml is not found; fix the 'base:' line \(relative to it\)"),
    ("run.stages=[]", "atom.fit", ["run.stages=[]"], "good.yaml",
     r"invalid config \(.*\): run.stages is empty: nothing to run; list stages, e.g. run.stages=\[sft,grpo,eval\]"),
    ("grpo.group_size=1", "atom.fit", ["grpo.group_size=1"], "good.yaml",
     r"invalid config \(.*\): grpo.group_size must be >= 2, got 1: the advantage is a reward minus its group's mean"),
    ("missing data file", "atom.data_stats", [*HP, "data.path={d}/missing.json"], "good.yaml",
     r"data.path='{d}/missing.json': file not found"),
    ("empty data file (JSON array)", "atom.evaluate", [*HP, "data.path={d}/empty.json"], "good.yaml",
     r"{d}/empty.json: the file holds no records; point data.path at a hotpotqa file with records"),
    ("empty data file (JSONL)", "atom.fit", ["data.dataset=musique", "data.path={d}/empty.jsonl"], "good.yaml",
     r"{d}/empty.jsonl: the file holds no records; point data.path at a musique file with records"),
    ("truncated data file", "atom.collect", [*HP, "data.path={d}/truncated.json", "--out={d}/t.jsonl"], "good.yaml",
     r"{d}/truncated.json: record 1 \(id 'h2'\): not valid JSON: "),
    ("bad JSONL line", "atom.evaluate", ["data.dataset=musique", "data.path={d}/bad_line.jsonl"], "good.yaml",
     r"{d}/bad_line.jsonl: record 1 \(line 2, id 'm2'\): not valid JSON: "),
    ("missing answer field", "atom.data_stats", [*HP, "data.path={d}/no_answer.json"], "good.yaml",
     r"{d}/no_answer.json: record 0 \(id 'h1'\): missing key 'answer' \(record keys: "),
    ("model dir missing", "atom.fit", ["model.name_or_path={d}/runs/x/policy"], "good.yaml",
     r"model.name_or_path='{d}/runs/x/policy': no such directory; point it at a saved model directory"),
    ("model dir empty", "atom.collect", ["model.name_or_path={d}/empty_model", "--policy=model", "--out={d}/o.jsonl"],
     "good.yaml", r"model.name_or_path='{d}/empty_model': the directory has no config.json \(not a saved model\)"),
    ("eval.checkpoint missing", "atom.evaluate", ["eval.checkpoint={d}/runs/t/policy"], "good.yaml",
     r"eval.checkpoint='{d}/runs/t/policy': no such directory; point it at a saved model directory"),
    ("eval.checkpoint empty", "atom.evaluate", ["eval.checkpoint={d}/empty_model"], "good.yaml",
     r"eval.checkpoint='{d}/empty_model': the directory has no config.json"),
    ("zero samples (fit eval)", "atom.fit", ["data.val_fraction=0", "run.stages=[eval]"], "good.yaml",
     r"eval needs val samples but there are none \(\d+ records, data.val_fraction=0.0\); raise data.val_fraction"),
    ("zero samples (evaluate)", "atom.evaluate", ["data.val_fraction=0"], "good.yaml",
     r"evaluation needs val samples but there are none .*; raise data.val_fraction above 0"),
    ("zero samples (sft)", "atom.fit", ["data.val_fraction=1.0", "run.stages=[sft]"], "good.yaml",
     r"sft needs train samples but there are none .*; lower data.val_fraction"),
    ("missing sft.demos file", "atom.fit", ["sft.demos={d}/none.jsonl", "run.stages=[sft]"], "good.yaml",
     r"sft.demos='{d}/none.jsonl': file not found; write one with python -m atom.collect"),
    ("bad sft.demos line", "atom.fit", ["sft.demos={d}/demos.jsonl", "run.stages=[sft]"], "good.yaml",
     r"{d}/demos.jsonl:1: not a trajectory record \(KeyError\('turns'\)\)"),
    ("served model down", "atom.evaluate",
     ["model.backend=openai", "model.server.base_url=http://127.0.0.1:9/v1", "model.server.retries=0",
      "model.server.timeout_s=5"], "good.yaml",
     r"model.server at http://127.0.0.1:9/v1: GET /models failed 1 times .*last error: "),
]  # fmt: skip


def run_main(command: str, argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of an entry point's main(argv) run in this process."""
    with pytest.raises(SystemExit) as exit_:
        MAINS[command](argv)
    return exit_.value.code, capsys.readouterr().err


def the_line(command: str, err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"{command}: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("case, command, args, config, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_status_2(files, capsys, case, command, args, config, pattern):
    d = str(files)
    argv = [str(files / config), *FAST, f"run.out_dir={d}/runs", *(a.replace("{d}", d) for a in args)]
    code, err = run_main(command, argv, capsys)
    line = the_line(command, err)
    assert code == 2
    assert re.fullmatch(f"{command}: error: " + pattern.replace("{d}", re.escape(d)) + ".*", line), line
    # Nothing half-written: no results or checkpoints (a run.lock at most; the resolved config once the run
    # started, for the demonstrations file, which the sft stage reads, and for the served model).
    written = {p.name for p in (files / "runs").rglob("*") if p.is_file()} if (files / "runs").exists() else set()
    # (The served model is only reached once the run has started: its resolved config is written by then.)
    started = "sft.demos" in case or "served" in case
    assert written <= ({"run.lock", "config.yaml"} if started else {"run.lock"}), written


@pytest.mark.slow
def test_evaluate_never_overwrites_an_earlier_evaluation_unless_told(files, capsys):
    d = str(files)
    argv = [str(files / "good.yaml"), *FAST, f"run.out_dir={d}/runs", "eval.methods=[oracle]", "eval.max_samples=1"]
    for _ in range(2):
        evaluate_main(argv)  # two fresh folders
    capsys.readouterr()
    evals = files / "runs" / "t" / "eval"
    assert sorted(p.name for p in evals.iterdir()) == ["evaluate-1", "evaluate-2"]
    (evals / "evaluate-1" / "results.json").write_text("{}")
    code, err = run_main("atom.evaluate", [*argv, "--tag=evaluate-1"], capsys)
    assert code == 2 and the_line("atom.evaluate", err) == (
        f"atom.evaluate: error: {evals}/evaluate-1 already holds an evaluation; choose another --tag, or pass "
        "--overwrite to replace it"
    )
    assert (evals / "evaluate-1" / "results.json").read_text() == "{}"  # untouched
    evaluate_main([*argv, "--tag=evaluate-1", "--overwrite"])
    assert json.loads((evals / "evaluate-1" / "results.json").read_text())["methods"]["oracle"]["em"] == 100.0


def test_a_second_fit_on_a_held_run_stops_at_once_naming_the_holder_and_a_dead_holder_is_taken_over(files, capsys):
    run_dir = files / "runs" / "t"
    holder = textwrap.dedent(f"""
        import time
        from atom.rundir import hold
        with hold({str(run_dir)!r}):
            print("HELD", flush=True)
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "HELD"
        code, err = run_main("atom.fit", [str(files / "good.yaml"), *FAST, f"run.out_dir={files}/runs"], capsys)
        line = the_line("atom.fit", err)
        assert code == 2 and line.startswith(f"atom.fit: error: run directory {run_dir} is in use by pid {proc.pid} ")
        assert line.endswith("wait for it to finish, stop it, or choose another run.name")
        assert not (run_dir / "config.yaml").exists()
    finally:
        proc.send_signal(signal.SIGKILL)  # dies holding the lock: the kernel releases it
        proc.wait(timeout=60)
    with hold(run_dir):
        assert json.loads((run_dir / "run.lock").read_text())["pid"] == os.getpid()
        with pytest.raises(RunLocked, match=f"in use by pid {os.getpid()} "):  # a second holder, even here
            with hold(run_dir):
                pass


@pytest.mark.slow
def test_a_real_process_exits_2_with_only_the_line(files):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    argv = [sys.executable, "-m", "atom.data_stats", str(files / "good.yaml"), "grpo.lr_rate=1"]
    quiet = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 2 and quiet.stdout == ""
    assert quiet.stderr.strip().splitlines() == [the_line("atom.data_stats", quiet.stderr)]
    assert "unknown config key 'grpo.lr_rate'" in quiet.stderr


def test_verbose_flag_and_atom_debug_reraise_with_the_traceback(files, monkeypatch):
    from atom.config import ConfigError

    with pytest.raises(ConfigError, match="unknown config key"):
        fit_main([str(files / "good.yaml"), "grpo.lr_rate=1", "--verbose"])
    monkeypatch.setenv("ATOM_DEBUG", "1")
    with pytest.raises(ConfigError, match="unknown config key"):
        data_main([str(files / "good.yaml"), "grpo.lr_rate=1"])
