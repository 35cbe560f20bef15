"""One AtomMem episode: the agent's POMDP (read chunks, then answer each question) as a small state machine,
and the ``Episode`` protocol it shares with the baselines.

State: the questions, the scratchpad, the memory store (stable ids), the current read query, the position in the
chunk stream, and in the answer phase the question being asked and its remaining reads.

Each LLM call is a *turn*: ``messages()`` builds the prompt, the policy replies, ``observe(reply)`` parses and
validates the actions and returns the texts that need embeddings, and ``commit(vectors)`` executes the actions in
order. The split lets the rollout engine embed the texts of every episode of a step in one batched call.
``view()`` is a frozen copy of the state behind the prompt (``EpisodeView``), all a scripted teacher (the oracle)
reads; no policy ever holds an episode. Every episode kind (this one and the baselines) implements ``Episode`` and
shares the pieces written once here: the counters, the result and its scoring, the gold-fact coverage.

What differs between protocols (``agent.protocol``) is a ``Rules`` object: the prompts, the reply grammar and the
turn transitions. ``AtomRules`` is atom's protocol, ``atom.env.release.ReleaseRules`` the AtomMem release's; the
state, the execution of actions (``apply``), the counters and the scoring are shared.

atom's rules (each is tested):
- read phase: every turn consumes exactly one chunk, whatever the reply (a reply without tags still advances);
- the read query is persistent: it is re-run at every turn, and a new ``<read>`` is visible from the next turn on
  (one-step latency); the last read of a reply wins; the memories a turn shows are read once, at whichever of
  ``messages()``, ``view()`` or ``commit()`` comes first, so prompt, view and answer-time record agree;
- answer phase: questions are asked in turn; a reply with ``<answer>`` answers (the first one counts); any other
  reply (a ``<read>``, or nothing usable) spends one of ``answer_reads``; when none are left the prompt demands an
  answer and a reply without one skips the question (prediction None), so a question costs at most
  ``answer_reads + 1`` calls;
- Update/Delete of an id that is not live, actions of the wrong phase, and actions switched off by an ablation are
  not executed and are counted in ``invalid`` by kind; nothing is fatal;
- ``max_llm_calls`` caps the episode; unanswered questions then score 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar, runtime_checkable

import numpy as np

from atom.data.longcontext import LongContextSample
from atom.env import prompts, trace
from atom.env.actions import Action, parse_actions, valid_unicode
from atom.env.rewards import normalize_answer, score_questions
from atom.env.scorers import release_answer_text, release_flat_score, release_scores
from atom.memory.store import Entry, MemoryStore

READ, ANSWER, DONE = "read", "answer", "done"
PROTOCOLS = ("atom", "release")
REWARDS = ("squad", "f1", "release")


@dataclass
class AgentConfig:
    top_k: int = 6  # memories shown per read query
    answer_reads: int = 3  # reads allowed per question in the answer phase before an answer is demanded
    max_llm_calls: int = 128  # hard cap on LLM calls per episode (read + answer phase)
    use_storage: bool = True  # the vector store (Create/Read/Update/Delete); off = scratchpad-only agent
    use_scratchpad: bool = True  # the always-visible scratchpad; off = store-only agent
    allow_update: bool = True  # Update on the store (ablation "no Update" removes only this)
    allow_delete: bool = True  # Delete on the store (ablation "no Delete")
    scratchpad_max_chars: int = 2000  # the scratchpad is cut to this length; 0 = no cap (the release)
    action_max_chars: int = 2000  # bodies of actions are cut to this length
    memory_max_chars: int = 1000  # each retrieved memory is shown cut to this length
    boxed_answers: bool = False  # ask for \boxed{...} answers; SQuAD EM/F1 then compare the box content
    protocol: str = "atom"  # atom (stable ids, a chunk per turn) | release (the AtomMem release's rules; docs/agent.md)
    reward: str = "squad"  # episode reward: squad (SQuAD EM, question mean) | f1 (SQuAD F1, denser) | release
    release_double_count: bool = False  # release scorer: pool all golds over every reply, as the release did
    memory_max_tokens: int = 0  # cap on the whole retrieved-memory block in tokens (release: 4096); 0 = none
    hide_scratchpad: bool = False  # release "disable_STM": the scratchpad is described and written, shown empty
    hide_memories: bool = False  # release "disable_LTM": store operations run, retrievals are shown empty
    store_documents: bool = False  # release "alladd": every document of a chunk is also stored whole

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"agent.protocol must be one of {list(PROTOCOLS)}, got '{self.protocol}'")
        if self.reward not in REWARDS:
            raise ValueError(f"agent.reward must be one of {list(REWARDS)}, got '{self.reward}'")
        if self.reward == "release" and not self.boxed:
            raise ValueError(
                "agent.reward=release scores \\boxed{} answers only, and this agent is not asked for them (every "
                "reward would be 0): set agent.boxed_answers=true or agent.protocol=release, or use reward squad or f1"
            )
        if self.memory_max_tokens < 0:
            raise ValueError(f"agent.memory_max_tokens must be >= 0 (0 = no cap), got {self.memory_max_tokens}")
        for name in (
            "top_k",
            "max_llm_calls",
            "action_max_chars",
            "memory_max_chars",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"agent.{name} must be > 0, got {getattr(self, name)}")
        if self.answer_reads < 0:
            raise ValueError(f"agent.answer_reads must be >= 0, got {self.answer_reads}")
        if self.scratchpad_max_chars < 0:
            raise ValueError(f"agent.scratchpad_max_chars must be >= 0 (0 = no cap), got {self.scratchpad_max_chars}")

    @property
    def boxed(self) -> bool:
        """Answers are boxed: asked for (boxed_answers), or the release protocol's final_answer format."""
        return self.boxed_answers or self.protocol == "release"

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
    stored_chars: int = 0  # characters held by the store when reading ends (the compression reward term)
    context_chars: int = 0  # characters of the sample's context (0 for kinds that do not read it in chunks)


