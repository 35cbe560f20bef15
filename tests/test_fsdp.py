"""FSDP2 on two CPU processes (gloo): parity with one process, checkpoints, resume, the end-to-end command.

One two-process run per setting (``tests/fsdp_worker.py``: SFT, then GRPO one step, resumed to two, and two
uninterrupted) is shared by the assertions of that setting; the one-process references run here, fed the same
data: the SFT demonstrations file, and for GRPO the very trajectories the two ranks rolled out.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from atom import pipeline
from atom.config import load_config
from atom.train.grpo import GRPOModule

from .test_grpo import TINY

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

FSDP_TINY = [o for o in TINY if not o.startswith(("run.stages", "grpo.group_size"))] + [
    "grpo.group_size=2",
    "sft.batch_size=2",
    "sft.epochs=1",
    "sft.lr=1e-3",
    "sft.weight_decay=0.0",
    "sft.max_tokens=256",
    "trainer.accelerator=cpu",
    "grpo.checkpoint_every=1",
    "trainer.keep_checkpoints=1",
]
LORA = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8", "sft.lr=5e-2", "grpo.lr=5e-2"]


def _demos(path: Path, n: int = 8) -> Path:
    """``n`` one-turn demonstrations (8: a whole number of global batches, 2 ranks x sft.batch_size 2)."""
    rows = [
        {"sample_id": f"s{i}", "reward": 1.0, "turns": [{
            "messages": [{"role": "user", "content": f"Read chunk {i} and act."}],
            "completion": f"<create>fact number {i} is {7 * i}</create>",
        }]}
        for i in range(n)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module", params=["full", "lora"])
def fsdp_run(request, tmp_path_factory):
    """The two-process FSDP run of one setting: its directory and overrides."""
    out = tmp_path_factory.mktemp(f"fsdp_{request.param}")
    overrides = FSDP_TINY + [f"sft.demos={_demos(out / 'demos.jsonl')}"] + (LORA if request.param == "lora" else [])
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fsdp_worker.py"), str(out), *overrides,
         "trainer.strategy=fsdp", "trainer.devices=2"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    seen = [torch.load(out / f"seen_rank{r}.pt", weights_only=False) for r in (0, 1)]
    return SimpleNamespace(out=out, overrides=overrides, seen=seen, kind=request.param)


def _load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def _assert_same(a: dict, b: dict, atol: float = 1e-5) -> float:
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= atol, worst
    return worst


def _assert_updates_match(single: dict, fsdp: dict, lr: float, kind: str) -> None:
    """All but a sliver of the weights equal within 1e-5, none off by more than two AdamW steps.

    AdamW's step is lr * m / (sqrt(v) + eps), about lr * sign(g) early on: where a gradient element is at float
    noise level, its sign (so a whole +-lr step) depends on the summation order, which differs between one
    process and a reduce-scatter over two.
    """
    assert single.keys() == fsdp.keys()
    diff = torch.cat([(single[k].float() - fsdp[k].float()).abs().flatten() for k in single])
    within = float((diff <= 1e-5).float().mean())
    print(f"{kind}: {within:.6f} of weights within 1e-5 of one process, largest difference {float(diff.max()):.2e}")
    assert within >= 0.999 and float(diff.max()) <= 2.02 * lr


def _one_process(run, tmp_path, extra: list[str]):
    cfg = load_config(None, run.overrides + [f"run.out_dir={tmp_path}", "trainer.devices=1", *extra])
    return pipeline.build(cfg)


def test_sft_under_fsdp_equals_one_process_with_the_same_batches(fsdp_run, tmp_path):
    # One process accumulating 2 micro-batches sees exactly the two ranks' batches of each optimizer step.
    p = _one_process(fsdp_run, tmp_path, ["sft.accumulate=2"])
    model = pipeline.load_policy(p)
    model.load_state_dict(_load(fsdp_run.out / "init.pt"))
    losses: list[float] = []
    from atom.train.sft import SFTModule

    step = SFTModule.training_step

    def recorded(self, batch, batch_idx):
        loss = step(self, batch, batch_idx)
        losses.append(float(loss))
        return loss

    SFTModule.training_step = recorded
    try:
        trained = pipeline.sft(model, p)
    finally:
        SFTModule.training_step = step
    rank0, rank1 = (s["sft_loss"] for s in fsdp_run.seen)
    assert losses == pytest.approx([x for pair in zip(rank0, rank1) for x in pair], abs=1e-5)
    start, after = _load(fsdp_run.out / "init.pt"), _load(fsdp_run.out / "sft.pt")
    assert any(not torch.equal(start[k], after[k]) for k in start)  # SFT moved the weights
    single = {k: v.detach() for k, v in trained.state_dict().items()}
    _assert_updates_match(single, after, p.cfg.sft.lr, f"SFT parity ({fsdp_run.kind})")


def test_grpo_step_under_fsdp_equals_one_process_on_the_same_rollouts(fsdp_run, tmp_path, monkeypatch):
    from atom.env.rollout import Trajectory

    monkeypatch.setattr(
        Trajectory, "reward", property(lambda self: float(int(self.turns[0].reply.completion_ids.sum()) % 2))
    )
    trajectories = [t for s in fsdp_run.seen for t in s["trajectories"][0]]  # rank 0's groups, then rank 1's
    engine = SimpleNamespace(stats=SimpleNamespace(completion_tokens=0))
    monkeypatch.setattr(GRPOModule, "rollout", lambda self, samples, sampling, repeats: (trajectories, engine))
    metrics: list[dict] = []
    update = GRPOModule._update
    monkeypatch.setattr(GRPOModule, "_update", lambda self, *a: metrics.append(update(self, *a)) or metrics[-1])
    p = _one_process(fsdp_run, tmp_path, ["grpo.max_steps=1"])
    model = pipeline.load_policy(p)
    if fsdp_run.kind == "lora":
        from atom.policy.models import restart_lora

        model = restart_lora(model, p.cfg.model)
    model.load_state_dict(_load(fsdp_run.out / "grpo_start.pt"))
    trained = pipeline.grpo(model, p)
    # The losses are ~0 by construction (ratio 1, advantages of mean zero per group), so they cannot tell the two
    # runs apart; the gradient can. token_mean normalises by the global token count, so the sharded ranks'
    # gradients add up to the one-process gradient: the global norm before clipping is the same.
    fsdp_norms = [s["grpo_metrics"][0]["grpo/grad_norm"] for s in fsdp_run.seen]
    assert metrics[0]["grpo/grad_norm"] > 1e-3
    assert fsdp_norms == pytest.approx([metrics[0]["grpo/grad_norm"]] * 2, rel=1e-4)
    start, after = _load(fsdp_run.out / "grpo_start.pt"), _load(fsdp_run.out / "grpo_b1.pt")
    moved = [k for k in start if not torch.equal(start[k], after[k])]
    assert moved and (fsdp_run.kind == "full" or all("lora_" in k for k in moved))
    single = {k: v.detach() for k, v in trained.state_dict().items()}
    _assert_updates_match(single, after, p.cfg.grpo.lr, f"GRPO parity ({fsdp_run.kind})")


def test_fsdp_checkpoints_hold_policy_and_optimizer_only(fsdp_run):
    from torch.distributed.checkpoint import FileSystemReader

    start = _load(fsdp_run.out / "grpo_start.pt")
    for stage, run in (("sft", "atom"), ("grpo", "b")):
        ckpt = fsdp_run.out / run / "checkpoints" / stage / "last.ckpt"
        assert ckpt.is_dir() and (ckpt / "meta.pt").is_file()  # sharded: one file per rank + metadata
        keys = list(FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata)
        assert not [k for k in keys if "ref_model" in k or "generation" in k or "skeleton" in k]
        params = {k.removeprefix("state_dict.model."): k for k in keys if k.startswith("state_dict.")}
        assert set(params) == set(start)  # the policy, every key once

        def nbytes(tensors) -> int:
            return sum(t.numel() * t.element_size() for t in tensors)

        # The state dict names a tied weight (lm_head = embed_tokens) twice; the optimizer holds it once.
        trained = [v for k, v in start.items() if fsdp_run.kind == "full" or "lora_" in k]
        unique = [v for i, v in enumerate(trained) if not any(torch.equal(v, w) for w in trained[:i])]
        size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
        expected = nbytes(start.values()) + 2 * nbytes(unique)  # policy + AdamW's two moments
        print(f"{fsdp_run.kind} {stage} checkpoint: {size} bytes, policy + optimizer {expected} bytes")
        assert 0.97 * expected <= size <= 1.1 * expected, (stage, size, expected)
    for run in ("a", "b"):  # a periodic checkpoint after each of 2 rollout steps, trainer.keep_checkpoints=1
        periodic = [c.name for c in (fsdp_run.out / run / "checkpoints" / "grpo").glob("grpo-*")]
        assert periodic == ["grpo-epoch=1-step=2.ckpt"], periodic


def test_under_fsdp_parameters_are_dtensor_shards_and_other_ranks_hold_meta_between_stages(fsdp_run):
    for rank, seen in enumerate(fsdp_run.seen):
        # every SFT batch and GRPO rollout ran on DTensor shards (and a plain generation copy)
        assert seen["sharded"] and all(seen["sharded"]), rank
        assert seen["meta_between_stages"], rank  # rank 0: real weights; ranks >= 1: meta tensors only


def test_killed_and_resumed_fsdp_run_equals_an_uninterrupted_one(fsdp_run):
    one, resumed, straight = (_load(fsdp_run.out / f"grpo_{n}.pt") for n in ("b1", "b2", "a2"))
    _assert_same(resumed, straight, atol=1e-6)
    assert any(not torch.equal(one[k], resumed[k]) for k in one)  # the resumed stage really trained step two


def test_fit_command_under_fsdp_on_two_processes(tmp_path):
    """python -m atom.fit experiments/quickstart.yaml trainer.strategy=fsdp trainer.devices=2 <tiny overrides>, in
    bf16-mixed with gradient checkpointing as the paper setting runs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from .conftest import TINY_EXPERIMENT as EXPERIMENT_TINY

    overrides = [o for o in EXPERIMENT_TINY if not o.startswith(("trainer.devices", "trainer.strategy"))]
    proc = subprocess.run(
        [sys.executable, "-m", "atom.fit", "experiments/quickstart.yaml", *overrides, f"run.out_dir={tmp_path}",
         "trainer.strategy=fsdp", "trainer.devices=2", "grpo.prompts_per_step=2", "grpo.max_steps=1",
         "trainer.precision=bf16-mixed", "model.gradient_checkpointing=true"],  # the GPU path's numerics
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "quickstart"
    table = json.loads((run / "results.json").read_text())
    assert set(table) == {"atommem (before)", "atommem (after sft)", "atommem (after sft+grpo)"}
    assert (run / "policy" / "model.safetensors").is_file()
    events = EventAccumulator(str(run / "tb" / "grpo")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"grpo/reward", "grpo/kl", "val/em", "time/rollout"} <= tags
    assert "val/release_em" not in tags  # unboxed answers: the release scorer is 0 by construction, not logged
    assert len(events.Scalars("grpo/optimizer_steps")) == 1 and len(events.Scalars("val/em")) == 1
    assert (run / "checkpoints" / "grpo" / "last.ckpt" / "meta.pt").is_file()


def test_sft_resumed_at_another_world_size_trains_on_the_rest_of_the_epoch(tmp_path):
    """Killed after one optimizer step on two ranks (4 of 16 demonstrations), resumed on one: the 12 it had not
    reached, each once. Counting batches per rank skipped 2 and repeated 2 of the first step's."""
    demos = _demos(tmp_path / "demos.jsonl", n=16)
    overrides = FSDP_TINY + [f"sft.demos={demos}", "run.stages=[sft]", "trainer.strategy=fsdp"]
    for phase, devices in (("kill", 2), ("resume", 1)):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "tests" / "resume_worker.py"), str(tmp_path), phase, *overrides,
             f"trainer.devices={devices}"],
            capture_output=True, text=True, timeout=600, cwd=ROOT,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-4000:]
    killed = [json.loads((tmp_path / f"seen_kill_rank{r}.json").read_text()) for r in (0, 1)]
    resumed = json.loads((tmp_path / "seen_resume_rank0.json").read_text())
    assert [len(k) for k in killed] == [2, 2] and len(resumed) == 12
    assert sorted(killed[0] + killed[1] + resumed) == list(range(16))
