"""Episode semantics: chunk advance, read latency, answer phase, caps, ablation switches, counters, reward."""

from __future__ import annotations

import pytest

from atom.data.longcontext import LongContextSample
from atom.data.records import Paragraph
from atom.env.episode import ANSWER, READ, AgentConfig, AtomMemEpisode
from atom.memory.embedder import HashEmbedder, MemoryConfig
from atom.memory.store import MemoryStore


def make_sample(questions=("Where was Alden Voss born?",), answers=(("Marrow Creek",),)) -> LongContextSample:
    docs = (
        Paragraph("Alden Voss", ("Alden Voss was born in Marrow Creek.",)),
        Paragraph("Marrow Creek", ("Marrow Creek lies in Teshavia.",)),
    )
    return LongContextSample(
        id="s0",
        questions=tuple(questions),
        answers=tuple(tuple(a) for a in answers),
        record_ids=tuple(f"r{i}" for i in range(len(questions))),
        documents=docs,
        supporting_docs=tuple((0,) for _ in questions),
        supporting_facts=tuple(((0, 0),) for _ in questions),
        context="Document 1:\nAlden Voss\nAlden Voss was born in Marrow Creek.",
    )


def make_episode(n_chunks=3, **agent) -> AtomMemEpisode:
    store = MemoryStore(HashEmbedder(64), MemoryConfig(embedder="hash", hash_dim=64))
    chunks = [f"chunk number {i}: Alden Voss was born in Marrow Creek." for i in range(n_chunks)]
    return AtomMemEpisode(make_sample(), chunks, store, AgentConfig(**agent))


def user(ep: AtomMemEpisode) -> str:
    return ep.messages()[-1]["content"]


def test_every_read_turn_consumes_one_chunk_even_without_actions():
    ep = make_episode(3)
    for i in range(3):
        assert ep.phase == READ
        assert f"chunk number {i}" in user(ep)
        ep.step("I have nothing to do here.")
    assert ep.phase == ANSWER
    assert ep.stats.llm_calls == 3
    assert ep.stats.store_sizes == [0, 0, 0]


def test_read_results_are_visible_from_the_next_turn_only():
    ep = make_episode(3)
    ep.messages()
    ep.step("<create>Alden Voss was born in Marrow Creek.</create><read>where was Alden Voss born</read>")
    prompt = user(ep)
    assert "Current query: where was Alden Voss born" in prompt
    assert "Memory [id 0]: Alden Voss was born in Marrow Creek." in prompt
    # a new query issued now is not shown in this turn's prompt, but in the next one
    ep.step("<read>Teshavia</read>")
    assert "Current query: Teshavia" in user(ep)


def test_query_is_rerun_every_turn_and_sees_new_entries():
    ep = make_episode(4)
    ep.messages()
    ep.step("<read>Marrow Creek</read>")
    assert "No memory matches" in user(ep)
    ep.step("<create>Marrow Creek lies in Teshavia.</create>")
    assert "Memory [id 0]: Marrow Creek lies in Teshavia." in user(ep)


def test_update_and_delete_address_stable_ids_and_unknown_ids_are_counted():
    ep = make_episode(4)
    ep.messages()
    ep.step("<create>fact A</create><create>fact B</create>")
    ep.messages()
    ep.step('<update id="1">fact B revised</update><delete id="0"/><delete id="0"/><update id="9">x</update>')
    assert ep.store.ids() == [1]
    assert ep.store.get(1) == "fact B revised"
    assert ep.stats.ops["create"] == 2 and ep.stats.ops["update"] == 1 and ep.stats.ops["delete"] == 1
    assert ep.stats.invalid["delete"] == 1 and ep.stats.invalid["update"] == 1
    ep.messages()
    ep.step("<create>fact C</create>")
    assert ep.store.ids() == [1, 2]  # ids are never reused


def test_answer_phase_reads_then_answers_each_question_in_turn():
    sample = make_sample(("Q one?", "Q two?"), (("Marrow Creek",), ("Teshavia",)))
    store = MemoryStore(HashEmbedder(64), MemoryConfig(embedder="hash", hash_dim=64))
    ep = AtomMemEpisode(sample, ["only chunk"], store, AgentConfig(answer_reads=2))
    ep.messages()
    ep.step("<create>Marrow Creek lies in Teshavia.</create>")
    assert ep.phase == ANSWER and "Q one?" in user(ep) and "2 searches left" in user(ep)
    ep.step("<read>Marrow Creek</read>")
    assert "Memory [id 0]" in user(ep) and "1 searches left" in user(ep)
    ep.step("<answer>marrow creek</answer><answer>wrong</answer>")
    assert "Q two?" in user(ep)
    ep.step("<answer>Paris</answer>")
    assert ep.done
    result = ep.result()
    assert result.predictions == ["marrow creek", "Paris"]
    assert result.em == [1.0, 0.0] and result.reward == 0.5


