"""Static baselines (full context, RAG, MemAgent overwrite memory) driven through the real RolloutEngine."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from atom.data.chunker import TokenChunker
from atom.data.loaders import DataConfig
from atom.data.longcontext import build_samples
from atom.data.synthetic import SyntheticConfig, generate
from atom.env import baselines
from atom.env.baselines import CUT_MARKER, document_text, parse_answer
from atom.env.episode import ANSWER, READ, AgentConfig
from atom.env.rollout import Reply, RolloutEngine
from atom.memory.embedder import HashEmbedder, MemoryConfig

MEM = MemoryConfig(embedder="hash", hash_dim=256)


def word_tokenizer() -> PreTrainedTokenizerFast:
    """One token per whitespace-separated word (every word is [UNK]; only counts and offsets matter here)."""
    backend = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


TOK = word_tokenizer()


@pytest.fixture(scope="module")
def samples():
    records = generate(SyntheticConfig(num_records=12, hops=2, num_entities=20, distractors=4, seed=0))
    return build_samples(records, DataConfig(dataset="synthetic", num_docs=24, max_questions=4, seed=0))


class Scripted:
    """A scripted teacher: ``reply(prompt_text, view)`` gives each reply; every prompt is kept."""

    reads_view = True

    def __init__(self, reply):
        self.reply, self.prompts = reply, []

    def act(self, observations):
        texts = [o.messages[-1]["content"] for o in observations]
        self.prompts += texts
        return [Reply(self.reply(t, o.view)) for t, o in zip(texts, observations)]


def gold_or_wrong(prompt: str, episode) -> str:
    """Answers every question of the episode's sample correctly, except the second one."""
    q = next(i for i, question in enumerate(episode.sample.questions) if f"Question: {question}" in prompt)
    return "<answer>wrong</answer>" if q == 1 else f"I know it.\n<answer>{episode.sample.answers[q][0]}</answer>"


def engine(policy, factory, chunk_tokens=64, overlap=8):
    return RolloutEngine(policy, HashEmbedder(256), TokenChunker(TOK, chunk_tokens, overlap), MEM, factory)


def test_parse_answer_prefers_the_tag_then_the_first_line():
    assert parse_answer("So... <answer> Paris </answer> <answer>Rome</answer>") == "Paris"
    assert parse_answer("\n\n  Paris, France \nbecause ...") == "Paris, France"
    assert parse_answer("<think>long\nthoughts</think>\nLyon") == "Lyon"
    assert parse_answer("<answer>Nice") == "Nice"  # an unclosed tag (cut by the token limit) keeps its text
    assert parse_answer("  \n ") is None and parse_answer("") is None


def test_full_context_one_turn_per_question_and_centre_cut_in_chars(samples):
    sample = next(s for s in samples if len(s.questions) >= 3)
    budget = 600
    policy = Scripted(gold_or_wrong)
    (traj,) = engine(policy, baselines.full_context_episode(AgentConfig(), max_context_chars=budget)).run([sample])
    assert len(traj.turns) == len(sample.questions) and all(t.phase == ANSWER for t in traj.turns)
    prompt = traj.turns[0].messages[-1]["content"]
    head = (budget - len(CUT_MARKER) + 1) // 2
    assert sample.context[:head] + CUT_MARKER + sample.context[-(budget - len(CUT_MARKER) - head) :] in prompt
    assert sample.context[head : head + 200] not in prompt  # the middle is gone
    n = len(sample.questions)
    assert traj.result.em == [1.0, 0.0] + [1.0] * (n - 2)
    assert traj.result.reward == pytest.approx((n - 1) / n)
    assert traj.result.stats.llm_calls == n and traj.result.stats.ops["answer"] == n
    assert traj.result.facts_stored is None and 0.0 <= traj.result.facts_retrieved < 1.0


def test_full_context_token_budget_and_untruncated_short_context(samples):
    sample = samples[0]
    make = baselines.full_context_episode(AgentConfig(), max_context_tokens=120, tokenizer=TOK)
    episode = make(sample, [], None)
    assert episode.truncated and len(TOK(episode.context)["input_ids"]) <= 120
    assert episode.context.startswith(sample.context[:50]) and episode.context.endswith(sample.context[-50:])
    whole = baselines.full_context_episode(AgentConfig(), max_context_tokens=10**6, tokenizer=TOK)(sample, [], None)
    assert not whole.truncated and whole.context == sample.context
    (traj,) = engine(Scripted(gold_or_wrong), baselines.full_context_episode(
        AgentConfig(), max_context_tokens=10**6, tokenizer=TOK)).run([sample])  # fmt: skip
    assert traj.result.facts_retrieved == 1.0  # every supporting sentence was shown


@pytest.mark.parametrize(
    "kwargs", [{}, {"max_context_tokens": 10, "max_context_chars": 10}, {"max_context_tokens": 10}]
)
def test_full_context_needs_exactly_one_budget(kwargs):
    with pytest.raises(ValueError, match="max_context"):
        baselines.full_context_episode(AgentConfig(), **kwargs)


