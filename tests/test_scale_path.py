"""What a GPU node would hit and two gloo processes cannot show, checked on the CPU with fakes: collectives a
rank with nothing to do must still join, copies a vLLM run must not build, and stage state freed after a stage."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from atom.policy.hf import SamplingConfig
from atom.policy.models import ModelConfig, _tiny_model, load_tokenizer
from atom.train.batches import TurnSequence
from atom.train.grpo import GRPOConfig, GRPOModule
from atom.train.sharding import FSDP2Strategy


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ModelConfig(name_or_path="tiny"))


class UnshardedFSDP(FSDP2Strategy):
    """atom's FSDP2 strategy with sharding left out: what ``configure_model`` builds around the policy."""

    root_device = torch.device("cpu")
    compute_dtype = None

    def shard(self, model, source):
        return model


def _module(tokenizer, strategy, **kwargs) -> GRPOModule:
    module = GRPOModule(_tiny_model(len(tokenizer), seed=0), tokenizer, GRPOConfig(micro_batch_size=2),
                        SamplingConfig(temperature=0.7), make_engine=None, **kwargs)  # fmt: skip
    module._trainer = SimpleNamespace(strategy=strategy, global_rank=0, world_size=2)
    return module


def test_under_vllm_no_generation_copy_is_built_or_refreshed(tokenizer, monkeypatch):
    with_hf = _module(tokenizer, UnshardedFSDP())
    with_hf.configure_model()
    assert with_hf.generation_model is not None  # the hf engine generates from an unsharded copy
    with_vllm = _module(tokenizer, UnshardedFSDP(), make_rollout_engine=lambda: None)
    with_vllm.configure_model()
    assert with_vllm.generation_model is None  # 2N bytes (16 GB at 8B) the engine never reads
    streamed = []
    monkeypatch.setattr("atom.train.grpo.stream_full_weights", lambda *a: streamed.append(a))
    with_vllm.refresh_generation_model()
    assert not streamed  # and no all-gather of every parameter after each rollout step


@pytest.mark.slow
def test_a_rank_without_sequences_runs_as_many_old_logprob_forwards_as_the_others(tokenizer):
    # The other ranks have two micro-batches (reduce max = 2): a sharded forward is a collective, so this rank,
    # whose groups were all dropped (drop_zero_std), must run two forwards too, or every rank waits forever.
    strategy = SimpleNamespace(reduce=lambda t, reduce_op: torch.tensor(2.0))
    module = _module(tokenizer, strategy)
    forwards = []
    module.model.register_forward_hook(lambda *a: forwards.append(1))
    assert module._trainer_old_logprobs([]) == 0.0
    assert len(forwards) == 2 * 2  # raw (T = 1) and tempered (T = 0.7) forwards per micro-batch
    # a rank with one micro-batch repeats it, and only its own sequences are relabelled
    seq = TurnSequence(torch.tensor([5, 6, 7, 8]), torch.tensor([False, False, True, True]), torch.zeros(2))
    forwards.clear()
    module._trainer_old_logprobs([seq])
    assert len(forwards) == 4 and seq.old_logprobs.shape == (2,) and (seq.old_logprobs < 0).all()


