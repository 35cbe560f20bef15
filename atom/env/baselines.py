"""The paper's comparison baselines (full context, RAG, MemAgent), as episodes the ``RolloutEngine`` runs.

Each class implements the ``Episode`` protocol (``atom.env.episode``), so baselines are batched, counted and
scored like the AtomMem agent:

- ``FullContextEpisode``: one answer turn per question over the whole context, centre-cut to a budget (the
  model window) in tokens or characters.
- ``RAGEpisode``: every document of the sample is stored at construction (one entry per document,
  "Title\\ntext"); each question gets one turn showing the top-k documents retrieved with the question.
- ``MemAgentEpisode``: one turn per chunk whose reply overwrites a bounded memory (MemAgent's rewrite-the-
  whole-memory loop), then one answer turn per question from that memory.

Baselines are not judged on the action grammar: an answer is the first ``<answer>`` body when there is one,
else the reply's first non-empty line outside reasoning spans (the grammar's think rule); nothing is counted as
invalid. Fact coverage is reported where it means
something: ``facts_stored`` = share of gold supporting sentences held by the baseline's memory after reading
(RAG: the document store; MemAgent: the memory text; None for full context, which keeps nothing);
``facts_retrieved`` = share shown in the prompt when each question was answered (RAG: its top-k documents;
MemAgent: the memory; full context: the centre-cut context).
"""

from __future__ import annotations

import re

import numpy as np

from atom.data.chunker import TokenChunker
from atom.data.longcontext import LongContextSample
from atom.env import prompts
from atom.env.actions import parse_actions, strip_think
from atom.env.episode import (
    ANSWER,
    DONE,
    READ,
    AgentConfig,
    EmbedRequest,
    EpisodeResult,
    EpisodeStats,
    EpisodeView,
    SampleCache,
    episode_result,
    share_covered,
    support_sentences,
)
from atom.env.rollout import EpisodeFactory
from atom.memory.store import MemoryStore

_ANSWER_TAG = re.compile(r"</?answer>", re.IGNORECASE)
# Joins the head and tail of a centre-cut context, so that the model sees where text is missing.
CUT_MARKER = "\n[...]\n"


def parse_answer(reply: str, max_chars: int = 2000) -> str | None:
    """The first ``<answer>`` body of ``reply``, else its first non-empty line (tags removed), else None."""
    answers = [a.text for a in parse_actions(reply, max_text_chars=max_chars).actions if a.kind == "answer"]
    if answers:
        return answers[0]
    for line in strip_think(reply).splitlines():
        line = _ANSWER_TAG.sub("", line).strip()
        if line:
            return line[:max_chars]
    return None


def centre_cut_chars(text: str, max_chars: int) -> str:
    """Keep the first and last characters of ``text`` within ``max_chars`` (head gets the extra one)."""
    if len(text) <= max_chars:
        return text
    keep = max(max_chars - len(CUT_MARKER), 0)
    head = (keep + 1) // 2
    return text[:head] + CUT_MARKER + text[len(text) - (keep - head) :]


def centre_cut_tokens(text: str, tokenizer, max_tokens: int) -> tuple[str, bool]:
    """Keep the first and last tokens of ``text`` within ``max_tokens``; returns (text, whether it was cut).

    The pieces are cut from the original string at token boundaries (the chunker's offsets), never decoded.
    """
    encoder = TokenChunker(tokenizer, max(max_tokens, 1), 0)
    tokenized = encoder.encode(text)
    n = len(tokenized)
    if n <= max_tokens:
        return text, False
    # Reserve room for the marker so that the cut context stays inside the budget.
    keep = max(max_tokens - encoder.count_tokens(CUT_MARKER), 0)
    head, tail_start = (keep + 1) // 2, tokenized.bounds[n - keep // 2]
    return text[: tokenized.bounds[head]].rstrip() + CUT_MARKER + text[tail_start:], True