def test_rag_stores_documents_and_retrieves_the_supporting_document(samples):
    cfg = AgentConfig(top_k=4)
    embedder = HashEmbedder(256, char_trigrams=True)
    eng = RolloutEngine(Scripted(gold_or_wrong), embedder, TokenChunker(TOK, 64, 8), MEM, baselines.rag_episode(cfg))
    trajs = eng.run(samples[:3], repeats=2)
    for traj, sample in zip(trajs, [s for s in samples[:3] for _ in range(2)]):
        n = len(sample.questions)
        assert len(traj.turns) == n and traj.result.stats.ops["read"] == n
        assert traj.result.stats.store_sizes == [len(sample.documents)]
        for q, turn in enumerate(traj.turns):
            prompt = turn.messages[-1]["content"]
            assert prompt.count("\n\n") >= cfg.top_k - 1  # four documents shown
            # the question names the first entity of its chain, whose paragraph holds the first hop's fact
            (first_hop,) = [
                sample.documents[d]
                for d in sample.supporting_docs[q]
                if sample.documents[d].title in sample.questions[q]
            ]
            assert document_text(first_hop) in prompt
        assert traj.result.facts_stored == 1.0 and traj.result.facts_retrieved >= 0.5
        assert traj.result.em[:2] == [1.0, 0.0][:n]


def test_rag_embeds_each_sample_once_across_a_group(samples):
    class CountingEmbedder(HashEmbedder):
        texts = 0

        def encode_documents(self, texts):  # HashEmbedder embeds queries through this too
            CountingEmbedder.texts += len(texts)
            return super().encode_documents(texts)

    eng = RolloutEngine(Scripted(gold_or_wrong), CountingEmbedder(256), TokenChunker(TOK, 64, 8), MEM,
                        baselines.rag_episode(AgentConfig()))  # fmt: skip
    eng.run(samples[:1], repeats=4)
    assert CountingEmbedder.texts == len(samples[0].documents) + len(samples[0].questions)


def test_memagent_overwrites_its_memory_every_chunk_then_answers(samples):
    sample = samples[0]
    limit = 40

    def reply(prompt: str, episode) -> str:
        if episode.phase == READ:
            return f"  memory after chunk {episode.chunk_index} " + "x" * 100
        return "The answer is\n<answer>" + episode.sample.answers[0][0] + "</answer>"

    policy = Scripted(reply)
    eng = engine(policy, baselines.memagent_episode(AgentConfig(), max_memory_chars=limit))
    (traj,) = eng.run([sample])
    chunks = eng.chunks(sample)
    assert len(chunks) >= 3
    reads = [t for t in traj.turns if t.phase == READ]
    answers = [t for t in traj.turns if t.phase == ANSWER]
    assert len(reads) == len(chunks) and len(answers) == len(sample.questions)
    assert traj.result.stats.ops["overwrite"] == len(chunks)
    assert "Your current memory:\n(empty)" in reads[0].messages[-1]["content"]
    for i, turn in enumerate(reads[1:], start=1):
        prompt = turn.messages[-1]["content"]
        expected = f"memory after chunk {i - 1} " + "x" * (limit - len(f"memory after chunk {i - 1} "))
        assert f"Your current memory:\n{expected}\n" in prompt  # only the previous reply, cut to the bound
        assert f"memory after chunk {i - 2}" not in prompt
        assert chunks[i] in prompt
    final = f"memory after chunk {len(chunks) - 1}"
    assert all(final in t.messages[-1]["content"] for t in answers)
    assert traj.result.predictions == [sample.answers[0][0]] * len(sample.questions)
    assert traj.result.em[0] == 1.0
    assert traj.result.facts_stored == 0.0 and traj.result.facts_retrieved == 0.0


def test_llm_call_cap_ends_a_baseline_episode(samples):
    sample = next(s for s in samples if len(s.questions) >= 3)
    cfg = AgentConfig(max_llm_calls=2)
    (traj,) = engine(Scripted(gold_or_wrong), baselines.rag_episode(cfg)).run([sample])
    assert len(traj.turns) == 2 and traj.result.predictions[2:] == [None] * (len(sample.questions) - 2)
    with pytest.raises(ValueError, match="max_memory_chars"):
        baselines.memagent_episode(cfg, max_memory_chars=0)


def test_every_episode_kind_implements_the_episode_protocol_and_gives_its_view(samples):
    from atom.env.episode import Episode
    from atom.env.rollout import atommem_episode
    from atom.policy.oracle import OraclePolicy

    sample = samples[0]
    factories = {
        "atommem": atommem_episode(AgentConfig()),
        "full_context": baselines.full_context_episode(AgentConfig(), max_context_chars=500),
        "rag": baselines.rag_episode(AgentConfig()),
        "memagent": baselines.memagent_episode(AgentConfig()),
    }
    for kind, factory in factories.items():
        eng = engine(Scripted(gold_or_wrong), factory)
        episode = eng.episodes([sample])[0]
        assert isinstance(episode, Episode), kind
        view = episode.view()
        assert view.kind == kind and view.sample is sample and view.phase == episode.phase
        if kind == "memagent":
            assert view.chunk == eng.chunks(sample)[0] and view.next_chunk == eng.chunks(sample)[1]
        if kind != "atommem":
            with pytest.raises(TypeError, match="AtomMem episodes only"):
                OraclePolicy().reply(view)
