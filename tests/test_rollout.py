"""The HF policy's token bookkeeping and the lockstep rollout engine."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from atom.data.chunker import TokenChunker
from atom.data.loaders import DataConfig
from atom.data.longcontext import build_samples
from atom.data.synthetic import SyntheticConfig, generate
from atom.env.episode import AgentConfig
from atom.env.rollout import Observation, Reply, RolloutEngine, Turn, atommem_episode
from atom.memory.embedder import HashEmbedder, MemoryConfig
from atom.policy.hf import HFPolicy, SamplingConfig
from atom.policy.models import ModelConfig, load_model, load_tokenizer

MEM = MemoryConfig(embedder="hash", hash_dim=64)


@pytest.fixture(scope="module")
def tiny():
    cfg = ModelConfig(name_or_path="tiny")
    return load_model(cfg, seed=0), load_tokenizer(cfg)


@pytest.fixture(scope="module")
def samples():
    records = generate(SyntheticConfig(num_records=12, hops=2, num_entities=20, distractors=2, seed=1))
    cfg = DataConfig(num_docs=6, max_questions=2, seed=0, chunk_tokens=96, chunk_overlap=8)
    return build_samples(records, cfg)[:4]


MESSAGES = [
    [{"role": "user", "content": "hello"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a longer prompt " * 10}],
    [{"role": "user", "content": "third"}],
]
OBSERVATIONS = [Observation(m) for m in MESSAGES]


def test_mask_covers_exactly_the_generated_tokens(tiny):
    model, tok = tiny
    policy = HFPolicy(model, tok, SamplingConfig(temperature=1.0, max_new_tokens=10, seed=3, batch_size=2))
    replies = policy.act(OBSERVATIONS)
    for messages, reply in zip(MESSAGES, replies):
        prompt = policy.encode(messages)
        assert reply.prompt_ids.tolist() == prompt
        turn = Turn("read", messages, reply)
        assert turn.input_ids.tolist() == prompt + reply.completion_ids.tolist()
        assert not turn.mask[: len(prompt)].any() and turn.mask[len(prompt) :].all()
        assert int(turn.mask.sum()) == len(reply.completion_ids) == len(reply.logprobs)
        # generation stops at the first EOS, which is kept; no padding leaks into the completion
        eos = torch.isin(reply.completion_ids, torch.tensor(policy.eos_ids)).nonzero().flatten().tolist()
        assert eos in ([], [len(reply.completion_ids) - 1])
        assert 1 <= len(reply.completion_ids) <= 10


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_recorded_logprobs_equal_a_recomputed_forward(tiny, temperature):
    model, tok = tiny
    policy = HFPolicy(model, tok, SamplingConfig(temperature=temperature, max_new_tokens=8, seed=5))
    for reply in policy.act(OBSERVATIONS):
        ids = torch.cat([reply.prompt_ids, reply.completion_ids])[None]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1].float() / temperature
        p = len(reply.prompt_ids)
        expected = torch.log_softmax(logits, -1)[p - 1 :].gather(-1, reply.completion_ids[:, None]).squeeze(-1)
        torch.testing.assert_close(reply.logprobs, expected, atol=2e-4, rtol=1e-4)


def test_autocast_generation_records_the_logprobs_of_a_bf16_forward(tiny):
    """trainer.precision=bf16-mixed: generation under autocast samples from, and records, the bf16 forward."""
    model, tok = tiny
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=8, seed=5)
    replies = HFPolicy(model, tok, sampling, autocast=torch.bfloat16).act(OBSERVATIONS)
    assert next(model.parameters()).dtype == torch.float32  # the weights stay float32 (autocast casts per op)
    for reply in replies:
        ids = torch.cat([reply.prompt_ids, reply.completion_ids])[None]
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=ids).logits[0, :-1].float()
        p = len(reply.prompt_ids)
        expected = torch.log_softmax(logits, -1)[p - 1 :].gather(-1, reply.completion_ids[:, None]).squeeze(-1)
        # bf16 keeps 8 bits: the cached decode and the full forward round differently, by far less than 0.1 nat
        assert (reply.logprobs - expected).abs().mean() < 0.05
    fp32 = HFPolicy(model, tok, sampling).act(OBSERVATIONS)
    assert any(not torch.equal(a.logprobs, b.logprobs) for a, b in zip(fp32, replies))


def test_autocast_off_keeps_an_enclosing_autocast(tiny):
    """HFPolicy(autocast=None) inside Lightning's bf16-mixed step must not switch the step's autocast off."""
    model, tok = tiny
    seen: list = []

    def probe(module, args):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)

    def act(**kwargs) -> set:
        seen.clear()
        HFPolicy(model, tok, SamplingConfig(max_new_tokens=2), **kwargs).act(OBSERVATIONS[:1])
        return set(seen)

    handle = model.register_forward_pre_hook(probe)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert act() == {torch.bfloat16}
        assert act() == {None}
        assert act(autocast=torch.bfloat16) == {torch.bfloat16}
    finally:
        handle.remove()


def test_same_seed_same_generation_and_different_seed_differs(tiny):
    model, tok = tiny
    run = lambda seed: [  # noqa: E731
        r.completion_ids.tolist()
        for r in HFPolicy(model, tok, SamplingConfig(max_new_tokens=12, seed=seed)).act(
            [Observation(m) for m in MESSAGES]
        )
    ]
    assert run(11) == run(11)
    assert run(11) != run(12)


class CountingEmbedder:
    def __init__(self, dim: int):
        self.inner, self.dim = HashEmbedder(dim), dim
        self.doc_calls = self.query_calls = 0

    def encode_documents(self, texts):
        self.doc_calls += 1
        return self.inner.encode_documents(texts)

    def encode_queries(self, texts):
        self.query_calls += 1
        return self.inner.encode_queries(texts)


class ScriptedPolicy:
    """Creates the first line of each chunk, reads with the first question, answers with the gold answer."""

    reads_view = True

    def __init__(self):
        self.calls = 0

    def act(self, observations):
        self.calls += 1
        out = []
        for e in (o.view for o in observations):
            if e.phase == "read":
                line = e.chunk.strip().splitlines()[-1][:200]
                out.append(Reply(f"<create>{line}</create><read>{e.sample.questions[0]}</read>"))
            else:
                out.append(Reply(f"<answer>{e.sample.answers[e.question_index][0]}</answer>"))
        return out


def _engine(policy, embedder, tok):
    chunker = TokenChunker(tok, 96, 8)
    return RolloutEngine(policy, embedder, chunker, MEM, atommem_episode(AgentConfig()))


def test_engine_batches_one_generation_and_one_embedding_call_per_step(tiny, samples):
    _, tok = tiny
    policy, embedder = ScriptedPolicy(), CountingEmbedder(64)
    engine = _engine(policy, embedder, tok)
    trajectories = engine.run(samples, repeats=2)
    assert len(trajectories) == 2 * len(samples)
    assert [t.sample_id for t in trajectories] == [s.id for s in samples for _ in range(2)]  # groups contiguous
    assert policy.calls == engine.stats.steps
    assert embedder.doc_calls <= engine.stats.steps and embedder.query_calls <= engine.stats.steps
    assert engine.stats.per_step_batch[0] == 2 * len(samples)
    assert all(t.reward == 1.0 for t in trajectories)
    for t in trajectories:
        assert t.result.stats.ops["create"] == t.result.stats.store_sizes[-1] > 0


def test_lockstep_gives_the_same_results_as_one_episode_at_a_time(tiny, samples):
    _, tok = tiny
    together = _engine(ScriptedPolicy(), HashEmbedder(64), tok).run(samples)
    alone = [_engine(ScriptedPolicy(), HashEmbedder(64), tok).run([s])[0] for s in samples]
    for a, b in zip(together, alone):
        assert a.result.predictions == b.result.predictions
        assert a.result.stats.store_sizes == b.result.stats.store_sizes
        assert [t.messages for t in a.turns] == [t.messages for t in b.turns]


def test_the_engine_builds_views_only_for_policies_that_read_them(tiny, samples):
    _, tok = tiny

    class Blind:  # a model-like policy: reads the prompt only
        def __init__(self):
            self.views = []

        def act(self, observations):
            self.views += [o.view for o in observations]
            return [Reply("<answer>x</answer>") for _ in observations]

    blind = Blind()
    _engine(blind, HashEmbedder(64), tok).run(samples[:1])
    assert blind.views and all(v is None for v in blind.views)
    sighted = ScriptedPolicy()
    trajectories = _engine(sighted, HashEmbedder(64), tok).run(samples[:1])
    assert sighted.calls and trajectories[0].reward == 1.0  # it read every view it was given


@pytest.mark.slow
def test_seeded_model_rollouts_repeat(tiny, samples):
    model, tok = tiny
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=6, seed=9)

    def run():
        policy = HFPolicy(model, tok, dataclasses.replace(sampling))
        trajs = _engine(policy, HashEmbedder(64), tok).run(samples[:2], repeats=2)
        return [[t.reply.completion_ids.tolist() for t in tr.turns] for tr in trajs]

    first = run()
    assert first == run()
    assert first[0] != first[1]  # the two members of a group sample differently


def test_html_viewer_escapes_model_text(tiny, samples, tmp_path):
    from atom.eval.viewer import write_viewer

    class Hostile:
        def act(self, observations):
            return [Reply("<script>alert(1)</script><answer><b>x</b></answer>") for _ in observations]

    _, tok = tiny
    trajs = _engine(Hostile(), HashEmbedder(64), tok).run(samples[:1])
    page = write_viewer(tmp_path / "t.html", {"atommem": trajs}, samples).read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert samples[0].questions[0].split()[0] in page and "reward 0.00" in page


def test_truncated_prompts_are_flagged_by_the_policy_and_counted_per_episode(tiny, samples):
    from atom.eval.report import summarize
    from atom.policy.hf import encode_prompt

    model, tok = tiny
    full = [len(encode_prompt(tok, m)) for m in MESSAGES]
    limit = sorted(full)[1]  # one prompt above the budget, the others within it
    replies = HFPolicy(model, tok, SamplingConfig(max_new_tokens=2), max_prompt_tokens=limit).act(OBSERVATIONS)
    assert [r.truncated for r in replies] == [n > limit for n in full] and sum(n > limit for n in full) == 1
    assert [len(r.prompt_ids) for r in replies] == [min(n, limit) for n in full]

    class Cut:
        def act(self, observations):
            return [Reply("<answer>x</answer>", truncated=True) for _ in observations]

    trajs = _engine(Cut(), HashEmbedder(64), tok).run(samples[:2])
    assert [t.result.stats.truncated_prompts for t in trajs] == [len(t.turns) for t in trajs]
    assert summarize(trajs, 0.0)["truncated_prompts_per_episode"] == sum(len(t.turns) for t in trajs) / 2


def test_make_policy_builds_every_kind_and_names_what_is_missing(tiny):
    from atom.policy.factory import make_policy
    from atom.policy.openai_client import ServerConfig
    from atom.policy.openai_policy import OpenAIPolicy
    from atom.policy.oracle import OraclePolicy

    model, tok = tiny
    sampling = SamplingConfig(max_new_tokens=2)
    assert isinstance(make_policy("oracle"), OraclePolicy)
    hf = make_policy("hf", sampling, tok, 64, model=model, autocast=torch.bfloat16)
    assert isinstance(hf, HFPolicy) and hf.max_prompt_tokens == 64
    served = make_policy("served", sampling, tok, 32, server=ServerConfig(base_url="http://x/v1"), what="t.server")
    assert isinstance(served, OpenAIPolicy) and served.max_prompt_tokens == 32
    served.close()

    class Engine:
        def with_sampling(self, s):
            return ("engine at", s)

    assert make_policy("vllm", sampling, engine=Engine()) == ("engine at", sampling)
    for kind, kwargs in (("hf", {}), ("served", {}), ("vllm", {}), ("nope", {"model": model})):
        with pytest.raises(ValueError):
            make_policy(kind, sampling, tok, **kwargs)
