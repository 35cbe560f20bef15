"""The oracle teacher through the real RolloutEngine: perfect answers, valid CRUD, merges, ablations."""

from __future__ import annotations

import re

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from atom.data.chunker import TokenChunker
from atom.data.loaders import DataConfig, load_records
from atom.data.longcontext import LongContextSample, build_samples, render
from atom.data.records import Paragraph
from atom.data.synthetic import SyntheticConfig, generate
from atom.env.actions import parse_actions
from atom.env.episode import ANSWER, AgentConfig, AtomMemEpisode
from atom.env.rollout import RolloutEngine, atommem_episode
from atom.memory.embedder import HashEmbedder, MemoryConfig
from atom.memory.store import MemoryStore
from atom.policy.oracle import OraclePolicy, sample_facts

from .conftest import FIXTURE_FILES, REAL_FILES

MEM = MemoryConfig(embedder="hash", hash_dim=256)
STATUS = re.compile(r"Q\d+: (have .+|nothing yet)")


def word_tokenizer() -> PreTrainedTokenizerFast:
    """One token per whitespace-separated word (every word is [UNK]; only counts and offsets matter here)."""
    backend = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


TOK = word_tokenizer()


def run(samples, chunk_tokens=48, overlap=16, **agent):
    engine = RolloutEngine(
        OraclePolicy(), HashEmbedder(256), TokenChunker(TOK, chunk_tokens, overlap), MEM,
        atommem_episode(AgentConfig(**agent)),
    )  # fmt: skip
    return engine, engine.run(samples)


@pytest.fixture(scope="module")
def synthetic():
    records = generate(SyntheticConfig(num_records=40, hops=3, num_entities=30, distractors=4, seed=2))
    return build_samples(records, DataConfig(dataset="synthetic", num_docs=30, max_questions=5, seed=3))[:8]


def sample_of(documents: list[Paragraph], questions, answers, facts) -> LongContextSample:
    docs = tuple(documents)
    return LongContextSample(
        id="hand", questions=tuple(questions), answers=tuple(tuple(a) for a in answers),
        record_ids=tuple(f"r{i}" for i in range(len(questions))), documents=docs,
        supporting_docs=tuple(tuple(sorted({d for d, _ in f})) for f in facts),
        supporting_facts=tuple(tuple(f) for f in facts), context=render(docs),
    )  # fmt: skip


FILLER = [Paragraph(f"Filler {i}", (f"Nothing of note happened in place number {i} that year.",)) for i in range(6)]


def test_oracle_answers_everything_with_valid_actions_and_stores_every_fact(synthetic):
    _, trajs = run(synthetic)
    assert len(trajs) == 8 and sum(len(t.result.em) for t in trajs) > 8
    for traj in trajs:
        r = traj.result
        assert r.em == [1.0] * len(r.em) and r.reward == 1.0
        assert sum(r.stats.invalid.values()) == 0
        assert r.facts_stored == 1.0  # every synthetic sentence is shorter than the overlap
        assert r.facts_retrieved >= 0.8
        assert r.stats.ops["create"] >= 1 and r.stats.ops["answer"] == len(r.em)
        assert r.stats.ops["read"] >= 1  # at least the one prepared for the answer phase
    retrieved = sum(t.result.facts_retrieved for t in trajs) / len(trajs)
    assert retrieved >= 0.95


def test_replies_reason_first_and_scratchpad_changes_only_when_status_does(synthetic):
    _, trajs = run(synthetic)
    for traj in trajs:
        pad = ""
        for turn in traj.turns:
            text = turn.reply.text
            first_line = text.split("\n", 1)[0]
            assert first_line.strip() and "<" not in first_line  # a reasoning line before any action
            for action in parse_actions(text).actions:
                if action.kind == "scratchpad":
                    assert action.text != pad
                    assert all(STATUS.fullmatch(line) for line in action.text.splitlines())
                    pad = action.text


