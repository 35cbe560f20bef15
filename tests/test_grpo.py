"""GRPO module: token alignment, every parameter moves, resume equals an uninterrupted run."""

from __future__ import annotations

import pytest
import torch

from atom import pipeline
from atom.config import load_config
from atom.data.datamodule import RolloutSampler
from atom.env.rollout import Observation, Trajectory
from atom.policy.hf import HFPolicy, SamplingConfig
from atom.train.batches import TurnSequence, pad_batch, token_logprobs

from .conftest import TINY_SYNTHETIC

TINY = TINY_SYNTHETIC + [
    "sampling.max_new_tokens=6",
    "agent.answer_reads=0",
    "grpo.group_size=4",
    "grpo.prompts_per_step=2",
    "grpo.micro_batch_size=3",
    "grpo.lr=1e-3",
    "grpo.weight_decay=0.0",
    "grpo.warmup_steps=0",
    "grpo.kl_coef=0.01",
    "run.stages=[grpo]",
]


@pytest.fixture
def parity_reward(monkeypatch):
    """A reward that varies within groups even for a random tiny model: parity of the first completion's ids."""
    monkeypatch.setattr(
        Trajectory, "reward", property(lambda self: float(int(self.turns[0].reply.completion_ids.sum()) % 2))
    )


def build(overrides: list[str]):
    """The pieces and the policy, as atom.fit builds them."""
    p = pipeline.build(load_config(None, overrides))
    return p, pipeline.load_policy(p)


def test_padded_batch_aligns_old_logprobs_and_mask_with_the_model(tmp_path):
    p, model = build(TINY + [f"run.out_dir={tmp_path}"])
    policy = HFPolicy(model, p.tokenizer, SamplingConfig(max_new_tokens=5, seed=1))
    msgs = [[{"role": "user", "content": "short"}], [{"role": "user", "content": "a longer prompt " * 8}]]
    replies = policy.act([Observation(m) for m in msgs])
    seqs = [
        TurnSequence(torch.cat([r.prompt_ids, r.completion_ids]),
                  torch.cat([torch.zeros(len(r.prompt_ids)), torch.ones(len(r.completion_ids))]).bool(),
                  r.logprobs, 1.0)
        for r in replies
    ]  # fmt: skip
    b = pad_batch(seqs, p.tokenizer.pad_token_id)
    keep = int(b["keep"])
    assert keep == 1 + max(len(r.completion_ids) for r in replies)
    for row, r in enumerate(replies):
        n_c = len(r.completion_ids)
        assert b["mask"][row].nonzero().flatten().tolist() == list(range(keep - 1 - n_c, keep - 1))
        assert b["input_ids"][row, -n_c:].tolist() == r.completion_ids.tolist()
    with torch.no_grad():
        lp, _ = token_logprobs(model, b, 1.0)
    m = b["mask"].bool()
    torch.testing.assert_close(lp[m], b["old_logprobs"][m], atol=2e-4, rtol=1e-4)  # on-policy: ratio 1


def test_rollout_batches_depend_only_on_seed_and_step_and_split_whole_prompts_over_ranks():
    def batches(rank: int = 0, world: int = 1, seed: int = 1) -> list[list[int]]:
        sampler = RolloutSampler(5, 4, seed=seed, rank=rank, world=world)
        out = []
        for step in range(4):
            sampler.set_epoch(step)
            out.append(list(sampler))
        return out

    single = batches()
    assert single == batches() and single != batches(seed=2)
    assert sorted(single[0] + single[1][:1]) == list(range(5))  # each sample once per pass
    shares = [batches(rank, 2) for rank in (0, 1)]
    for step, prompts in enumerate(single):
        assert shares[0][step] + shares[1][step] == prompts[0::2] + prompts[1::2]
    with pytest.raises(ValueError, match="prompts_per_step"):
        RolloutSampler(5, 1, seed=0, rank=0, world=2)


