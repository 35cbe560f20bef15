"""The AtomMem episode: the agent's POMDP (read chunks, then answer each question) as a small state machine.

State: the questions, the scratchpad, the memory store (stable ids), the current read query, the position in the
chunk stream, and in the answer phase the question being asked and its remaining reads. It implements the
``Episode`` protocol (``atom.agent.episode``): ``messages()`` / ``view()``, ``observe(reply)``, ``commit(vectors)``.
The memories a turn shows are read from the store once per turn, at whichever of ``messages()``, ``view()`` or
``commit()`` comes first, so the prompt, the view and the answer-time record always agree.

Rules (each is tested):
- read phase: every turn consumes exactly one chunk, whatever the reply (a reply without tags still advances);
- the read query is persistent: it is re-run at every turn, and a new ``<read>`` is visible from the next turn on
  (one-step latency); the last read of a reply wins;
- answer phase: questions are asked in turn; a reply with ``<answer>`` answers (the first one counts); any other
  reply (a ``<read>``, or nothing usable) spends one of ``answer_reads``; when none are left the prompt demands an
  answer and a reply without one skips the question (prediction None), so a question costs at most
  ``answer_reads + 1`` calls;
- Update/Delete of an id that is not live, actions of the wrong phase, and actions switched off by an ablation are
  not executed and are counted in ``invalid`` by kind; nothing is fatal;
- ``max_llm_calls`` caps the episode; unanswered questions then score 0.
"""

from __future__ import annotations

import numpy as np

from atom.agent import prompts
from atom.agent.actions import Action, parse_actions
from atom.agent.episode import (
    ANSWER,
    DONE,
    READ,
    AgentConfig,
    EmbedRequest,
    EpisodeResult,
    EpisodeStats,
    EpisodeView,
    episode_result,
    share_covered,
    support_sentences,
)
from atom.data.longcontext import LongContextSample
from atom.memory.store import Entry, MemoryStore