def test_document_continuing_into_the_next_chunk_is_merged_by_update():
    alden = Paragraph("Alden Voss", (
        "Alden Voss was born in Marrow Creek.",
        *[f" He liked the colour number {i} best of all the colours he knew." for i in range(4)],
        " Alden Voss works for Velora Systems.",
    ))  # fmt: skip
    creek = Paragraph("Marrow Creek", ("Marrow Creek lies in Teshavia.",))
    sample = sample_of(
        [alden, FILLER[0], creek, FILLER[1]],
        ["Where was Alden Voss born?", "Who employs Alden Voss?"],
        [["Marrow Creek"], ["Velora Systems"]],
        [[(0, 0), (2, 0)], [(0, 5)]],
    )
    engine, (traj,) = run([sample], chunk_tokens=24, overlap=4)
    chunks = engine.chunks(sample)
    first, last = alden.sentences[0].strip(), alden.sentences[5].strip()
    assert not any(first in c and last in c for c in chunks)  # the two facts are never seen together
    r = traj.result
    assert r.reward == 1.0 and sum(r.stats.invalid.values()) == 0 and r.facts_stored == 1.0
    assert r.stats.ops["update"] == 1
    update = next(a for t in traj.turns for a in parse_actions(t.reply.text).actions if a.kind == "update")
    assert update.text == f"Alden Voss: {first} {last}"
    # the entry it merged into was shown in that very prompt (the id is one the model could see)
    turn = next(t for t in traj.turns if "<update" in t.reply.text)
    assert f"Memory [id {update.id}]: Alden Voss: {first}" in turn.messages[-1]["content"]


def test_sentence_cut_by_the_chunk_end_is_stored_then_completed():
    long = (
        "Velora Systems was founded in the cold spring of the year after the great flood by Alden Voss "
        "together with two of his old school friends from Marrow Creek."
    )
    velora = Paragraph("Velora Systems", (long,))
    sample = sample_of(
        [FILLER[0], FILLER[1], velora, FILLER[2], FILLER[3]],
        ["Who founded Velora Systems?"],
        [["Alden Voss"]],
        [[(2, 0)]],
    )
    engine, (traj,) = run([sample], chunk_tokens=40, overlap=4)
    assert not any(long in c for c in engine.chunks(sample))  # longer than the overlap and cut in two
    r = traj.result
    assert r.reward == 1.0 and sum(r.stats.invalid.values()) == 0
    assert r.facts_stored == 1.0 and r.facts_retrieved == 1.0
    assert r.stats.ops["create"] == 1 and r.stats.ops["update"] == 1
    actions = [a for t in traj.turns for a in parse_actions(t.reply.text).actions]
    create = next(a for a in actions if a.kind == "create")
    assert create.text.startswith("Velora Systems: Velora Systems was founded") and long not in create.text
    assert next(a for a in actions if a.kind == "update").text == f"Velora Systems: {long}"


@pytest.mark.parametrize(
    "switches, allowed",
    [
        ({"use_storage": False}, {"scratchpad", "answer"}),
        ({"use_scratchpad": False}, {"create", "read", "update", "delete", "answer"}),
        ({"use_storage": False, "use_scratchpad": False}, {"answer"}),
        ({"allow_update": False}, {"create", "read", "delete", "scratchpad", "answer"}),
        ({"allow_update": False, "allow_delete": False}, {"create", "read", "scratchpad", "answer"}),
        ({"answer_reads": 0, "top_k": 1}, {"create", "read", "update", "delete", "scratchpad", "answer"}),
        ({"scratchpad_max_chars": 60}, {"create", "read", "update", "delete", "scratchpad", "answer"}),
    ],
)
def test_ablations_emit_only_enabled_operations(synthetic, switches, allowed):
    _, trajs = run(synthetic[:4], chunk_tokens=24, overlap=4, **switches)
    for traj in trajs:
        r = traj.result
        assert r.reward == 1.0 and sum(r.stats.invalid.values()) == 0
        assert set(r.stats.ops) <= allowed
        for turn in traj.turns:
            pad = [a.text for a in parse_actions(turn.reply.text).actions if a.kind == "scratchpad"]
            assert all(len(p) <= switches.get("scratchpad_max_chars", 2000) for p in pad)
    if switches.get("use_storage", True) and not switches.get("allow_update", True):
        assert any(t.result.stats.ops["create"] for t in trajs)


def test_without_storage_the_scratchpad_keeps_the_facts(synthetic):
    _, trajs = run(synthetic[:3], use_storage=False)
    for traj, sample in zip(trajs, synthetic[:3]):
        pad = traj.turns[-1].messages[-1]["content"]
        facts, _ = sample_facts(sample)
        assert all(f"{f.title}: " in pad and f.sentence in pad for f in facts)
        assert traj.result.facts_stored is None and traj.result.reward == 1.0