@pytest.mark.parametrize(
    ("reward", "answer", "expected"),
    [("squad", "Marrow Creek town", 0.0), ("f1", "Marrow Creek town", 0.8), ("release", "Marrow Creek town", 0.0),
     ("release", "marrow creek", 1.0)],
)  # fmt: skip
def test_agent_reward_picks_the_scorer_of_the_episode_reward(reward, answer, expected):
    ep = make_episode(1, answer_reads=0, reward=reward, boxed_answers=True)
    ep.messages()
    ep.step("")
    ep.step(f"<answer>\\boxed{{{answer}}}</answer>")  # "Marrow Creek town": F1 = 2 * (2/3 * 1) / (2/3 + 1) = 0.8
    result = ep.result()
    assert result.em == [float(answer == "marrow creek")] and result.boxed
    assert result.f1 == [pytest.approx(1.0 if answer == "marrow creek" else 0.8)]
    assert result.reward == pytest.approx(expected)


def test_the_release_reward_without_boxed_answers_is_refused_with_the_fix():
    # the release scorer reads \boxed{} only: an agent not asked for boxes would get reward 0 on every episode
    with pytest.raises(ValueError, match=r"agent.boxed_answers=true or agent.protocol=release"):
        AgentConfig(reward="release")
    assert AgentConfig(reward="release", protocol="release").boxed


def test_tables_print_no_release_em_for_answers_that_were_not_asked_boxed():
    from atom.env.rollout import Trajectory
    from atom.eval.report import markdown_table, summarize

    def row(**agent):
        ep = make_episode(1, answer_reads=0, **agent)
        ep.messages()
        ep.step("")
        ep.step("<answer>\\boxed{Marrow Creek}</answer>" if agent else "<answer>Marrow Creek</answer>")
        return summarize([Trajectory(sample_id="s", turns=[], result=ep.result())], 0.0)

    plain, boxed = row(), row(boxed_answers=True)
    assert plain["em"] == boxed["em"] == 100.0
    assert not plain["release_applies"] and boxed["release_applies"] and boxed["release_em"] == 100.0
    lines = markdown_table({"plain": plain, "boxed": boxed}).splitlines()
    assert lines[2].split("|")[4].strip() == "-" and lines[3].split("|")[4].strip() == "100.0"


def test_question_without_an_answer_is_skipped_after_its_reads():
    ep = make_episode(1, answer_reads=2)
    ep.messages()
    ep.step("")
    calls_before = ep.stats.llm_calls
    for _ in range(3):  # two reads (or empty replies) allowed, then the demanded answer is missing
        assert not ep.done
        ep.messages()
        ep.step("hmm")
    assert ep.done and ep.stats.llm_calls - calls_before == 3
    assert ep.result().predictions == [None] and ep.result().reward == 0.0


def test_last_answer_turn_demands_an_answer():
    ep = make_episode(1, answer_reads=1)
    ep.messages()
    ep.step("")
    ep.step("<read>x</read>")
    assert "You must answer now" in user(ep)
    ep.step("<read>again</read>")  # a read with no reads left is invalid and closes the question
    assert ep.done and ep.stats.invalid["read"] == 1


def test_llm_call_cap_ends_the_episode():
    ep = make_episode(10, max_llm_calls=4)
    for _ in range(4):
        ep.messages()
        ep.step("<create>x</create>")
    assert ep.done and ep.stats.llm_calls == 4 and ep.chunk_index == 4
    assert ep.result().reward == 0.0
    with pytest.raises(RuntimeError):
        ep.messages()


def test_answer_in_read_phase_and_memory_ops_in_answer_phase_are_invalid():
    ep = make_episode(1)
    ep.messages()
    ep.step("<answer>too early</answer>")
    assert ep.stats.invalid["answer"] == 1 and ep.phase == ANSWER
    ep.step("<create>late</create><answer>Marrow Creek</answer>")
    assert ep.stats.invalid["create"] == 1 and len(ep.store) == 0
    assert ep.result().reward == 1.0


