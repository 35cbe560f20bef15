"""SFT: completion-only labels and loss, demonstration files, and a resumed run equal to an uninterrupted one."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from atom import pipeline
from atom.config import load_config
from atom.train.sft import IGNORE, DemoDataModule, collate, read_demos, sft_loss, tokenize_demo

from .test_grpo import TINY

SFT_TINY = [o for o in TINY if not o.startswith("run.stages")] + [
    "run.stages=[sft]",
    "sft.batch_size=4",
    "sft.lr=1e-3",
    "sft.weight_decay=0.0",
    "sft.max_tokens=512",
]
MESSAGES = [{"role": "user", "content": "Read the chunk and act."}]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return pipeline.build(load_config(None, SFT_TINY + [f"run.out_dir={tmp_path_factory.mktemp('tok')}"])).tokenizer


def test_only_completion_tokens_and_eos_are_labelled(tokenizer):
    ids, labels = tokenize_demo(tokenizer, MESSAGES, "<create>Paris is in France</create>", max_tokens=512)
    completion = tokenizer("<create>Paris is in France</create>", add_special_tokens=False)["input_ids"]
    n_prompt = len(ids) - len(completion) - 1
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:] == completion + [tokenizer.eos_token_id] == ids[n_prompt:]


def test_long_prompts_are_centre_truncated_to_the_token_cap(tokenizer):
    long = [{"role": "user", "content": "word " * 2000}]
    ids, labels = tokenize_demo(tokenizer, long, "<answer>x</answer>", max_tokens=256)
    assert len(ids) == len(labels) == 256
    assert labels[-1] == tokenizer.eos_token_id and labels[0] == IGNORE


def test_loss_is_the_mean_over_labelled_tokens_and_ignores_the_rest():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, IGNORE], [IGNORE, 1, IGNORE, IGNORE, IGNORE]])
    loss = sft_loss(logits, labels)
    # Token t+1 is predicted from position t: the labelled targets are (0,2), (0,3) and (1,1).
    logp = logits.log_softmax(-1)
    expected = -(logp[0, 1, 3] + logp[0, 2, 4] + logp[1, 0, 1]) / 3
    assert torch.allclose(loss, expected)
    loss.backward()
    touched = {(b, t) for b in range(2) for t in range(5) if logits.grad[b, t].abs().sum() > 0}
    assert touched == {(0, 1), (0, 2), (1, 0)}  # prompt, padding and the last position get no gradient


def test_collate_right_pads_and_masks_padding_from_attention_and_loss():
    batch = collate([([5, 6, 7], [IGNORE, 6, 7]), ([8], [8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_demos_file_is_filtered_by_reward_and_a_bad_line_names_file_and_line(tmp_path):
    good = {"sample_id": "a", "reward": 0.5, "turns": [{"messages": MESSAGES, "completion": "<create>x</create>"}]}
    low = dict(good, sample_id="b", reward=0.25)
    path = tmp_path / "demos.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(low) + "\n")
    assert [d["reward"] for d in read_demos(path, min_reward=0.5)] == [0.5]
    assert len(read_demos(path, min_reward=0.0)) == 2
    path.write_text(json.dumps(good) + "\n" + '{"reward": 1.0}\n')
    with pytest.raises(ValueError, match=r"demos\.jsonl:2: not a trajectory record"):
        read_demos(path, 0.5)


def test_epoch_order_depends_only_on_seed_and_epoch(tokenizer):
    demos = [{"messages": MESSAGES, "completion": f"<create>fact {i}</create>"} for i in range(10)]

    def order(epoch: int) -> list[tuple[int, ...]]:
        loader = DemoDataModule(demos, tokenizer, 128, batch_size=3, seed=7).train_dataloader()
        loader.sampler.set_epoch(epoch)
        return [tuple(row) for batch in loader for row in batch["input_ids"].tolist()]

    assert order(1) == order(1)
    assert order(0) != order(1) and sorted(order(0)) == sorted(order(1))
    assert len(set(order(0))) == len(demos)


def _params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.slow
def test_sft_lowers_the_loss_and_a_resumed_run_matches_an_uninterrupted_one(tmp_path):
    def build(*overrides: str):
        p = pipeline.build(load_config(None, SFT_TINY + [f"run.out_dir={tmp_path}", *overrides]))
        return pipeline.load_policy(p), p

    model, p = build("run.name=a", "sft.epochs=2")
    start = _params(model)
    straight = pipeline.sft(model, p)
    pipeline.sft(*build("run.name=b", "sft.epochs=1"))
    model, p = build("run.name=b", "sft.epochs=2")
    assert torch.equal(_params(model), start)  # a fresh model: the weights must come from the checkpoint
    resumed = pipeline.sft(model, p)
    assert not torch.equal(_params(straight), start)
    assert torch.allclose(_params(resumed), _params(straight), atol=1e-6)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "a" / "tb" / "sft"))
    events.Reload()
    losses = [s.value for s in events.Scalars("sft/loss")]
    assert len(losses) >= 4 and sum(losses[-2:]) < sum(losses[:2])


@pytest.mark.parametrize("policy", ["oracle", "model"])
@pytest.mark.slow
def test_collect_writes_trajectories_that_sft_reads_back_filtered(tmp_path, capsys, policy):
    from atom.collect import main

    out, config = tmp_path / "trajectories.jsonl", tmp_path / "collect.yaml"
    config.write_text("run: {name: collect}\n")
    main([str(config), *SFT_TINY, f"run.out_dir={tmp_path}", "--out", str(out), "--policy", policy, "--repeats", "2"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    n_train = len(pipeline.build(load_config(None, SFT_TINY)).data.train_samples)
    assert len(rows) == 2 * n_train and all(r["turns"] for r in rows)
    assert f"wrote {len(rows)} trajectories" in capsys.readouterr().out
    kept = [r for r in rows if r["reward"] >= 0.5]
    demos = read_demos(out, min_reward=0.5)
    assert len(demos) == sum(len(r["turns"]) for r in kept)
    if policy == "oracle":
        assert kept == rows  # the gold-fact teacher answers every question


@pytest.mark.slow
def test_grpo_after_lora_sft_starts_with_its_kl_reference_equal_to_the_sft_policy(tmp_path):
    from atom.train.models import restart_lora

    lora = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8", "sft.epochs=1", "sft.lr=5e-2"]
    p = pipeline.build(
        load_config(None, SFT_TINY + lora + ["run.stages=[sft,grpo]", "grpo.max_steps=1", f"run.out_dir={tmp_path}"])
    )
    model = pipeline.sft(pipeline.load_policy(p), p)
    probe = torch.tensor([[5, 17, 42, 9, 3]])
    with torch.no_grad():
        after_sft = model(input_ids=probe).logits
        with model.disable_adapter():
            base = model(input_ids=probe).logits
    assert (after_sft - base).abs().max() > 0.05, (after_sft - base).abs().max()  # SFT moved the adapters

    restarted = restart_lora(copy.deepcopy(model), p.cfg.model)  # merging works in place: on a copy
    with torch.no_grad():
        assert torch.allclose(restarted(input_ids=probe).logits, after_sft, atol=1e-4)
        with restarted.disable_adapter():  # the reference GRPO will use
            assert torch.allclose(restarted(input_ids=probe).logits, after_sft, atol=1e-4)
    trainable = [n for n, q in restarted.named_parameters() if q.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    pipeline.grpo(model, p, restart_adapters=True)  # on-policy first update: policy == reference, so the KL is 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "atom" / "tb" / "grpo"))
    events.Reload()
    assert [s.value for s in events.Scalars("grpo/kl")] == pytest.approx([0.0], abs=1e-9)
