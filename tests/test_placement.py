"""Where evaluation, collection and the embedder run: each process's own GPU when one exists, else the CPU."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from atom import pipeline
from atom.config import load_config
from atom.train.trainer import TrainerConfig


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