@pytest.mark.parametrize(
    "switch, reply, kind",
    [
        ({"allow_update": False}, '<update id="0">new</update>', "update"),
        ({"allow_delete": False}, '<delete id="0"/>', "delete"),
        ({"use_scratchpad": False}, "<scratchpad>notes</scratchpad>", "scratchpad"),
        ({"use_storage": False}, "<create>another</create>", "create"),
    ],
)
def test_ablation_switches_disable_exactly_their_operation(switch, reply, kind):
    ep = make_episode(3, **switch)
    if switch.get("use_storage", True):
        ep.store.create("seed entry")
    ep.messages()
    before = (ep.store.ids(), [ep.store.get(i) for i in ep.store.ids()], ep.scratchpad)
    ep.step(reply)
    assert ep.stats.invalid[kind] == 1 and ep.stats.ops[kind] == 0
    assert (ep.store.ids(), [ep.store.get(i) for i in ep.store.ids()], ep.scratchpad) == before
    system, prompt = ep.messages()[0]["content"], user(ep)
    assert f"<{kind}" not in system
    if kind == "scratchpad":
        assert "Scratchpad:" not in prompt
    if kind == "create":
        assert "Current query" not in prompt


def test_scratchpad_is_always_shown_and_overwritten():
    ep = make_episode(3, scratchpad_max_chars=10)
    ep.messages()
    ep.step("<scratchpad>Q1: need birthplace of Alden</scratchpad>")
    assert "Scratchpad:\nQ1: need b\n" in user(ep)
    ep.step("<scratchpad></scratchpad>")
    assert "Scratchpad:\n(empty)" in user(ep)


def test_fact_coverage_counts_stored_and_retrieved_support():
    ep = make_episode(1)
    ep.messages()
    ep.step("<create>Alden Voss: Alden Voss was born in Marrow Creek.</create><read>Alden Voss born</read>")
    ep.messages()
    ep.step("<answer>Marrow Creek</answer>")
    result = ep.result()
    assert result.facts_stored == 1.0 and result.facts_retrieved == 1.0 and result.reward == 1.0


def test_the_view_is_a_frozen_copy_that_agrees_with_the_prompt_whatever_the_call_order():
    import dataclasses

    ep = make_episode(3)
    ep.step("<create>Alden Voss was born in Marrow Creek.</create><read>Alden Voss</read>")
    view = ep.view()  # before messages(): the turn's memories are read once, whichever comes first
    assert [e.id for e in view.shown] == [0] and view.query == "Alden Voss" and view.chunk_index == 1
    assert "Memory [id 0]: Alden Voss was born in Marrow Creek." in user(ep)
    assert view.chunk == "chunk number 1: Alden Voss was born in Marrow Creek." and view.next_chunk.startswith(
        "chunk number 2"
    )
    assert [e.text for e in view.stored] == ["Alden Voss was born in Marrow Creek."]
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.query = "x"
    ep.step('<delete id="0"/>')
    assert view.stored and not ep.view().stored  # a copy: later turns do not change it
    assert ep.view().last_chunk and ep.view().next_chunk is None


@pytest.mark.parametrize(
    "ops",
    [
        ("create", "read", "update", "delete", "scratchpad", "answer"),
        ("create", "read", "delete", "scratchpad", "answer"),
        ("scratchpad", "answer"),
        ("create", "read", "update", "answer"),
    ],
)
def test_system_prompt_shows_each_enabled_op_as_a_placeholder_none_copyable(ops) -> None:
    from atom.env.actions import parse_actions
    from atom.env.prompts import system_prompt

    text = system_prompt(ops)
    parsed = parse_actions(text)
    assert parsed.actions == []  # copying the grammar executes nothing (after GRPO the policy copied examples)
    assert set(parsed.invalid) == set(ops)  # every enabled op is shown, placeholders only
    assert ("<delete" in text) == ("delete" in ops) and "Strategy:" in text and "exact short answer" in text


@pytest.mark.parametrize("boxed", [False, True])
def test_answer_prompts_hold_no_copyable_action(boxed) -> None:
    from atom.env.actions import parse_actions
    from atom.env.prompts import answer_prompt, context_answer_prompt
    from atom.env.rewards import extract_boxed

    for text in (
        answer_prompt("Who?", "", "q", [], reads_left=2, max_memory_chars=100, boxed=boxed),
        context_answer_prompt("Who?", "Context", "Alden was born in Keldon.", boxed=boxed),
    ):
        actions = parse_actions(text).actions
        if not boxed:
            assert actions == []
        else:  # "\\boxed{...}" parses as an answer, but its box holds no letter or digit: it scores 0, stores nothing
            assert [a.kind for a in actions] == ["answer"] and not any(
                c.isalnum() for c in extract_boxed(actions[0].text)
            )