def make_episode(sample: LongContextSample, chunks: list[str], **agent) -> AtomMemEpisode:
    return AtomMemEpisode(sample, chunks, MemoryStore(HashEmbedder(256), MEM), AgentConfig(**agent))


def test_a_shown_duplicate_is_deleted():
    creek = Paragraph("Marrow Creek", ("Marrow Creek lies in Teshavia.",))
    sample = sample_of([creek], ["Where is Marrow Creek?"], [["Teshavia"]], [[(0, 0)]])
    ep = make_episode(sample, ["nothing here", "nothing either"])
    fact = "Marrow Creek: Marrow Creek lies in Teshavia."
    ep.store.create(fact)
    ep.store.create(fact)
    ep.messages()
    ep.step("<read>Marrow Creek</read>")
    ep.messages()
    reply = OraclePolicy().reply(ep.view())
    assert '<delete id="1"/>' in reply and "repeats memory [id 0]" in reply
    ep.step(reply)
    assert ep.store.ids() == [0] and ep.stats.invalid == {}


@pytest.mark.parametrize("boxed", [False, True])
def test_answer_phase_reads_for_missing_facts_then_answers(boxed):
    voss = Paragraph("Alden Voss", ("Alden Voss was born in Marrow Creek.",))
    creek = Paragraph("Marrow Creek", ("Marrow Creek lies in Teshavia.",))
    sample = sample_of(
        [voss, FILLER[0], creek],
        ["In which country was Alden Voss born?"],
        [["Teshavia", "Teshavian land"]],
        [[(0, 0), (2, 0)]],
    )
    ep = make_episode(sample, ["only chunk"], boxed_answers=boxed)
    for text in (
        "Alden Voss: Alden Voss was born in Marrow Creek.",
        "Marrow Creek: Marrow Creek lies in Teshavia.",
    ):
        ep.store.create(text)
    ep.messages()
    ep.step("<read>unrelated words</read>")  # the answer phase starts with a query that misses Marrow Creek
    assert ep.phase == ANSWER
    oracle = OraclePolicy()
    shown = {e.id for e in ep.view().shown}
    if shown != {0, 1}:
        reply = oracle.reply(ep.view())
        (read,) = parse_actions(reply).actions
        assert read.kind == "read" and read.text.startswith(sample.questions[0])
        ep.step(reply)
        ep.messages()
    reply = oracle.reply(ep.view())
    (answer,) = parse_actions(reply).actions
    assert answer.kind == "answer" and answer.text == ("\\boxed{Teshavia}" if boxed else "Teshavia")
    assert "memory [id 0]" in reply.lower() and "memory [id 1]" in reply.lower()
    ep.step(reply)
    result = ep.result()
    assert ep.done and result.reward == 1.0 and result.facts_retrieved == 1.0


@pytest.mark.parametrize("dataset", sorted(FIXTURE_FILES))
def test_oracle_is_perfect_on_each_dataset_format(dataset):
    cfg = DataConfig(dataset=dataset, path=str(FIXTURE_FILES[dataset]), num_docs=8, max_questions=2, seed=0)
    samples = build_samples(load_records(cfg), cfg)
    _, trajs = run(samples, chunk_tokens=60, overlap=20)
    for traj in trajs:
        assert traj.result.em == [1.0] * len(traj.result.em)
        assert sum(traj.result.stats.invalid.values()) == 0
        assert traj.result.facts_stored == 1.0


@pytest.mark.realdata
@pytest.mark.parametrize("dataset", sorted(REAL_FILES))
def test_oracle_is_perfect_on_the_shipped_samples(dataset):
    cfg = DataConfig(dataset=dataset, path=str(REAL_FILES[dataset]), num_docs=30, seed=0)
    samples = build_samples(load_records(cfg), cfg)[:6]
    _, trajs = run(samples, chunk_tokens=400, overlap=100)
    stored = [t.result.facts_stored for t in trajs]
    for traj in trajs:
        assert traj.result.em == [1.0] * len(traj.result.em)
        assert sum(traj.result.stats.invalid.values()) == 0
    assert sum(stored) / len(stored) >= 0.95
