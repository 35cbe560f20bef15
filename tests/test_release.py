"""agent.protocol=release: chunk-advance rule, placeholder query, positional addressing, query count, chunking, and
the oracle (both protocols) on real samples at 200 documents."""

from __future__ import annotations

import pytest

from atom.data.chunker import TokenChunker
from atom.data.loaders import DataConfig, load_records
from atom.data.longcontext import build_samples
from atom.env.episode import ANSWER, DONE, READ, AgentConfig, AtomMemEpisode
from atom.env.release import INITIAL_QUERY, NO_MEMORY, ReleaseRules, parse_release, to_release_reply
from atom.env.rollout import RolloutEngine, atommem_episode
from atom.eval.report import summarize
from atom.memory.embedder import HashEmbedder, MemoryConfig
from atom.memory.store import Entry, MemoryStore
from atom.policy.oracle import OraclePolicy

from .conftest import REAL_FILES
from .test_episode import make_sample
from .test_oracle import TOK

MEM = MemoryConfig(embedder="hash", hash_dim=256)
RELEASE = dict(protocol="release", max_llm_calls=41, scratchpad_max_chars=0)


def episode(chunks=("chunk zero", "chunk one", "chunk two"), **agent) -> AtomMemEpisode:
    cfg = AgentConfig(**{**RELEASE, **agent})
    sample = make_sample(("Where is the tower?", "Where is the bridge?"), (("Paris",), ("Rome",)))
    return AtomMemEpisode(sample, list(chunks), MemoryStore(HashEmbedder(64), MEM), cfg, ReleaseRules())


def user(ep: AtomMemEpisode) -> str:
    return ep.messages()[1]["content"]


def test_chunk_advances_only_on_add_or_modify() -> None:
    ep = episode()
    assert "chunk zero" in user(ep)
    ep.step("<update_query>where is the tower</update_query>")  # query only: same chunk, new query
    assert ep.chunk_index == 0 and ep.query == "where is the tower"
    assert "chunk zero" in user(ep) and "where is the tower" in user(ep)
    ep.step("I think about it but write no tag.")
    ep.step("<update_memory>notes</update_memory>")
    ep.step("<delete_memory>Memory 1</delete_memory>")  # nothing shown to delete: invalid, and no advance
    assert ep.chunk_index == 0 and ep.scratchpad == "notes" and ep.stats.invalid["delete"] == 1
    ep.step("<add_memory>The tower is in Paris.</add_memory>")
    assert ep.chunk_index == 1 and "chunk one" in user(ep)
    ep.step("<modify_memory>Memory 1: The tower is in Paris, France.</modify_memory>")
    assert ep.chunk_index == 2
    assert [e.text for e in ep.store.entries()] == ["The tower is in Paris, France."]
    assert ep.stats.llm_calls == 6 and ep.stats.ops["create"] == 1 and ep.stats.ops["update"] == 1


def test_atom_protocol_consumes_a_chunk_every_turn() -> None:
    cfg = AgentConfig()
    ep = AtomMemEpisode(make_sample(), ["a", "b", "c"], MemoryStore(HashEmbedder(64), MEM), cfg)
    ep.step("<read>where</read>")
    ep.step("no tags")
    assert ep.chunk_index == 2


def test_placeholder_query_shows_memories_as_soon_as_the_store_has_any() -> None:
    ep = episode()
    assert ep.query == INITIAL_QUERY and NO_MEMORY in user(ep)
    ep.step("<add_memory>The tower is in Paris.</add_memory><add_memory>The bridge is in Rome.</add_memory>")
    text = user(ep)  # no query was ever written, yet the top-k of the placeholder query are shown
    assert "Memory 1: " in text and "Memory 2: " in text and ep.query == INITIAL_QUERY
    # Under atom's protocol nothing is shown until a Read.
    atom = AtomMemEpisode(make_sample(), ["a", "b"], MemoryStore(HashEmbedder(64), MEM), AgentConfig())
    atom.step("<create>The tower is in Paris.</create>")
    assert "Memory [id" not in atom.messages()[1]["content"]


def test_positions_address_the_shown_list_and_a_malformed_modify_drops_the_rest() -> None:
    shown = [Entry(7, "seven"), Entry(3, "three")]
    parsed = parse_release(
        "<delete_memory>Memory 2</delete_memory><modify_memory>Memory 1: new</modify_memory>"
        "<modify_memory>Memory 9: far</modify_memory><think><add_memory>ignored</add_memory></think>",
        shown,
        100,
    )
    assert [(a.kind, a.id, a.text) for a in parsed.actions] == [("delete", 3, ""), ("update", 7, "new")]
    assert parsed.invalid["update"] == 1 and parsed.advance
    dropped = parse_release("<modify_memory>oops</modify_memory><add_memory>x</add_memory>", shown, 100)
    assert dropped.actions == [] and dropped.invalid["update"] == 1 and not dropped.advance
    emptied = parse_release("<modify_memory>Memory 2:</modify_memory>", shown, 100)
    assert [(a.kind, a.id) for a in emptied.actions] == [("delete", 3)]


