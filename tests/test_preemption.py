"""Pre-emption: a real SIGTERM / SIGINT mid-epoch saves ``last``, the resumed run equals an uninterrupted one,
and a damaged ``last.ckpt`` is named with the newest intact checkpoint (taken under trainer.resume_intact)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from atom import pipeline
from atom.config import load_config
from atom.errors import AtomError, Interrupted
from atom.train.sft import SFTModule

from .test_sft import SFT_TINY

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # tiny SFT runs, one in a subprocess
SFT = SFT_TINY + ["sft.batch_size=2", "sft.epochs=1", "sft.max_tokens=128", "trainer.accelerator=cpu"]


def params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def run_sft(tmp_path: Path, name: str, *extra: str):
    """The model after the SFT stage of a tiny run ``name`` under ``tmp_path``."""
    p = pipeline.build(load_config(None, SFT + [f"run.out_dir={tmp_path}", f"run.name={name}", *extra]))
    return pipeline.sft(pipeline.load_policy(p), p)


def ckpt_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The weights, steps and checkpoint folder of an uninterrupted one-epoch SFT run."""
    root = tmp_path_factory.mktemp("straight")
    model = run_sft(root, "straight")
    ckpts = root / "straight" / "checkpoints" / "sft"
    per_epoch = ckpt_step(ckpts / "last.ckpt")
    assert per_epoch >= 4, "the test needs several batches per epoch to stop in the middle of one"
    return params(model), per_epoch, ckpts


def resumed_params(tmp_path: Path, name: str, *extra: str) -> torch.Tensor:
    return params(run_sft(tmp_path, name, *extra))


def test_sigterm_mid_epoch_saves_last_exits_143_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path, straight):
    config = tmp_path / "run.yaml"
    config.write_text("run:\n  name: pre\n")
    child = textwrap.dedent("""
        import sys, time
        from atom.train.sft import SFTModule
        step = SFTModule.training_step
        def slow(self, batch, batch_idx):
            print(f"STEP {self.global_step}", flush=True)
            time.sleep(0.3)
            return step(self, batch, batch_idx)
        SFTModule.training_step = slow
        from atom.fit import main
        main(sys.argv[1:])
    """)
    argv = [str(config), *SFT, f"run.out_dir={tmp_path}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", child, *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stdout:
            if line.startswith("STEP 1"):
                proc.send_signal(signal.SIGTERM)  # a real signal, while the second batch trains
                break
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    last = tmp_path / "pre" / "checkpoints" / "sft" / "last.ckpt"
    lines = err.strip().splitlines()
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    assert lines[-1].startswith("atom.fit: stopped: SIGTERM received: saved step ")
    assert lines[-1].endswith(f"to {last}; run the same command again to resume")
    _, per_epoch, _ = straight
    assert 1 <= ckpt_step(last) < per_epoch  # saved in the middle of the first epoch
    assert torch.allclose(resumed_params(tmp_path, "pre"), straight[0], atol=1e-6)


def test_sigint_in_process_stops_after_the_step_and_resumes_exactly(tmp_path, straight, monkeypatch):
    step = SFTModule.training_step

    def interrupt_at_3(self, batch, batch_idx):
        if self.global_step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl+C while this step runs
        return step(self, batch, batch_idx)

    monkeypatch.setattr(SFTModule, "training_step", interrupt_at_3)
    with pytest.raises(Interrupted, match=r"SIGINT received: saved step 3 \(epoch 0\) to ") as stop:
        run_sft(tmp_path, "int")
    assert stop.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    monkeypatch.undo()
    assert torch.allclose(resumed_params(tmp_path, "int"), straight[0], atol=1e-6)


def test_a_damaged_last_checkpoint_is_named_and_the_newest_intact_one_is_offered_then_taken(
    tmp_path, straight, monkeypatch
):
    ckpts = tmp_path / "bad" / "checkpoints" / "sft"
    shutil.copytree(straight[2], ckpts)  # last.ckpt and the epoch-end periodic checkpoint of a finished epoch
    last = ckpts / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # as if killed while saving
    (periodic,) = ckpts.glob("sft-*.ckpt")
    with pytest.raises(AtomError) as err:
        run_sft(tmp_path, "bad")
    assert str(err.value).startswith(f"{last} is damaged (")
    assert str(err.value).endswith(
        f"the newest intact checkpoint is {periodic}: resume from it with trainer.resume_intact=true"
    )
    steps = []
    step = SFTModule.training_step
    monkeypatch.setattr(SFTModule, "training_step", lambda self, *a: steps.append(1) or step(self, *a))
    assert torch.allclose(resumed_params(tmp_path, "bad", "trainer.resume_intact=true"), straight[0], atol=1e-6)
    assert steps == []  # the finished epoch came from the periodic checkpoint, not from training again