class _StaticEpisode:
    """Shared turn bookkeeping: one answer turn per question, the LLM-call cap, scoring."""

    kind = ""  # EpisodeView.kind of the subclass

    def __init__(self, sample: LongContextSample, cfg: AgentConfig):
        self.sample, self.cfg = sample, cfg
        self.stats = EpisodeStats()
        self.phase = ANSWER
        self.question_index = 0
        self.predictions: list[str | None] = [None] * len(sample.questions)
        self.shown_at_answer: list[list[str]] = [[] for _ in sample.questions]
        self._reply: str | None = None

    @property
    def done(self) -> bool:
        return self.phase == DONE

    def _answer_context(self) -> tuple[str, list[str]]:
        """(title, texts) shown to answer the current question; subclasses define it."""
        raise NotImplementedError

    def _read_prompt(self) -> str:
        raise NotImplementedError(f"{type(self).__name__} has no read phase")

    def _commit_read(self, reply: str) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no read phase")

    def view(self) -> EpisodeView:
        """The turn's state: the phase and the question (and the chunk, with a read phase)."""
        if self.done:
            raise RuntimeError("episode is over")
        return EpisodeView(self.sample, self.cfg, self.kind, self.phase, question_index=self.question_index)

    def messages(self) -> prompts.Messages:
        """The prompt of the next LLM call (one user message)."""
        if self.done:
            raise RuntimeError("episode is over")
        if self.phase == READ:
            return [{"role": "user", "content": self._read_prompt()}]
        title, texts = self._answer_context()
        self.shown_at_answer[self.question_index] = list(texts)
        question = self.sample.questions[self.question_index]
        content = prompts.context_answer_prompt(question, title, "\n\n".join(texts), self.cfg.boxed)
        return [{"role": "user", "content": content}]

    def observe(self, reply: str) -> list[EmbedRequest]:
        """Take the reply; nothing to embed (RAG embeds its documents and questions at construction)."""
        if self.done:
            raise RuntimeError("episode is over")
        self.stats.llm_calls += 1
        self._reply = reply if isinstance(reply, str) else ""
        return []

    def commit(self, vectors: list[np.ndarray] | None = None) -> None:
        """Apply the observed reply (overwrite the memory, or record the answer), then advance."""
        reply, self._reply = self._reply, None
        if reply is None:
            raise RuntimeError("commit() without observe()")
        if self.phase == READ:
            self._commit_read(reply)
        else:
            answer = parse_answer(reply, self.cfg.action_max_chars)
            if answer is not None:
                self.predictions[self.question_index] = answer
                self.stats.ops["answer"] += 1
            self._on_answer_turn()
            self.question_index += 1
            if self.question_index == len(self.sample.questions):
                self.phase = DONE
        if not self.done and self.stats.llm_calls >= self.cfg.max_llm_calls:
            self.phase = DONE

    def step(self, reply: str) -> None:
        """observe + commit (one episode at a time)."""
        self.observe(reply)
        self.commit(None)

    def _on_answer_turn(self) -> None:
        """Per-question counters of a subclass."""

    def _coverage(self) -> tuple[float | None, float | None]:
        return None, None

    def result(self) -> EpisodeResult:
        answered = [p for p in self.predictions if p is not None]  # a baseline's only answering replies
        return episode_result(self.sample, self.predictions, self.stats, self.cfg, self._coverage(), answered)


class FullContextEpisode(_StaticEpisode):
    """One answer turn per question over the (centre-cut) whole context."""

    kind = "full_context"

    def __init__(self, sample: LongContextSample, cfg: AgentConfig, context: str, truncated: bool):
        super().__init__(sample, cfg)
        self.context, self.truncated = context, truncated

    def _answer_context(self) -> tuple[str, list[str]]:
        return "Article", [self.context]

    def _coverage(self) -> tuple[float | None, float | None]:
        facts = support_sentences(self.sample)
        # Only questions that were asked saw the context (the call cap may end the episode early).
        return None, share_covered(facts, [[self.context] if s else [] for s in self.shown_at_answer])


class RAGEpisode(_StaticEpisode):
    """Top-k document retrieval with the question, one answer turn per question.

    Args:
        doc_vectors / query_vectors: precomputed embeddings of the documents ("Title\\ntext") and of the
            questions (as queries); computed with the store's embedder when None.
    """

    kind = "rag"

    def __init__(
        self,
        sample: LongContextSample,
        store: MemoryStore,
        cfg: AgentConfig,
        doc_vectors: np.ndarray | None = None,
        query_vectors: np.ndarray | None = None,
    ):
        super().__init__(sample, cfg)
        self.store = store
        texts = [document_text(p) for p in sample.documents]
        if texts:
            store.create_many(texts, doc_vectors)
        if query_vectors is None:
            query_vectors = store.embedder.encode_queries(list(sample.questions))
        self.query_vectors = query_vectors
        self.stats.store_sizes.append(len(store))

    def _answer_context(self) -> tuple[str, list[str]]:
        q = self.question_index
        found = self.store.read(self.sample.questions[q], self.cfg.top_k, vector=self.query_vectors[q])
        return "Retrieved documents", [e.text for e in found]

    def _on_answer_turn(self) -> None:
        self.stats.ops["read"] += 1

    def _coverage(self) -> tuple[float | None, float | None]:
        facts = support_sentences(self.sample)
        all_docs = [e.text for e in self.store.entries()]
        return share_covered(facts, [all_docs] * len(facts)), share_covered(facts, self.shown_at_answer)


