"""Where evaluation, collection and the embedder run: each process's own GPU when one exists, else the CPU."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from atom import pipeline
from atom.config import load_config
from atom.train.trainer import Launch, TrainerConfig, detect_launch


def test_each_rank_computes_on_its_own_gpu_when_cuda_exists(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert pipeline.device_for(TrainerConfig(accelerator="auto")) == torch.device("cuda", 3)
    assert pipeline.device_for(TrainerConfig(accelerator="gpu")) == torch.device("cuda", 3)
    assert pipeline.device_for(TrainerConfig(accelerator="cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pipeline.device_for(TrainerConfig(accelerator="auto")) == torch.device("cpu")


def test_the_embedder_follows_the_rank_device_and_evaluation_moves_the_model(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(pipeline, "build_embedder", lambda memory: seen.setdefault("memory", memory))
    monkeypatch.setattr(pipeline, "device_for", lambda trainer: torch.device("meta"))
    p = pipeline.build(
        load_config(None, ["model.name_or_path=tiny", "data.synthetic.num_records=8", "data.num_docs=2"])
    )
    assert seen["memory"].device == "meta"  # memory.device=auto resolved to this rank's device
    moved = {}

    class Model(torch.nn.Module):
        config = SimpleNamespace(max_position_embeddings=2048)

        def to(self, device):
            moved["device"] = device
            return self

    monkeypatch.setattr(pipeline.harness, "evaluate", lambda *a, **k: ({}, {}))
    pipeline.evaluate(Model(), p, tmp_path)
    assert moved["device"] == torch.device("meta")


def test_process_rank_comes_from_the_launcher_environment(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert pipeline.process_rank(TrainerConfig(devices=4)) == 0
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("NODE_RANK", "2")
    assert pipeline.process_rank(TrainerConfig(devices=4)) == 9
    monkeypatch.setenv("RANK", "5")
    assert pipeline.process_rank(TrainerConfig(devices=4)) == 5


LAUNCH_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID", "SLURM_JOB_NAME")  # fmt: skip


def test_srun_tasks_take_their_rank_and_gpu_from_slurm(monkeypatch):
    # srun --ntasks-per-node=8 on 2 nodes: task 11 is the fourth GPU of the second node, not rank 0 on cuda:0
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = TrainerConfig(devices=8, num_nodes=2)
    for name, value in (("SLURM_NTASKS", "16"), ("SLURM_PROCID", "11"), ("SLURM_LOCALID", "3"),
                        ("SLURM_JOB_NAME", "grpo")):  # fmt: skip
        monkeypatch.setenv(name, value)
    assert detect_launch(cfg) == Launch("slurm", 11, 3, 16)
    assert pipeline.process_rank(cfg) == 11 and pipeline.device_for(cfg) == torch.device("cuda", 3)
    # A shell on an allocation (job name bash): Lightning launches the ranks itself, as without SLURM
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert detect_launch(cfg) == Launch("lightning", 2, 2, 16)


def test_torchrun_ranks_come_from_its_variables(monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = TrainerConfig(devices=8, num_nodes=2)
    for name, value in (("TORCHELASTIC_RUN_ID", "x"), ("RANK", "13"), ("LOCAL_RANK", "5"), ("WORLD_SIZE", "16")):
        monkeypatch.setenv(name, value)
    assert detect_launch(cfg) == Launch("torchrun", 13, 5, 16)
    assert pipeline.process_rank(cfg) == 13 and pipeline.device_for(cfg) == torch.device("cuda", 5)


def test_the_process_group_timeout_reaches_the_strategy():
    from datetime import timedelta

    from atom.train.trainer import _strategy

    for strategy in ("fsdp", "fsdp_grad_op", "ddp"):
        built = _strategy(TrainerConfig(strategy=strategy, devices=2, pg_timeout_s=7200))
        assert built._timeout == timedelta(seconds=7200), strategy
    assert _strategy(TrainerConfig(strategy="ddp"))._timeout == timedelta(seconds=1800)  # Lightning's default