@pytest.mark.slow
def test_a_finished_stage_frees_its_module_and_trainer(tmp_path, monkeypatch):
    """Lightning's module <-> trainer cycles (and the datamodule's back reference to the trainer) kept a stage's
    state alive until a later gc: at 8B, SFT's optimizer state through GRPO, GRPO's during the final evaluation."""
    import gc
    import weakref

    from atom import pipeline
    from atom.config import load_config
    from atom.train.sft import SFTModule

    from .test_grpo import TINY

    refs: dict[str, list] = {"module": [], "trainer": []}
    build_trainer = pipeline.build_trainer
    monkeypatch.setattr(pipeline, "build_trainer", lambda *a, **k: _track(refs, "trainer", build_trainer(*a, **k)))
    for cls in (SFTModule, GRPOModule):
        init = cls.__init__
        monkeypatch.setattr(cls, "__init__", lambda self, *a, _init=init, **k: _init(self, *a, **k) or
                            refs["module"].append(weakref.ref(self)))  # fmt: skip
    p = pipeline.build(load_config(None, TINY + ["grpo.max_steps=1", "sft.epochs=1", f"run.out_dir={tmp_path}"]))
    gc.disable()  # what the test asserts: freed when the stage returns, not at some later collection
    try:
        model = pipeline.sft(pipeline.load_policy(p), p)
        assert [r() for r in refs["module"] + refs["trainer"]] == [None, None]
        model = pipeline.grpo(model, p)
        assert [r() for r in refs["module"] + refs["trainer"]] == [None] * 4
    finally:
        gc.enable()
    assert isinstance(model, torch.nn.Module)


def _track(refs: dict, kind: str, obj):
    import weakref

    refs[kind].append(weakref.ref(obj))
    return obj


@pytest.mark.slow
def test_evaluation_on_a_gpu_runs_a_compute_dtype_copy_in_kv_sized_batches(monkeypatch, tmp_path):
    # At 8B: the fp32 model (33 GB) and 64 sequences of ~7k tokens of KV cache (~66 GB) were ~97 GB on rank 0.
    from atom import pipeline
    from atom.config import load_config

    monkeypatch.setattr(pipeline, "device_for", lambda trainer: torch.device("meta"))  # a non-CPU device
    overrides = ["model.name_or_path=tiny", "data.synthetic.num_records=8", "data.num_docs=2",
                 "sampling.batch_size=64", "trainer.precision=bf16-mixed", "model.max_context_tokens=1000",
                 "eval.kv_cache_gb=0.0005"]  # fmt: skip
    p = pipeline.build(load_config(None, overrides))
    model = pipeline.load_policy(p)
    seen = {}
    monkeypatch.setattr(pipeline.harness, "evaluate", lambda *a, **k: (seen.update(k), ({}, {}))[1])
    pipeline.evaluate(model, p, tmp_path)
    evaluated = seen["model"]
    assert {t.dtype for t in evaluated.parameters()} == {torch.bfloat16} and evaluated.device.type == "meta"
    assert {t.dtype for t in model.parameters()} == {torch.float32} and model.device.type == "cpu"  # kept for policy/
    c = model.config  # keys + values, every layer and KV head, 2 bytes, at the 1000-token window
    per_sequence = 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 2 * 1000
    assert seen["sampling"].batch_size == int(5e5 // per_sequence) == 3
    p.cfg.eval.kv_cache_gb = 0  # no budget: sampling.batch_size as configured
    pipeline.evaluate(model, p, tmp_path)
    assert seen["sampling"].batch_size == 64


def test_a_loader_resumed_at_another_world_size_trains_on_exactly_the_rest_of_the_epoch():
    from atom.data.datamodule import EpochShuffler
    from atom.train.preemption import ResumableLoader

    def loader(rank: int, world: int) -> ResumableLoader:
        return ResumableLoader(list(range(16)), batch_size=2, sampler=EpochShuffler(16, 3, 2, rank, world),
                               collate_fn=list)  # fmt: skip

    everything = list(EpochShuffler(16, 3))
    for before, after in ((2, 1), (1, 2), (2, 4)):
        ranks = [loader(r, before) for r in range(before)]
        seen = []
        for one in ranks:  # one optimizer step: every rank's first batch, then a kill
            seen += next(iter(one))
        state = ranks[0].state_dict()  # the checkpoint holds rank zero's loader state
        for r in range(after):
            resumed = loader(r, after)
            resumed.load_state_dict(state)
            seen += [i for batch in resumed for i in batch]
        # every demonstration, each once but for the wrap-around that fills the resumed run's last global batch
        first, span = 2 * before, 2 * after
        assert set(seen) == set(everything) and len(seen) == first + -(-(16 - first) // span) * span, (before, after)