def test_answer_phase_query_count_and_final_answer() -> None:
    ep = episode(chunks=("only chunk",))
    ep.step("<add_memory>The tower is in Paris.</add_memory>")
    assert ep.phase == ANSWER and ep.question_index == 0
    for i in range(3):
        ep.step(f"<update_query>tower {i}</update_query>")
    assert ep.question_index == 0 and "**3**" in user(ep)
    ep.step("<update_query>one too many</update_query>")  # the 4th query skips the question
    assert ep.question_index == 1 and ep.predictions[0] is None and ep.query == "tower 2"
    ep.step("<final_answer>\\boxed{Rome}</final_answer>")
    assert ep.predictions[1] == "\\boxed{Rome}" and ep.phase == DONE
    result = ep.result()
    assert result.release_em == [0.0, 1.0] and result.em == [0.0, 1.0] and result.release_score == 0.5


def test_oracle_replies_translate_ids_into_positions() -> None:
    shown = [Entry(7, "Paris: The tower is in Paris."), Entry(3, "Rome: x")]
    atom = 'Memory [id 3] repeats memory [id 7], so I delete it.\n<delete id="3"/>\n<update id="7">Paris: more</update>'
    reply = to_release_reply(atom, shown)
    assert reply.startswith("Memory 2 repeats Memory 1")
    assert "<delete_memory>Memory 2</delete_memory>" in reply
    assert "<modify_memory>Memory 1: Paris: more</modify_memory>" in reply
    with pytest.raises(ValueError, match="not among the memories shown"):
        to_release_reply('<delete id="5"/>', shown)


def test_release_windows_and_centre_truncation() -> None:
    chunker = TokenChunker(TOK, 4000, 0, margin=100, max_tokens=160_000)
    assert chunker.windows(10_000) == [(0, 0, 4100), (1, 3900, 8100), (2, 7900, 10_000)]
    assert chunker.kept_spans(200_000) == [(0, 80_000), (120_000, 200_000)]
    assert len(chunker.windows(200_000)) == 40
    small = TokenChunker(TOK, 4, 0, margin=1, max_tokens=8)
    chunks = list(small.chunks(" ".join(f"w{i}" for i in range(12))))  # keeps w0-w3 and w8-w11
    assert [c.text.split() for c in chunks] == [["w0", "w1", "w2", "w3", "w8"], ["w3", "w8", "w9", "w10", "w11"]]


@pytest.mark.realdata
@pytest.mark.parametrize("protocol", ["atom", "release"])
@pytest.mark.parametrize("dataset", sorted(REAL_FILES))
def test_oracle_em_is_100_under_both_protocols_at_200_documents(dataset: str, protocol: str) -> None:
    path = REAL_FILES[dataset]
    cfg = DataConfig(dataset=dataset, path=str(path), num_docs=200, seed=0)
    samples = build_samples(load_records(cfg), cfg)[:8]
    if protocol == "release":
        agent, chunker = AgentConfig(**RELEASE, memory_max_tokens=4096), TokenChunker(TOK, 4000, 0, 0, 100, 160_000)
    else:
        agent, chunker = AgentConfig(), TokenChunker(TOK, 4096, 100, 40)
    engine = RolloutEngine(OraclePolicy(), HashEmbedder(256), chunker, MEM, atommem_episode(agent, TOK))
    trajs = engine.run(samples)
    assert sum(len(t.result.em) for t in trajs) >= 3
    summary = summarize(trajs, 0.0)  # operations per LLM call: the release's "action rate"
    calls = sum(t.result.stats.llm_calls for t in trajs)
    assert summary["ops_per_turn"]["create"] == sum(t.result.stats.ops["create"] for t in trajs) / calls
    assert summary["em"] == 100.0
    for t in trajs:
        r = t.result
        assert r.em == [1.0] * len(r.em), (t.sample_id, r.predictions)  # SQuAD EM
        if agent.boxed:  # the release scorer needs a box: atom's protocol answers unboxed by default
            assert r.release_em == [1.0] * len(r.em) and r.release_score == 1.0, (t.sample_id, r.predictions)
        assert sum(r.stats.invalid.values()) == 0 and r.stats.llm_calls <= agent.max_llm_calls
        if protocol == "release":
            assert r.stats.ops["scratchpad"] > 0  # no scratchpad cap, and the oracle still keeps its status there
            assert all(turn.phase != READ or "<add_memory>" in turn.reply.text or "<modify_memory>" in
                       turn.reply.text for turn in t.turns)  # fmt: skip


def test_release_ablation_switches() -> None:
    stm = episode(hide_scratchpad=True)
    stm.step("<update_memory>secret plan</update_memory>")
    assert stm.scratchpad == "secret plan" and "secret plan" not in user(stm)  # written, shown empty
    ltm = episode(hide_memories=True)
    ltm.step("<add_memory>The tower is in Paris.</add_memory>")
    assert len(ltm.store) == 1 and NO_MEMORY in user(ltm) and "Memory 1:" not in user(ltm)
    ltm.step("<delete_memory>Memory 1</delete_memory>")  # nothing shown, nothing addressed
    assert len(ltm.store) == 1 and ltm.stats.invalid["delete"] == 1
    sample = make_sample()
    chunks = [sample.context, "nothing"]
    cfg = AgentConfig(**RELEASE, store_documents=True)
    alladd = AtomMemEpisode(sample, chunks, MemoryStore(HashEmbedder(64), MEM), cfg, ReleaseRules())
    alladd.step("<add_memory>A note.</add_memory>")
    assert sorted(e.text for e in alladd.store.entries()) == [
        "A note.", "Alden Voss\nAlden Voss was born in Marrow Creek."
    ]  # fmt: skip
    assert alladd.stats.ops["document"] == 1