@pytest.mark.slow
def test_one_grpo_step_moves_every_trainable_parameter(tmp_path, parity_reward, caplog, recwarn):
    p, model = build(TINY + [f"run.out_dir={tmp_path}", "grpo.max_steps=1"])
    model.eval()  # as from_pretrained returns it
    before = {n: t.detach().clone() for n, t in model.named_parameters() if t.requires_grad}
    with caplog.at_level("INFO"):
        model = pipeline.grpo(model, p)
    # the policy is in train mode before Lightning's check; checkpoints are saved whole on purpose (no notice)
    assert not [w for w in recwarn if "in eval mode" in str(w.message)]
    assert not [r for r in caplog.records if "weights_only" in r.getMessage()]
    said = [r.getMessage() for r in caplog.records if "groups had mixed rewards" in r.getMessage()]
    assert len(said) == 1 and said[0].split(" groups")[0].endswith("of 2")  # 2 prompts per step: 2 groups
    after = dict(model.named_parameters())
    unchanged = [n for n, t in before.items() if torch.equal(t, after[n].detach())]
    assert not unchanged, f"parameters that did not move: {unchanged}"
    assert (tmp_path / "atom" / "checkpoints" / "grpo" / "last.ckpt").is_file()
    events = list((tmp_path / "atom" / "tb" / "grpo").glob("events.out.tfevents.*"))
    assert events


@pytest.mark.slow
def test_bf16_mixed_on_cpu_rolls_out_and_updates_under_autocast_with_float32_weights(tmp_path, parity_reward):
    """trainer.precision=bf16-mixed on CPU (AMX): Lightning autocasts the whole training step, so the rollout's
    generation and the update's forwards both run bf16 matmuls, while the weights and AdamW stay float32."""
    p, model = build(TINY + [f"run.out_dir={tmp_path}", "grpo.max_steps=1", "trainer.precision=bf16-mixed"])
    before = {n: t.detach().clone() for n, t in model.named_parameters()}
    seen: list = []

    def probe(module, args, kwargs):
        seen.append(
            (torch.is_grad_enabled(), torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        )

    handle = model.register_forward_pre_hook(probe, with_kwargs=True)
    try:
        model = pipeline.grpo(model, p)
    finally:
        handle.remove()
    assert {dtype for _, dtype in seen} == {torch.bfloat16}
    assert {grad for grad, _ in seen} == {False, True}  # both the rollout (no grad) and the update ran
    assert all(t.dtype == torch.float32 for t in model.parameters())
    assert any(not torch.equal(t, before[n]) for n, t in model.named_parameters())


@pytest.mark.slow
def test_killed_and_resumed_run_matches_an_uninterrupted_one(tmp_path, parity_reward):
    straight = pipeline.grpo(*reversed(build(TINY + [f"run.out_dir={tmp_path}/a", "grpo.max_steps=2"])))
    # "killed" after one rollout step: only its checkpoint survives
    first = pipeline.grpo(*reversed(build(TINY + [f"run.out_dir={tmp_path}/b", "grpo.max_steps=1"])))
    resumed = pipeline.grpo(*reversed(build(TINY + [f"run.out_dir={tmp_path}/b", "grpo.max_steps=2"])))
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=f"{name} differs after resume")
    moved = any(not torch.equal(a, b) for a, b in zip(first.parameters(), resumed.parameters()))
    assert moved  # the resumed run really trained a second step


