"""The episode contract: what every episode kind (the AtomMem agent and each baseline) offers the rollout engine.

An episode is one sample played turn by turn. Each LLM call is a *turn*: ``messages()`` builds the prompt,
the policy replies, ``observe(reply)`` parses it and returns the texts that need embeddings, and
``commit(vectors)`` applies it and advances. The split lets the engine embed the texts of every episode of a
step in one batched call. ``view()`` is a frozen copy of the state behind the current prompt, which is all a
scripted teacher (the oracle) reads; no policy ever holds an episode.

The pieces every kind shares are written once here: ``AgentConfig``, the per-episode counters, the result and
its scoring (``episode_result``), and the gold-fact coverage (``support_sentences`` / ``share_covered``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar, runtime_checkable

import numpy as np

from atom.agent.prompts import Messages
from atom.agent.rewards import normalize_answer, score_questions
from atom.data.longcontext import LongContextSample
from atom.memory.store import Entry

READ, ANSWER, DONE = "read", "answer", "done"


@dataclass
class AgentConfig:
    top_k: int = 6  # memories shown per read query
    answer_reads: int = 3  # reads allowed per question in the answer phase before an answer is demanded
    max_llm_calls: int = 128  # hard cap on LLM calls per episode (read + answer phase)
    use_storage: bool = True  # the vector store (Create/Read/Update/Delete); off = scratchpad-only agent
    use_scratchpad: bool = True  # the always-visible scratchpad; off = store-only agent
    allow_update: bool = True  # Update on the store (ablation "no Update" removes only this)
    allow_delete: bool = True  # Delete on the store (ablation "no Delete")
    scratchpad_max_chars: int = 2000  # the scratchpad is cut to this length
    action_max_chars: int = 2000  # bodies of actions are cut to this length
    memory_max_chars: int = 1000  # each retrieved memory is shown cut to this length
    boxed_answers: bool = False  # the paper's stricter match: answers must be \boxed{...}

    def __post_init__(self) -> None:
        for name in (
            "top_k",
            "max_llm_calls",
            "scratchpad_max_chars",
            "action_max_chars",
            "memory_max_chars",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"agent.{name} must be > 0, got {getattr(self, name)}")
        if self.answer_reads < 0:
            raise ValueError(f"agent.answer_reads must be >= 0, got {self.answer_reads}")

    @property
    def read_phase_ops(self) -> tuple[str, ...]:
        ops = []
        if self.use_storage:
            ops += ["create", "read"] + ["update"] * self.allow_update + ["delete"] * self.allow_delete
        if self.use_scratchpad:
            ops.append("scratchpad")
        return tuple(ops)

    @property
    def prompt_ops(self) -> tuple[str, ...]:
        return self.read_phase_ops + ("answer",)


@dataclass
class EpisodeStats:
    ops: Counter = field(default_factory=Counter)  # executed actions by kind
    invalid: Counter = field(default_factory=Counter)  # ignored actions by kind (+ "unknown")
    store_sizes: list[int] = field(default_factory=list)  # live store entries after each read-phase turn
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated_prompts: int = 0  # prompts the policy centre-cut to its prompt budget


@dataclass
class EpisodeResult:
    sample_id: str
    predictions: list[str | None]  # one per question; None = never answered
    em: list[float]
    f1: list[float]
    reward: float  # mean EM over the questions, in [0, 1]
    stats: EpisodeStats
    facts_stored: float | None  # share of gold supporting sentences held by the store at the end of reading
    facts_retrieved: float | None  # share shown among the memories when each question was answered


@dataclass
class EmbedRequest:
    text: str
    query: bool  # True: embed as a query (instruction prefix); False: as a document


@dataclass(frozen=True)
class EpisodeView:
    """The state behind the current prompt, as a scripted teacher may read it: a frozen copy, taken by ``view()``.

    Besides what the prompt shows, it declares the teacher's privileges: the sample (gold answers and supporting
    facts), every live store entry and the next chunk. Fields an episode kind does not have keep their defaults.
    """

    sample: LongContextSample  # questions, gold answers and supporting facts (a teacher's privilege)
    cfg: AgentConfig  # the episode's rules and ablation switches
    kind: str  # the episode kind: "atommem", "full_context", "rag" or "memagent"
    phase: str  # READ or ANSWER
    chunk_index: int = 0  # read phase: the chunk this turn shows (0-based)
    num_chunks: int = 0  # chunks in the whole stream (0 for kinds without a read phase)
    chunk: str = ""  # read phase: the text of this turn's chunk
    next_chunk: str | None = None  # read phase: the chunk after it, None at the last (a teacher's privilege)
    question_index: int = 0  # answer phase: the question this turn asks
    reads_left: int = 0  # answer phase: reads the question may still spend before an answer is demanded
    scratchpad: str = ""  # the scratchpad as the prompt shows it
    query: str = ""  # the persistent read query ("" before the first read)
    shown: tuple[Entry, ...] = ()  # the memories the prompt shows (the query's results), best first
    stored: tuple[Entry, ...] = ()  # every live store entry, ascending id (a teacher's privilege)

    @property
    def last_chunk(self) -> bool:
        return self.chunk_index == self.num_chunks - 1


@runtime_checkable
class Episode(Protocol):
    """One sample played turn by turn; the rollout engine drives any kind through these members alone."""

    sample: LongContextSample
    stats: EpisodeStats
    phase: str  # READ, ANSWER or DONE (a Turn records it)

    @property
    def done(self) -> bool: ...

    def messages(self) -> Messages:
        """The prompt of the next LLM call."""
        ...

    def view(self) -> EpisodeView:
        """A frozen copy of the state behind ``messages()`` (same turn, whichever is called first)."""
        ...

    def observe(self, reply: str) -> list[EmbedRequest]:
        """Take the policy's reply; return the texts to embed, in the order ``commit`` expects their vectors."""
        ...

    def commit(self, vectors: list[np.ndarray] | None = None) -> None:
        """Apply the observed reply, then advance to the next turn (or DONE)."""
        ...

    def step(self, reply: str) -> None:
        """``observe`` + ``commit`` with the episode's own embedder (one episode at a time)."""
        ...

    def result(self) -> EpisodeResult: ...


