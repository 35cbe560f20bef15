"""SFT: completion-only labels and loss, demonstration files, and a resumed run equal to an uninterrupted one."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from atom import pipeline
from atom.config import load_config
from atom.train.batches import prefix_sharing, token_logprobs, unshared
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


def test_loss_is_next_token_cross_entropy_over_labelled_tokens_with_or_without_the_shared_prefix(tmp_path):
    p = pipeline.build(load_config(None, SFT_TINY + [f"run.out_dir={tmp_path}"]))
    model = pipeline.load_policy(p).train()
    system = {"role": "system", "content": "the same system prompt " * 10}
    examples = [
        tokenize_demo(p.tokenizer, [system, {"role": "user", "content": "word " * n}], f"<create>f{n}</create>", 512)
        for n in (1, 30, 7)
    ]
    batch = collate(examples, p.tokenizer.pad_token_id)
    assert batch["prefix_ids"].shape[1] >= 40  # the system prompt runs once

    def grads(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return float(loss), torch.cat([q.grad.flatten() for q in model.parameters()])

    shared = grads(sft_loss(token_logprobs(model, batch, 1.0)[0], batch["mask"]))
    plain_batch = unshared(batch)
    assert "prefix_ids" not in plain_batch
    plain = grads(sft_loss(token_logprobs(model, plain_batch, 1.0)[0], plain_batch["mask"]))
    # the reference: each example alone, full logits, torch's cross-entropy over the labelled positions
    total, count = 0.0, 0
    for ids, labels in examples:
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
        target = torch.tensor(labels[1:])
        total = total + torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum")
        count += int((target != IGNORE).sum())
    reference = grads(total / count)
    for loss, grad in (shared, plain):
        assert loss == pytest.approx(reference[0], rel=1e-5)
        torch.testing.assert_close(grad, reference[1], atol=1e-5, rtol=1e-4)
    # activation checkpointing returns no KV cache in training: whole sequences, the same loss
    model.gradient_checkpointing_enable()
    assert not prefix_sharing(model)
    with pytest.raises(RuntimeError, match="KV cache"):
        token_logprobs(model, batch, 1.0)
    assert sft_loss(token_logprobs(model, plain_batch, 1.0)[0], plain_batch["mask"]).item() == pytest.approx(
        reference[0], rel=1e-5
    )


def test_collate_left_pads_and_labels_exactly_the_completion_tokens():
    batch = collate([([5, 6, 7], [IGNORE, 6, 7]), ([8, 9], [IGNORE, 9])], pad_id=0)
    assert "prefix_ids" not in batch  # nothing shared: no prefix
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 8, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert batch["position_ids"][1, 1:].tolist() == [0, 1]
    assert batch["mask"].tolist() == [[1.0, 1.0], [0.0, 1.0]]  # scores of tokens 6, 7 and 9
    prompt = list(range(10, 30))
    shared = collate([(prompt + [1, 2], [IGNORE] * 20 + [1, 2]), (prompt + [3], [IGNORE] * 20 + [3])], pad_id=0)
    assert shared["prefix_ids"].tolist() == [prompt[:19]]  # stops before the position scoring the first label
    assert shared["input_ids"].tolist() == [[29, 1, 2], [0, 29, 3]]
    assert shared["position_ids"][:, -1].tolist() == [21, 20]


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
        rows = [unshared(batch)["input_ids"] for batch in loader]
        return [tuple(t for t in row if t != tokenizer.pad_token_id) for rs in rows for row in rs.tolist()]

    assert order(1) == order(1)
    assert order(0) != order(1) and sorted(order(0)) == sorted(order(1))
    assert len(set(order(0))) == len(demos)


def _params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.slow
def test_sft_lowers_the_loss_and_a_resumed_run_matches_an_uninterrupted_one(tmp_path, recwarn):
    def build(*overrides: str):
        p = pipeline.build(load_config(None, SFT_TINY + [f"run.out_dir={tmp_path}", *overrides]))
        return pipeline.load_policy(p), p

    model, p = build("run.name=a", "sft.epochs=2")
    start = _params(model)
    straight = pipeline.sft(model.eval(), p)  # eval mode, as from_pretrained returns it
    pipeline.sft(*build("run.name=b", "sft.epochs=1"))
    model, p = build("run.name=b", "sft.epochs=2")
    assert torch.equal(_params(model), start)  # a fresh model: the weights must come from the checkpoint
    resumed = pipeline.sft(model, p)
    assert not torch.equal(_params(straight), start)
    assert torch.allclose(_params(resumed), _params(straight), atol=1e-6)
    assert not [w for w in recwarn if "in eval mode" in str(w.message)]  # train mode before Lightning's check

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
    from atom.policy.models import restart_lora

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