@pytest.mark.slow
def test_two_process_cpu_ddp_runs_a_grpo_step(tmp_path):
    """Lightning DDP on CPU (gloo), launched as a user would: python -m atom.fit ... trainer.strategy=ddp."""
    import subprocess
    import sys

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tmp_path / "ddp.yaml"
    config.write_text("run: {name: ddp}\n")
    overrides = [o for o in TINY if not o.startswith("grpo.kl_coef")] + [
        f"run.out_dir={tmp_path}", "grpo.max_steps=2", "grpo.group_size=2", "grpo.weight_decay=0.01",
        "grpo.std_scale=batch",  # the batch std spans both ranks
        "trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "atom.fit", str(config), *overrides],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MEMBER: 2/2" in proc.stderr + proc.stdout
    run = tmp_path / "ddp"
    assert (run / "checkpoints" / "grpo" / "last.ckpt").is_file()
    assert (run / "policy" / "model.safetensors").is_file()
    events = EventAccumulator(str(run / "tb" / "grpo")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "grpo/reward",
        "grpo/kl",
        "grpo/optimizer_steps",
        "memory/create_per_episode",
        "memory/create_per_turn",
    } <= tags
    assert [s.value for s in events.Scalars("grpo/optimizer_steps")] == [1.0, 1.0]  # two rollout steps


def test_the_reference_is_no_submodule_and_checkpoints_load_strictly(tmp_path, parity_reward):
    p, model = build(TINY + [f"run.out_dir={tmp_path}", "grpo.max_steps=1"])
    n_params = sum(t.numel() for t in model.parameters())
    pipeline.grpo(model, p)
    ckpt = torch.load(tmp_path / "atom" / "checkpoints" / "grpo" / "last.ckpt", weights_only=True)
    keys = list(ckpt["state_dict"])
    assert keys and all(k.startswith("model.") for k in keys)  # no ref_model.*, no generation copy
    assert sum(v.numel() for v in ckpt["state_dict"].values()) == n_params + sum(
        t.numel() for k, t in model.state_dict().items() if k not in dict(model.named_parameters())
    )  # the policy's parameters (+ persistent buffers) once
    from atom.train.grpo import GRPOConfig, GRPOModule

    module = GRPOModule(model, p.tokenizer, GRPOConfig(), SamplingConfig(), p.engine)
    module.load_state_dict(ckpt["state_dict"])
    first = keys[0]
    with pytest.raises(RuntimeError, match="Missing key"):
        module.load_state_dict({k: v for k, v in ckpt["state_dict"].items() if k != first})


def test_length_bucketed_micro_batches_pad_less_and_give_the_same_gradient(tmp_path):
    from atom.train.batches import micro_batches
    from atom.train.losses import grpo_loss

    assert micro_batches([5, 6, 7, 8, 9], [3, 9, 1, 9, 4], 2) == [[6, 8], [9, 5], [7]]
    p, model = build(TINY + [f"run.out_dir={tmp_path}"])
    policy = HFPolicy(model, p.tokenizer, SamplingConfig(max_new_tokens=5, seed=3))
    msgs = [[{"role": "user", "content": "word " * n}] for n in (1, 40, 3, 38, 2, 41)]
    replies = policy.act([Observation(m) for m in msgs])
    seqs = [
        TurnSequence(torch.cat([r.prompt_ids, r.completion_ids]),
                  torch.cat([torch.zeros(len(r.prompt_ids)), torch.ones(len(r.completion_ids))]).bool(),
                  r.logprobs, adv)
        for r, adv in zip(replies, (1.0, -0.5, 0.25, -1.0, 0.5, 0.75))
    ]  # fmt: skip
    tokens = float(sum(int(s.mask.sum()) for s in seqs))

    def gradient(micros):
        model.zero_grad(set_to_none=True)
        padded = 0
        for micro in micros:
            b = pad_batch([seqs[i] for i in micro], p.tokenizer.pad_token_id)
            padded += b["input_ids"].numel()
            lp, _ = token_logprobs(model, b, 1.0)
            loss, _ = grpo_loss(
                lp, b["old_logprobs"], b["adv"], b["mask"], kl_coef=0.0, num_tokens=tokens, num_sequences=6.0
            )
            loss.backward()
        return torch.cat([q.grad.flatten() for q in model.parameters()]), padded

    in_order, padded_in_order = gradient([[0, 1], [2, 3], [4, 5]])
    bucketed, padded_bucketed = gradient(micro_batches(range(6), [len(s.input_ids) for s in seqs], 2))
    assert padded_bucketed < padded_in_order
    torch.testing.assert_close(bucketed, in_order, atol=1e-6, rtol=1e-4)
    assert in_order.abs().sum() > 0


def test_a_shared_prefix_runs_once_and_gives_the_plain_forwards_logprobs_and_gradient(tmp_path):
    from atom.train.batches import shared_prefix

    p, model = build(TINY + [f"run.out_dir={tmp_path}"])
    policy = HFPolicy(model, p.tokenizer, SamplingConfig(max_new_tokens=5, seed=3))
    system = {"role": "system", "content": "the same system prompt " * 10}
    msgs = [[system, {"role": "user", "content": "word " * n}] for n in (1, 40, 3, 38)]
    replies = policy.act([Observation(m) for m in msgs])
    seqs = [
        TurnSequence(torch.cat([r.prompt_ids, r.completion_ids]),
                  torch.cat([torch.zeros(len(r.prompt_ids)), torch.ones(len(r.completion_ids))]).bool(),
                  r.logprobs, adv)
        for r, adv in zip(replies, (1.0, -0.5, 0.25, -1.0))
    ]  # fmt: skip
    prefix = shared_prefix(seqs)
    prompts = [len(r.prompt_ids) for r in replies]
    assert 40 <= prefix < min(prompts)  # the system prompt at least, never into a completion's scoring position
    assert all(torch.equal(s.input_ids[:prefix], seqs[0].input_ids[:prefix]) for s in seqs)
    assert shared_prefix(seqs[:1]) == 0 and shared_prefix(seqs, minimum=prefix + 1) == 0
    model.train()

    def run(n: int):
        model.zero_grad(set_to_none=True)
        b = pad_batch(seqs, p.tokenizer.pad_token_id, n)
        assert ("prefix_ids" in b) == (n > 0)
        lp, _ = token_logprobs(model, b, 0.7)
        (lp * b["mask"] * b["adv"][:, None]).sum().backward()
        return lp[b["mask"].bool()], torch.cat([q.grad.flatten() for q in model.parameters()])

    plain, plain_grad = run(0)
    shared, shared_grad = run(prefix)
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared_grad, plain_grad, atol=1e-5, rtol=1e-4)
    assert plain_grad.abs().sum() > 0

    # A group's first turns share the whole prompt: each row after the prefix is one prompt token and its
    # completion, shorter than the longest completion's window. Every completion token must still be scored.
    r = replies[1]
    same = [
        TurnSequence(torch.cat([r.prompt_ids, r.completion_ids[:c]]),
                  torch.cat([torch.zeros(len(r.prompt_ids)), torch.ones(c)]).bool(), r.logprobs[:c], 1.0)
        for c in (5, 2, 3)
    ]  # fmt: skip
    seqs[:] = same
    prefix = shared_prefix(seqs)
    assert prefix == len(r.prompt_ids) - 1
    assert int(pad_batch(seqs, p.tokenizer.pad_token_id, prefix)["mask"].sum()) == 5 + 2 + 3
    plain, plain_grad = run(0)
    shared, shared_grad = run(prefix)
    assert len(shared) == len(plain) == 10
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared_grad, plain_grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "precision, dtype", [("bf16-mixed", torch.bfloat16), ("16-mixed", torch.bfloat16), ("32-true", None)]
)
def test_evaluation_generates_with_the_numerics_training_used(tiny_pipeline, tmp_path, precision, dtype):
    """atom.fit's evaluations run outside Lightning: under bf16-mixed they autocast as the training step did, and
    on CPU 16-mixed too is bfloat16 (Lightning runs 16-mixed as bf16-mixed there)."""
    p, model = tiny_pipeline(f"trainer.precision={precision}", "eval.max_samples=1", "eval.methods=[atommem]")
    seen: list = []
    handle = model.register_forward_pre_hook(
        lambda m, a: seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
    )
    try:
        pipeline.evaluate(model, p, tmp_path / "eval", progress=False)
    finally:
        handle.remove()
    assert seen and set(seen) == {dtype}
