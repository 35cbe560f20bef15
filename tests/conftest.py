"""Shared test settings: the tiny config, dataset files, and the markers' skip rules.

Markers (declared in setup.cfg):
- ``slow``: seconds or more each (tiny training runs, the embedded SmolLM2 weights); ``pytest -m "not slow"``
  is the fast tier.
- ``realdata``: reads the real dataset samples in ``../shared/data`` (beside the repository, as in CI); skipped
  with a one-line reason when that folder is absent, so a clone of the repository alone runs its own tests
  on the invented files under ``tests/fixtures/``.
- ``gpu``: needs CUDA; skipped without it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SHARED_DATA = ROOT.parent / "shared" / "data"

# Invented records in each dataset's original file format (a few KB each, written for the tests).
FIXTURE_FILES = {
    "hotpotqa": FIXTURES / "hotpot_distractor.json",
    "2wiki": FIXTURES / "2wiki.json",
    "musique": FIXTURES / "musique.jsonl",
}
# The real dev samples (see ../shared/data/README.md beside the repository); tests that read them are realdata.
REAL_FILES = {
    "hotpotqa": SHARED_DATA / "hotpotqa" / "hotpot_dev_distractor_v1.sample.json",
    "2wiki": SHARED_DATA / "2wikimultihopqa" / "dev.sample.json",
    "musique": SHARED_DATA / "musique" / "musique_ans_v1.0_dev.sample.jsonl",
}

# The tiny settings every config-driven test starts from: a random 2-layer model, hash embeddings, a handful
# of short documents, one CPU process. Files add what they test on top.
TINY = [
    "model.name_or_path=tiny",
    "model.dtype=float32",
    "model.quantization=none",
    "model.gradient_checkpointing=false",
    "memory.embedder=hash",
    "memory.hash_dim=64",
    "data.num_docs=4",
    "data.max_questions=2",
    "data.chunk_tokens=128",
    "data.chunk_overlap=8",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.strategy=auto",
    "trainer.precision=32-true",
]
# A small synthetic task on top of TINY (the GRPO, SFT and collect tests).
TINY_SYNTHETIC = TINY + [
    "data.dataset=synthetic",
    "data.synthetic.num_records=16",
    "data.synthetic.num_entities=20",
    "data.synthetic.distractors=2",
]

# Shrinks any experiment YAML to seconds while keeping its stages, agent rules, losses and ablation switches
# (the experiment smoke runs and the notebook).
TINY_EXPERIMENT = TINY + [
    "data.max_records=12",
    "data.eval_max_records=6",
    "agent.max_llm_calls=16",  # the release protocol repeats a chunk until a reply adds: bound it
    "data.val_fraction=0.5",
    "data.synthetic.num_records=12",
    "sampling.max_new_tokens=4",
    "sampling.batch_size=8",
    "sft.epochs=1",
    "sft.batch_size=8",
    "sft.max_tokens=1024",
    "grpo.max_steps=1",
    "grpo.group_size=2",
    "grpo.prompts_per_step=1",
    "grpo.micro_batch_size=8",
    "grpo.val_every=1",
    "grpo.val_samples=1",
    "eval.max_samples=1",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_data = pytest.mark.skip(reason=f"needs the real dataset samples in {SHARED_DATA} (absent)")
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    have_data, have_gpu = SHARED_DATA.is_dir(), torch.cuda.is_available()
    for item in items:
        if "realdata" in item.keywords and not have_data:
            item.add_marker(no_data)
        if "gpu" in item.keywords and not have_gpu:
            item.add_marker(no_gpu)


@pytest.fixture
def tiny_pipeline(tmp_path):
    """A factory of (pieces, policy) built by ``atom.pipeline`` from TINY_SYNTHETIC plus ``overrides``, writing
    under a fresh run dir."""
    from atom import pipeline
    from atom.config import load_config

    def build(*overrides: str):
        p = pipeline.build(load_config(None, TINY_SYNTHETIC + [f"run.out_dir={tmp_path}", *overrides]))
        return p, pipeline.load_policy(p)

    return build