def episode_result(
    sample: LongContextSample,
    predictions: Sequence[str | None],
    stats: EpisodeStats,
    boxed: bool,
    coverage: tuple[float | None, float | None],
) -> EpisodeResult:
    """Score the predictions (EM, F1, reward) into the result every episode kind returns."""
    scores = score_questions(predictions, sample.answers, boxed=boxed)
    return EpisodeResult(
        sample_id=sample.id, predictions=list(predictions), em=scores.em, f1=scores.f1, reward=scores.reward,
        stats=stats, facts_stored=coverage[0], facts_retrieved=coverage[1],
    )  # fmt: skip


def support_sentences(sample: LongContextSample) -> list[list[str]]:
    """Normalized gold supporting sentences, per question."""
    return [[normalize_answer(sample.documents[d].sentences[s]) for d, s in per_q] for per_q in sample.supporting_facts]


def share_covered(facts: list[list[str]], texts: Sequence[Sequence[str]]) -> float | None:
    """Share of facts (per question) found as normalized substrings of that question's ``texts``; None if none."""
    total = sum(len(f) for f in facts)
    if total == 0:
        return None
    hits = 0
    for per_q, shown in zip(facts, texts):
        norm = [normalize_answer(t) for t in shown]
        hits += sum(any(f and f in t for t in norm) for f in per_q)
    return hits / total


T = TypeVar("T")


class SampleCache(Generic[T]):
    """Values computed once per sample id and kept for a while: a GRPO group repeats one sample G times.

    Cleared whole when ``limit`` ids are held (rollout batches move on to new samples; no LRU order needed).
    """

    def __init__(self, limit: int = 256):
        self.limit = limit
        self.items: dict[str, T] = {}

    def get(self, sample: LongContextSample, make: Callable[[], T]) -> T:
        if sample.id not in self.items:
            if len(self.items) >= self.limit:
                self.items.clear()
            self.items[sample.id] = make()
        return self.items[sample.id]