class MemAgentEpisode(_StaticEpisode):
    """MemAgent-style overwrite memory: each chunk's reply replaces the memory; then the questions."""

    kind = "memagent"

    def __init__(self, sample: LongContextSample, chunks: list[str], cfg: AgentConfig, max_memory_chars: int):
        if not chunks:
            raise ValueError(f"sample {sample.id}: no chunks (empty context)")
        if max_memory_chars <= 0:
            raise ValueError(f"max_memory_chars must be > 0, got {max_memory_chars}")
        super().__init__(sample, cfg)
        self.chunks, self.max_memory_chars = chunks, max_memory_chars
        self.phase = READ
        self.chunk_index = 0
        self.memory = ""
        self.memory_at_end: str | None = None

    def view(self) -> EpisodeView:
        if self.phase != READ:
            return super().view()
        following = self.chunk_index + 1
        return EpisodeView(
            self.sample, self.cfg, self.kind, READ, chunk_index=self.chunk_index, num_chunks=len(self.chunks),
            chunk=self.chunks[self.chunk_index],
            next_chunk=self.chunks[following] if following < len(self.chunks) else None,
        )  # fmt: skip

    def _read_prompt(self) -> str:
        return prompts.memagent_update_prompt(
            self.sample.questions, self.memory, self.chunks[self.chunk_index], self.max_memory_chars
        )

    def _commit_read(self, reply: str) -> None:
        self.memory = strip_think(reply).strip()[: self.max_memory_chars].rstrip()
        self.stats.ops["overwrite"] += 1
        self.chunk_index += 1
        if self.chunk_index == len(self.chunks):
            self.memory_at_end = self.memory
            self.phase = ANSWER

    def _answer_context(self) -> tuple[str, list[str]]:
        return "Your memory", [self.memory]

    def _coverage(self) -> tuple[float | None, float | None]:
        facts = support_sentences(self.sample)
        held = [self.memory_at_end] if self.memory_at_end is not None else []
        return share_covered(facts, [held] * len(facts)), share_covered(facts, self.shown_at_answer)


def document_text(paragraph) -> str:
    """How RAG stores a document: "Title\\ntext"."""
    return f"{paragraph.title}\n{paragraph.text}"


# -- factories: EpisodeFactory callables (sample, chunks, store) -> episode ----------------------------------


def full_context_episode(
    cfg: AgentConfig, max_context_tokens: int = 0, tokenizer=None, max_context_chars: int = 0
) -> EpisodeFactory:
    """Full-context baseline; budget ``max_context_tokens`` (with ``tokenizer``) or ``max_context_chars``."""
    if (max_context_tokens > 0) == (max_context_chars > 0):
        raise ValueError(
            "full_context_episode needs exactly one budget > 0: max_context_tokens (with a tokenizer) or "
            f"max_context_chars; got max_context_tokens={max_context_tokens}, "
            f"max_context_chars={max_context_chars}"
        )
    if max_context_tokens > 0 and tokenizer is None:
        raise ValueError("full_context_episode: max_context_tokens needs the policy's tokenizer")
    cache: SampleCache = SampleCache(64)

    def cut(sample: LongContextSample) -> tuple[str, bool]:
        if max_context_chars > 0:
            text = centre_cut_chars(sample.context, max_context_chars)
            return text, text != sample.context
        return centre_cut_tokens(sample.context, tokenizer, max_context_tokens)

    def make(sample: LongContextSample, chunks: list[str], store: MemoryStore) -> FullContextEpisode:
        context, truncated = cache.get(sample, lambda: cut(sample))
        return FullContextEpisode(sample, cfg, context, truncated)

    return make


def rag_episode(cfg: AgentConfig) -> EpisodeFactory:
    """RAG baseline: documents embedded once per sample id (one batch), top-k ``cfg.top_k`` per question."""
    cache: SampleCache = SampleCache(64)

    def embed(sample: LongContextSample, store: MemoryStore) -> tuple[np.ndarray | None, np.ndarray]:
        texts = [document_text(p) for p in sample.documents]
        docs = store.embedder.encode_documents(texts) if texts else None
        return docs, store.embedder.encode_queries(list(sample.questions))

    def make(sample: LongContextSample, chunks: list[str], store: MemoryStore) -> RAGEpisode:
        docs, queries = cache.get(sample, lambda: embed(sample, store))
        return RAGEpisode(sample, store, cfg, docs, queries)

    return make


def memagent_episode(cfg: AgentConfig, max_memory_chars: int = 2000) -> EpisodeFactory:
    """MemAgent-style baseline; the rewritten memory is cut to ``max_memory_chars``."""
    if max_memory_chars <= 0:
        raise ValueError(f"memagent_episode: max_memory_chars must be > 0, got {max_memory_chars}")
    return lambda sample, chunks, store: MemAgentEpisode(sample, chunks, cfg, max_memory_chars)