class AtomMemEpisode:
    """The AtomMem CRUD agent over one long-context sample (an ``Episode``)."""

    def __init__(self, sample: LongContextSample, chunks: list[str], store: MemoryStore, cfg: AgentConfig):
        if not chunks:
            raise ValueError(f"sample {sample.id}: no chunks (empty context)")
        self.sample, self.chunks, self.store, self.cfg = sample, chunks, store, cfg
        self.stats = EpisodeStats()
        self.phase = READ
        self.chunk_index = 0
        self.question_index = 0
        self.reads_left = cfg.answer_reads
        self.scratchpad = ""
        self.query = ""
        self.query_vector: np.ndarray | None = None
        self.predictions: list[str | None] = [None] * len(sample.questions)
        self.shown_at_answer: list[list[str]] = [[] for _ in sample.questions]
        self.stored_at_end: list[str] | None = None
        self._pending: list[Action] = []
        self._shown: list[Entry] | None = None  # this turn's read results, once read (None: not yet this turn)

    @property
    def done(self) -> bool:
        return self.phase == DONE

    # -- prompts -----------------------------------------------------------------------------------------------

    def _results(self) -> list[Entry] | None:
        """This turn's read results (None when the store is ablated), read once per turn."""
        if not self.cfg.use_storage:
            return None
        if self._shown is None:
            self._shown = [] if self.query_vector is None else self.store.read(
                self.query, self.cfg.top_k, vector=self.query_vector
            )  # fmt: skip
        return self._shown

    def messages(self) -> prompts.Messages:
        """The prompt of the next LLM call (system + user)."""
        if self.done:
            raise RuntimeError("episode is over")
        results = self._results()
        pad = self.scratchpad if self.cfg.use_scratchpad else None
        if self.phase == READ:
            user = prompts.read_prompt(
                self.sample.questions, pad, self.query, results, self.chunks[self.chunk_index],
                self.chunk_index, len(self.chunks), self.cfg.memory_max_chars,
            )  # fmt: skip
        else:
            reads_left = self.reads_left if self.cfg.use_storage else 0
            user = prompts.answer_prompt(
                self.sample.questions[self.question_index], pad, self.query, results, reads_left,
                self.cfg.memory_max_chars, self.cfg.boxed_answers,
            )  # fmt: skip
        return [
            {"role": "system", "content": prompts.system_prompt(self.cfg.prompt_ops)},
            {"role": "user", "content": user},
        ]

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
            question_index=self.question_index, reads_left=self.reads_left, scratchpad=self.scratchpad,
            query=self.query, shown=tuple(self._results() or ()), stored=tuple(self.store.entries()),
        )  # fmt: skip

    # -- acting ------------------------------------------------------------------------------------------------

    def observe(self, reply: str) -> list[EmbedRequest]:
        """Parse and validate ``reply``; return the texts to embed, in the order ``commit`` expects vectors."""
        if self.done:
            raise RuntimeError("episode is over")
        self.stats.llm_calls += 1
        parsed = parse_actions(reply, max_text_chars=self.cfg.action_max_chars)
        self.stats.invalid.update(parsed.invalid)
        allowed = self.cfg.read_phase_ops if self.phase == READ else self._answer_ops()
        live = set(self.store.ids())
        valid: list[Action] = []
        for action in parsed.actions:
            if action.kind not in allowed:
                self.stats.invalid[action.kind] += 1
                continue
            if action.kind in ("update", "delete"):
                if action.id not in live:
                    self.stats.invalid[action.kind] += 1
                    continue
                if action.kind == "delete":
                    live.discard(action.id)
            valid.append(action)
        if self.phase == ANSWER:
            valid = self._answer_turn(valid)
        self._pending = valid
        return [EmbedRequest(a.text, query=a.kind == "read") for a in valid if a.kind in ("create", "update", "read")]

    def _answer_ops(self) -> tuple[str, ...]:
        can_read = self.cfg.use_storage and self.reads_left > 0
        return ("answer", "read") if can_read else ("answer",)

    def _answer_turn(self, valid: list[Action]) -> list[Action]:
        answers = [a for a in valid if a.kind == "answer"]
        if answers:
            return answers[:1]
        reads = [a for a in valid if a.kind == "read"]
        return reads[-1:]

    def commit(self, vectors: list[np.ndarray] | None = None) -> None:
        """Execute the observed actions in order (``vectors`` match ``observe``'s requests), then advance."""
        pending, self._pending = self._pending, []
        shown = self._results() or []  # what this turn showed, before the actions change the store
        vecs = iter(vectors if vectors is not None else [None] * len(pending))
        for action in pending:
            if action.kind == "create":
                self.store.create(action.text, vector=next(vecs))
            elif action.kind == "update":
                self.store.update(action.id, action.text, vector=next(vecs))
            elif action.kind == "delete":
                self.store.delete(action.id)
            elif action.kind == "read":
                self.query, self.query_vector = action.text, next(vecs, None)
                if self.query_vector is None:
                    self.query_vector = self.store.embedder.encode_queries([action.text])[0]
            elif action.kind == "scratchpad":
                self.scratchpad = action.text[: self.cfg.scratchpad_max_chars]
            elif action.kind == "answer":
                self.predictions[self.question_index] = action.text
            self.stats.ops[action.kind] += 1
        self._shown = None
        self._advance([a.kind for a in pending], shown)

    def step(self, reply: str) -> None:
        """observe + commit with the store's own embedder (one episode at a time)."""
        self.observe(reply)
        self.commit(None)

    def _advance(self, kinds: list[str], shown: list[Entry]) -> None:
        if self.phase == READ:
            self.stats.store_sizes.append(len(self.store))
            self.chunk_index += 1
            if self.chunk_index == len(self.chunks):
                self.stored_at_end = [e.text for e in self.store.entries()]
                self._start_question(0)
        elif "answer" in kinds or self.reads_left == 0 or not self.cfg.use_storage:
            # Answered, or told to answer and did not: the question is closed (skipped scores 0).
            self.shown_at_answer[self.question_index] = [e.text for e in shown]
            self._start_question(self.question_index + 1)
        else:  # a read, or a reply with neither: both spend one of the question's turns
            self.reads_left -= 1
        if not self.done and self.stats.llm_calls >= self.cfg.max_llm_calls:
            self.phase = DONE

    def _start_question(self, index: int) -> None:
        self.question_index = index
        self.reads_left = self.cfg.answer_reads
        self.phase = ANSWER if index < len(self.sample.questions) else DONE

    # -- scoring -----------------------------------------------------------------------------------------------

    def result(self) -> EpisodeResult:
        return episode_result(self.sample, self.predictions, self.stats, self.cfg.boxed_answers, self._fact_coverage())

    def _fact_coverage(self) -> tuple[float | None, float | None]:
        """Shares of gold supporting sentences found (normalised substring) in the store / in answer-time reads."""
        if not self.cfg.use_storage:
            return None, None
        facts = support_sentences(self.sample)
        stored = share_covered(facts, [self.stored_at_end or []] * len(facts))
        return stored, share_covered(facts, self.shown_at_answer)