@dataclass
class EpisodeResult:
    sample_id: str
    predictions: list[str | None]  # one per question; None = never answered
    em: list[float]  # SQuAD exact match per question
    f1: list[float]  # SQuAD token F1 per question
    reward: float  # agent.reward's score of the episode (squad: mean EM over the questions; f1: mean F1), in [0, 1]
    stats: EpisodeStats
    facts_stored: float | None  # share of gold supporting sentences held by the store at the end of reading
    facts_retrieved: float | None  # share shown among the memories when each question was answered
    release_em: list[float] = field(default_factory=list)  # release scorer per question (own golds)
    release_score: float = 0.0  # release scorer of the sample: mean of release_em, or the pooled double count
    boxed: bool = False  # answers were asked for in \boxed{}; without it the release scorer is 0 by construction


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
    calls_left: int = 0  # LLM calls the episode may still make, this one included
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

    def messages(self) -> prompts.Messages:
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
    cfg: AgentConfig,
    coverage: tuple[float | None, float | None],
    answer_texts: Sequence[str] = (),
) -> EpisodeResult:
    """Both scorers of one episode into the result every kind returns (``answer_texts``: every reply's release
    answer text, for the release's double count)."""
    squad = score_questions(predictions, sample.answers, boxed=cfg.boxed)
    release_em = release_scores(predictions, sample.answers)
    if cfg.release_double_count:
        release = release_flat_score(answer_texts, sample.answers)
    else:
        release = sum(release_em) / len(release_em)
    return EpisodeResult(
        sample_id=sample.id, predictions=list(predictions), em=squad.em, f1=squad.f1,
        reward={"squad": squad.reward, "f1": squad.mean_f1, "release": release}[cfg.reward], stats=stats,
        facts_stored=coverage[0], facts_retrieved=coverage[1], release_em=release_em, release_score=release,
        boxed=cfg.boxed,
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


class TurnParse:
    """A reply read under a protocol: the actions in order, what was ignored, and the chunk-advance verdict."""

    def __init__(self, actions: list[Action] | None = None, invalid: Counter | None = None, advance: bool = True):
        self.actions = actions if actions is not None else []  # ids resolved to stable store ids
        self.invalid = invalid if invalid is not None else Counter()  # ignored actions by kind
        self.advance = advance  # read phase: whether this reply moves on to the next chunk (atom: always)


class Rules(Protocol):
    """What differs between protocols: prompts, the reply grammar, and the turn transitions.

    The episode owns the state (store, scratchpad, query, positions, counters) and executes actions (``apply``);
    a protocol decides what the model sees, which actions of a reply run, and where the episode goes next.
    """

    initial_query: str  # the query in force before the model sets one ("" = nothing retrieved until a read)

    def messages(self, ep: AtomMemEpisode, results: list[Entry] | None) -> prompts.Messages: ...

    def parse(self, ep: AtomMemEpisode, reply: str) -> TurnParse: ...

    def allowed(self, ep: AtomMemEpisode) -> tuple[str, ...]: ...

    def select(self, ep: AtomMemEpisode, actions: list[Action]) -> list[Action]: ...

    def commit(
        self, ep: AtomMemEpisode, actions: list[Action], vectors: list[np.ndarray | None], parsed: TurnParse
    ) -> None: ...


class AtomRules:
    """atom's protocol: stable ids, every read turn consumes a chunk, reads spend an answer-phase budget."""

    initial_query = ""

    def messages(self, ep: AtomMemEpisode, results: list[Entry] | None) -> prompts.Messages:
        cfg = ep.cfg
        pad = ep.shown_scratchpad
        if ep.phase == READ:
            user = prompts.read_prompt(
                ep.sample.questions, pad, ep.query, results, ep.chunks[ep.chunk_index],
                ep.chunk_index, len(ep.chunks), cfg.memory_max_chars,
            )  # fmt: skip
        else:
            reads_left = ep.reads_left if cfg.use_storage else 0
            user = prompts.answer_prompt(
                ep.sample.questions[ep.question_index], pad, ep.query, results, reads_left,
                cfg.memory_max_chars, cfg.boxed,
            )  # fmt: skip
        return [
            {"role": "system", "content": prompts.system_prompt(cfg.prompt_ops)},
            {"role": "user", "content": user},
        ]

    def parse(self, ep: AtomMemEpisode, reply: str) -> TurnParse:
        parsed = parse_actions(reply, max_text_chars=ep.cfg.action_max_chars)
        return TurnParse(parsed.actions, parsed.invalid)

    def allowed(self, ep: AtomMemEpisode) -> tuple[str, ...]:
        if ep.phase == READ:
            return ep.cfg.read_phase_ops
        can_read = ep.cfg.use_storage and ep.reads_left > 0
        return ("answer", "read") if can_read else ("answer",)

    def select(self, ep: AtomMemEpisode, actions: list[Action]) -> list[Action]:
        if ep.phase == READ:
            return actions
        answers = [a for a in actions if a.kind == "answer"]
        return answers[:1] if answers else [a for a in actions if a.kind == "read"][-1:]

    def commit(
        self, ep: AtomMemEpisode, actions: list[Action], vectors: list[np.ndarray | None], parsed: TurnParse
    ) -> None:
        for action, vector in zip(actions, vectors, strict=True):
            ep.apply(action, vector)
        kinds = [a.kind for a in actions]
        if ep.phase == READ:
            ep.next_chunk()
        elif "answer" in kinds or ep.reads_left == 0 or not ep.cfg.use_storage:
            ep.close_question()  # answered, or told to answer and did not: closed (a skipped one scores 0)
        else:  # a read, or a reply with neither: both spend one of the question's turns
            ep.reads_left -= 1


class AtomMemEpisode:
    """The AtomMem CRUD agent over one long-context sample (an ``Episode``), under the rules of ``cfg.protocol``."""

    def __init__(
        self,
        sample: LongContextSample,
        chunks: list[str],
        store: MemoryStore,
        cfg: AgentConfig,
        rules: Rules | None = None,
    ):
        if not chunks:
            raise ValueError(f"sample {sample.id}: no chunks (empty context)")
        if rules is None and cfg.protocol != "atom":
            raise ValueError(
                f"agent.protocol={cfg.protocol}: pass its rules (atom.env.rollout.make_rules) to the episode"
            )
        self.sample, self.chunks, self.store, self.cfg = sample, chunks, store, cfg
        self.rules = rules if rules is not None else AtomRules()
        self.stats = EpisodeStats(context_chars=len(sample.context))
        self.phase = READ
        self.chunk_index = 0
        self.question_index = 0
        self.reads_left = cfg.answer_reads
        self.scratchpad = ""
        self.query = self.rules.initial_query
        self.query_vector: np.ndarray | None = None
        self.predictions: list[str | None] = [None] * len(sample.questions)
        self.shown_at_answer: list[list[str]] = [[] for _ in sample.questions]
        self.stored_at_end: list[str] | None = None
        self.answer_texts: list[str] = []  # release answer text of every reply (the release's double count)
        self._documents_stored: set[int] = set()
        self._pending: list[Action] = []
        self._turn_shown: list[Entry] = []
        self._parsed = TurnParse()
        self._shown: list[Entry] | None = None  # this turn's read results, once read (None: not yet this turn)
        self.recorder = trace.TraceRecorder()  # per-turn effects and state, for the trajectory viewer

    @property
    def done(self) -> bool:
        return self.phase == DONE

    @property
    def last_shown(self) -> list[Entry]:
        """The memories this turn shows (what positional addressing refers to)."""
        return self._results() or []

    @property
    def shown_scratchpad(self) -> str | None:
        """The scratchpad as the prompt shows it (None when the ablation removes it)."""
        if not self.cfg.use_scratchpad:
            return None
        return "" if self.cfg.hide_scratchpad else self.scratchpad

    # -- prompts -----------------------------------------------------------------------------------------------

    def _results(self) -> list[Entry] | None:
        """This turn's read results (None when the store is ablated), read once per turn."""
        if not self.cfg.use_storage:
            return None
        if self._shown is None:
            if self.query and self.query_vector is None:  # a protocol's initial query, embedded when first needed
                self.query_vector = self.store.embedder.encode_queries([self.query])[0]
            found = [] if self.query_vector is None else self.store.read(
                self.query, self.cfg.top_k, vector=self.query_vector
            )  # fmt: skip
            self._shown = [] if self.cfg.hide_memories else found
        return self._shown

    def messages(self) -> prompts.Messages:
        """The prompt of the next LLM call (system + user)."""
        if self.done:
            raise RuntimeError("episode is over")
        return self.rules.messages(self, self._results())

    def view(self) -> EpisodeView:
        """The state behind this turn's prompt (see ``EpisodeView``); the store is not read again."""
        if self.done:
            raise RuntimeError("episode is over")
        reading = self.phase == READ
        following = self.chunk_index + 1
        return EpisodeView(
            sample=self.sample, cfg=self.cfg, kind="atommem", phase=self.phase, chunk_index=self.chunk_index,
            num_chunks=len(self.chunks), chunk=self.chunks[self.chunk_index] if reading else "",
            next_chunk=self.chunks[following] if reading and following < len(self.chunks) else None,
            question_index=self.question_index, reads_left=self.reads_left,
            calls_left=self.cfg.max_llm_calls - self.stats.llm_calls, scratchpad=self.scratchpad,
            query=self.query, shown=tuple(self._results() or ()), stored=tuple(self.store.entries()),
        )  # fmt: skip

    # -- acting ------------------------------------------------------------------------------------------------

    def observe(self, reply: str) -> list[EmbedRequest]:
        """Parse and validate ``reply``; return the texts to embed, in the order ``commit`` expects vectors."""
        if self.done:
            raise RuntimeError("episode is over")
        self.stats.llm_calls += 1
        reply = valid_unicode(reply) if isinstance(reply, str) else ""
        text = release_answer_text(reply)
        if text is not None:
            self.answer_texts.append(text)
        parsed = self.rules.parse(self, reply)
        self.stats.invalid.update(parsed.invalid)
        for kind, n in parsed.invalid.items():
            for _ in range(n):
                self.recorder.invalid(kind, "malformed or unknown tag (grammar: atom/env/actions.py)")
        allowed = self.rules.allowed(self)
        live = set(self.store.ids())
        valid: list[Action] = []
        for action in parsed.actions:
            if action.kind not in allowed:
                self.stats.invalid[action.kind] += 1
                self.recorder.invalid(action.kind, f"not allowed in the {self.phase} phase here", action.id,
                                      action.text)  # fmt: skip
                continue
            if action.kind in ("update", "delete"):
                if action.id not in live:
                    self.stats.invalid[action.kind] += 1
                    self.recorder.invalid(action.kind, f"id {action.id} is not a live store entry", action.id,
                                          action.text)  # fmt: skip
                    continue
                if action.kind == "delete":
                    live.discard(action.id)
            valid.append(action)
        self._pending, self._parsed = self.rules.select(self, valid), parsed
        return [EmbedRequest(a.text, query=a.kind == "read") for a in self._pending if _embedded(a)]

    def commit(self, vectors: list[np.ndarray] | None = None) -> None:
        """Execute the observed actions (``vectors`` match ``observe``'s requests), then move on per the rules."""
        pending, self._pending = self._pending, []
        self._turn_shown = self._results() or []  # what this turn showed, before the actions change the store
        vecs = iter(vectors if vectors is not None else [])
        per_action = [next(vecs, None) if _embedded(a) else None for a in pending]
        phase, chunk, question = self.phase, self.chunk_index, self.question_index
        self.rules.commit(self, pending, per_action, self._parsed)  # executes through apply(), which traces
        self._shown = None
        self.recorder.close(
            phase, chunk if phase == READ else None, question if phase == ANSWER else None, self._turn_shown,
            self.store.entries(), self.scratchpad if self.cfg.use_scratchpad else None, self.query,
        )  # fmt: skip
        if not self.done and self.stats.llm_calls >= self.cfg.max_llm_calls:
            self.phase = DONE

    def _effect(self, action: Action) -> trace.Effect:
        """What ``action`` is about to do, with the text it replaces (read before the store changes)."""
        if action.kind == "create":
            return trace.Effect("create", trace.CREATED, self.store.next_id, action.text)
        if action.kind in ("update", "delete"):
            status = trace.UPDATED if action.kind == "update" else trace.DELETED
            return trace.Effect(action.kind, status, action.id, action.text, old_text=self.store.get(action.id))
        status = {"read": trace.READ_SET, "scratchpad": trace.SCRATCHPAD_SET, "answer": trace.ANSWERED}[action.kind]
        return trace.Effect(action.kind, status, text=action.text)

    @property
    def last_trace(self) -> trace.TurnTrace | None:
        """The trace of the last committed turn (the rollout engine attaches it to the recorded turn)."""
        return self.recorder.turns[-1] if self.recorder.turns else None

    def step(self, reply: str) -> None:
        """observe + commit with the store's own embedder (one episode at a time)."""
        self.observe(reply)
        self.commit(None)

    # -- primitives the rules build on -------------------------------------------------------------------------

    def apply(self, action: Action, vector: np.ndarray | None = None) -> None:
        """Execute one validated action, trace its effect and count it."""
        self.recorder.note(self._effect(action))
        if action.kind == "create":
            self.store.create(action.text, vector=vector)
        elif action.kind == "update":
            self.store.update(action.id, action.text, vector=vector)
        elif action.kind == "delete":
            self.store.delete(action.id)
        elif action.kind == "read":
            if action.text:  # an empty query keeps the current one (the release counts it all the same)
                self.query, self.query_vector = action.text, vector
                if self.query_vector is None:
                    self.query_vector = self.store.embedder.encode_queries([action.text])[0]
        elif action.kind == "scratchpad":
            limit = self.cfg.scratchpad_max_chars
            self.scratchpad = action.text[:limit] if limit else action.text
        elif action.kind == "answer":
            self.predictions[self.question_index] = action.text
        self.stats.ops[action.kind] += 1

    def next_chunk(self) -> None:
        """Leave the current chunk; after the last one, the answer phase starts at the current question."""
        if self.cfg.store_documents:
            self._store_documents()
        self.stats.store_sizes.append(len(self.store))
        self.chunk_index += 1
        if self.chunk_index == len(self.chunks):
            self.stored_at_end = [e.text for e in self.store.entries()]
            self.stats.stored_chars = sum(len(t) for t in self.stored_at_end)
            self._start_question(self.question_index)

    def _store_documents(self) -> None:
        """Store whole every document whose header is in the current chunk (once each; release "alladd")."""
        chunk = self.chunks[self.chunk_index]
        for i, doc in enumerate(self.sample.documents):
            if i not in self._documents_stored and f"Document {i + 1}:\n{doc.title}" in chunk:
                self._documents_stored.add(i)
                self.store.create(f"{doc.title}\n{doc.text}")
                self.stats.ops["document"] += 1

    def close_question(self) -> None:
        """The current question is over (answered or skipped); ask the next one, or end the episode."""
        if self.phase == ANSWER:
            self.shown_at_answer[self.question_index] = [e.text for e in self._turn_shown]
        self._start_question(self.question_index + 1, keep_phase=self.phase == READ)

    def _start_question(self, index: int, keep_phase: bool = False) -> None:
        self.question_index = index
        self.reads_left = self.cfg.answer_reads
        if index >= len(self.sample.questions):
            self.phase = DONE
        elif not keep_phase:
            self.phase = ANSWER

    # -- scoring -----------------------------------------------------------------------------------------------

    def result(self) -> EpisodeResult:
        return episode_result(
            self.sample, self.predictions, self.stats, self.cfg, self._fact_coverage(), self.answer_texts
        )

    def _fact_coverage(self) -> tuple[float | None, float | None]:
        """Shares of gold supporting sentences found (normalised substring) in the store / in answer-time reads."""
        if not self.cfg.use_storage:
            return None, None
        facts = support_sentences(self.sample)
        stored = share_covered(facts, [self.stored_at_end or []] * len(facts))
        return stored, share_covered(facts, self.shown_at_answer)


def _embedded(action: Action) -> bool:
    """Whether an action's text needs a vector (an empty read keeps the current query and needs none)."""
    return action.kind in ("create", "update") or (action.kind == "read" and bool(action.text))
