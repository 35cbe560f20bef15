"""The trajectory viewer: per-turn effects recorded by the episode, safe rendering of hostile text, gold facts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from atom.data.chunker import TokenChunker
from atom.data.loaders import DataConfig
from atom.data.longcontext import build_samples
from atom.data.synthetic import SyntheticConfig, generate
from atom.env.episode import AgentConfig
from atom.env.rollout import Reply, RolloutEngine, atommem_episode
from atom.env.trace import CREATED, DELETED, INVALID, UPDATED
from atom.eval.safe_html import action_spans, escape
from atom.eval.viewer import write_viewer
from atom.memory.embedder import HashEmbedder, MemoryConfig
from atom.policy.models import ModelConfig, load_tokenizer
from atom.policy.oracle import OraclePolicy

MEM = MemoryConfig(embedder="hash", hash_dim=64)
# A reply written to break a page: markup, a bidi override, NUL and other hidden code points, a lone surrogate.
HOSTILE = "<script>alert('x')</script>\u202eevil\u202c \x00 \x1b[31m \u2066iso\u2069 \u200b \ud800 </textarea>"


class ScriptedPolicy:
    """Replies from a fixed script by turn number (read phase) and answers "unknown" (answer phase)."""

    reads_view = True

    def __init__(self, script: list[str]):
        self.script = script

    def act(self, observations):
        out = []
        for o in observations:
            if o.view.phase == "answer":
                out.append(Reply("<answer>unknown</answer>"))
            else:
                out.append(Reply(self.script[min(o.view.chunk_index, len(self.script) - 1)]))
        return out


SCRIPT = [
    f"first <create>fact one</create><create>{HOSTILE}</create><read>who</read>"
    '<update id="99">nope</update><scratchpad>plan A</scratchpad><bogus/>',
    '<update id="0">fact one, revised</update><delete id="1"/><create>unclosed',
    "nothing to do",
]


def rollout():
    """Two methods over a few synthetic samples: a scripted hostile policy and the oracle (stores gold facts)."""
    tok = load_tokenizer(ModelConfig(name_or_path="tiny"))
    records = generate(SyntheticConfig(num_records=8, hops=2, num_entities=20, distractors=2, seed=1))
    samples = build_samples(records, DataConfig(num_docs=6, max_questions=2, seed=0))[:3]
    chunker = TokenChunker(tok, 96, 8)
    embedder = HashEmbedder(64)
    out = {}
    for method, policy in (("scripted", ScriptedPolicy(SCRIPT)), ("oracle", OraclePolicy())):
        engine = RolloutEngine(policy, embedder, chunker, MEM, atommem_episode(AgentConfig(answer_reads=1)))
        out[method] = engine.run(samples)
    return out, samples, lambda s: [c.text for c in chunker.chunks(s.context)]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    trajectories, samples, chunks_of = rollout()
    path = write_viewer(tmp_path_factory.mktemp("viewer") / "t.html", trajectories, samples, chunks_of=chunks_of)
    return path, trajectories


def make_page(directory: Path) -> Path:
    """A viewer page for the browser test."""
    trajectories, samples, chunks_of = rollout()
    return write_viewer(directory / "trajectories.html", trajectories, samples, chunks_of=chunks_of)


def test_turns_record_effects_with_old_text_and_reasons(page):
    _, trajectories = page
    turns = trajectories["scripted"][0].turns
    first, second = turns[0].trace, turns[1].trace
    assert [(e.status, e.id) for e in first.effects if e.status == CREATED] == [(CREATED, 0), (CREATED, 1)]
    invalid = {(e.kind, e.reason.split()[0]) for e in first.effects if e.status == INVALID}
    assert ("update", "id") in invalid and ("unknown", "malformed") in invalid  # id 99 is not live; <bogus/>
    assert [e.id for e in first.store] == [0, 1] and first.scratchpad == "plan A" and first.query == "who"
    upd = next(e for e in second.effects if e.status == UPDATED)
    assert (upd.id, upd.old_text, upd.text) == (0, "fact one", "fact one, revised")
    dele = next(e for e in second.effects if e.status == DELETED)
    # the stored copy has the lone surrogate replaced (the store holds valid UTF-8 only); the reply keeps it
    assert dele.id == 1 and dele.old_text == HOSTILE.strip().replace("\ud800", "\ufffd")
    assert [e.text for e in second.store] == ["fact one, revised"]
    assert any(e.status == INVALID and e.kind == "create" for e in second.effects)  # the unclosed create
    assert second.shown and second.shown[0].id in (0, 1)  # the read set on turn 1 shows its results on turn 2
    assert turns[-1].trace.phase == "answer" and turns[-1].trace.question_index is not None


def test_escape_makes_markup_and_hidden_code_points_inert():
    out = escape(HOSTILE)
    assert "<script" not in out and "</textarea" not in out and "&lt;script&gt;" in out
    for cp in ("\u202e", "\u202c", "\x00", "\x1b", "\u2066", "\u2069", "\u200b", "\ud800"):
        assert cp not in out and f"U+{ord(cp):04X}" in out
    assert escape("a\nb\tc") == "a\nb\tc"
    out.encode("utf-8")  # no lone surrogate left


def test_action_spans_cover_tags_by_kind():
    reply = 'x <create>a</create> <delete id="3"/> <read>q'
    spans = action_spans(reply)
    assert [(reply[a:b], c) for a, b, c in spans] == [
        ("<create>a</create>", "act create"), ('<delete id="3"/>', "act delete"), ("<read>", "act bad"),
    ]  # fmt: skip


def test_page_is_self_contained_and_escaped(page):
    path, trajectories = page
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", text)  # nothing from the network
    assert text.count("<script>") == 1  # only the viewer's own script
    for cp in ("\u202e", "\x00", "\u2066", "\u200b"):
        assert cp not in text
    assert "U+202E" in text and "U+0000" in text
    assert '<span class="act create">' in text and "<del>fact one</del>" in text
    assert "id 99 is not a live store entry" in text
    n = sum(len(t) for t in trajectories.values())
    assert text.count('class="episode"') == n and text.count("data-ep=") == n
    # the oracle copies gold sentences: they are marked in the chunks and in the store
    assert '<mark class="gold">' in text and "gold fact</span>" in text
    assert "gold supporting facts: where they went" in text
