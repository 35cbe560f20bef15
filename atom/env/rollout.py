"""The batched rollout engine: many episodes in lockstep, one generation call and one embedding call per step.

At every step the engine asks each active episode for its prompt, makes one ``policy.act`` call for all of them,
then gathers every create/update text (as documents) and every read query (as queries) of that step into one
``encode_documents`` and one ``encode_queries`` call, and hands the vectors back to the episodes. Each turn keeps
the token ids the policy saw and produced, the sampling log-probabilities and the loss mask, exactly as generated;
nothing is re-tokenized afterwards (re-tokenizing decoded text can split it differently from the sampled
tokens, and the GRPO ratio would then be taken over tokens the policy never produced).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from atom.data.chunker import TokenChunker
from atom.data.longcontext import LongContextSample
from atom.env.episode import (
    AgentConfig,
    AtomMemEpisode,
    AtomRules,
    EmbedRequest,
    Episode,
    EpisodeResult,
    EpisodeView,
    Rules,
    SampleCache,
)
from atom.env.prompts import Messages
from atom.env.release import ReleaseRules
from atom.env.trace import TurnTrace
from atom.memory.embedder import Embedder, MemoryConfig
from atom.memory.store import MemoryStore


@dataclass
class Reply:
    """One policy reply. Token fields are None for policies that only produce text (oracle, scripted)."""

    text: str
    prompt_ids: torch.Tensor | None = None  # (P,) int64: the prompt exactly as the model saw it
    completion_ids: torch.Tensor | None = None  # (C,) int64: sampled tokens, up to and including EOS
    logprobs: torch.Tensor | None = None  # (C,) float32: log pi_old(token) at the sampling temperature
    truncated: bool = False  # the prompt was centre-cut to the policy's prompt budget before generating
    cut_off: bool = False  # generation hit max_new_tokens before an end-of-sequence token or a stop string


@dataclass
class Turn:
    """One LLM call of an episode: its own training sequence (MemAgent-style multi-conversation)."""

    phase: str  # "read" or "answer" (baselines: their own phase names)
    messages: Messages  # the prompt as chat messages (SFT demonstrations are built from these)
    reply: Reply
    trace: TurnTrace | None = None  # effects of the actions and state after the turn (AtomMem episodes; viewer)

    @property
    def input_ids(self) -> torch.Tensor:
        """(P + C,) int64: prompt then completion."""
        return torch.cat([self.reply.prompt_ids, self.reply.completion_ids])

    @property
    def mask(self) -> torch.Tensor:
        """(P + C,) bool: True exactly on model-generated tokens (environment tokens never enter the loss)."""
        p, c = len(self.reply.prompt_ids), len(self.reply.completion_ids)
        return torch.cat([torch.zeros(p, dtype=torch.bool), torch.ones(c, dtype=torch.bool)])


@dataclass
class Trajectory:
    sample_id: str  # trajectories of one GRPO group share it (``run`` returns each group contiguous)
    turns: list[Turn]
    result: EpisodeResult

    @property
    def reward(self) -> float:
        return self.result.reward


@dataclass
class RolloutStats:
    steps: int = 0  # lockstep steps (policy calls)
    generate_s: float = 0.0  # seconds inside policy.act
    embed_s: float = 0.0  # seconds inside the batched embedding calls
    total_s: float = 0.0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    embedded_texts: int = 0
    per_step_batch: list[int] = field(default_factory=list)  # active episodes at each step


@dataclass(frozen=True)
class Observation:
    """What a policy is given for one episode's turn; no policy ever holds the episode itself."""

    messages: Messages  # the prompt: all a model policy reads
    view: EpisodeView | None = None  # the state behind it, all a scripted teacher reads (None: not built)


class Policy(Protocol):
    """Anything that replies to a lockstep step: one ``Reply`` per observation, in order.

    A policy that reads ``Observation.view`` (a scripted teacher such as the oracle) says so with a class
    attribute ``reads_view = True``; for every other policy the engine builds no view (``view`` is None).
    """

    def act(self, observations: Sequence[Observation]) -> list[Reply]: ...


def reads_view(policy: Policy) -> bool:
    """Whether ``policy`` reads ``Observation.view`` (its ``reads_view`` attribute; False when it has none)."""
    return bool(getattr(policy, "reads_view", False))


EpisodeFactory = Callable[[LongContextSample, list[str], MemoryStore], Episode]


def make_rules(cfg: AgentConfig, tokenizer=None) -> Rules:
    """The rules of ``cfg.protocol``; ``tokenizer`` counts the release's retrieved-block tokens (else ~4 chars)."""
    return ReleaseRules(tokenizer) if cfg.protocol == "release" else AtomRules()


def atommem_episode(cfg: AgentConfig, tokenizer=None) -> EpisodeFactory:
    """Episodes of the AtomMem agent under ``cfg.protocol``."""
    return lambda sample, chunks, store: AtomMemEpisode(sample, chunks, store, cfg, make_rules(cfg, tokenizer))


class RolloutEngine:
    """Runs episodes of any kind (AtomMem agent or a baseline) for a policy, batched across episodes."""

    def __init__(
        self,
        policy: Policy,
        embedder: Embedder,
        chunker: TokenChunker,
        memory_cfg: MemoryConfig,
        make_episode: EpisodeFactory,
    ):
        self.policy, self.embedder, self.chunker = policy, embedder, chunker
        self.memory_cfg, self.make_episode = memory_cfg, make_episode
        self.stats = RolloutStats()
        self._chunks: SampleCache[Sequence[str]] = SampleCache()

    def chunks(self, sample: LongContextSample) -> Sequence[str]:
        """The sample's context in chunks: a lazy stream, tokenized block by block as episodes read it and shared
        by the G episodes of a group, so memory stays flat however long the context (``TokenChunker.stream``)."""
        return self._chunks.get(sample, lambda: self.chunker.stream(sample.context))

    def episodes(self, samples: Sequence[LongContextSample], repeats: int = 1) -> list[Episode]:
        return [
            self.make_episode(s, self.chunks(s), MemoryStore(self.embedder, self.memory_cfg))
            for s in samples
            for _ in range(repeats)
        ]

    def run(
        self,
        samples: Sequence[LongContextSample],
        repeats: int = 1,
        progress: Callable[[int], None] | None = None,
    ) -> list[Trajectory]:
        """Roll out every sample ``repeats`` times (a GRPO group); trajectories come back grouped, in order."""
        episodes = self.episodes(samples, repeats)
        turns: list[list[Turn]] = [[] for _ in episodes]
        start = time.perf_counter()
        while True:
            active = [i for i, e in enumerate(episodes) if not e.done]
            if not active:
                break
            self.step([episodes[i] for i in active], [turns[i] for i in active])
            if progress is not None:
                progress(sum(e.done for e in episodes))
        self.stats.total_s += time.perf_counter() - start
        return [Trajectory(e.sample.id, t, e.result()) for e, t in zip(episodes, turns)]

    def step(self, episodes: list[Episode], turns: list[list[Turn]]) -> None:
        """One lockstep step: one generation call, one document and one query embedding call."""
        viewed = reads_view(self.policy)  # only a scripted teacher reads the state behind the prompt
        observations = [Observation(e.messages(), e.view() if viewed else None) for e in episodes]
        t0 = time.perf_counter()
        replies = self.policy.act(observations)
        self.stats.generate_s += time.perf_counter() - t0
        phases = [e.phase for e in episodes]
        requests = [e.observe(r.text) for e, r in zip(episodes, replies)]
        vectors = self._embed(requests)
        for e, v in zip(episodes, vectors):
            e.commit(v)
        for e, r, o, p, ts in zip(episodes, replies, observations, phases, turns):
            ts.append(Turn(p, o.messages, r, getattr(e, "last_trace", None)))
            e.stats.truncated_prompts += r.truncated
            if r.prompt_ids is not None:
                e.stats.prompt_tokens += len(r.prompt_ids)
                e.stats.completion_tokens += len(r.completion_ids)
                self.stats.prompt_tokens += len(r.prompt_ids)
                self.stats.completion_tokens += len(r.completion_ids)
        self.stats.steps += 1
        self.stats.per_step_batch.append(len(episodes))

    def _embed(self, requests: list[list[EmbedRequest]]) -> list[list[np.ndarray]]:
        t0 = time.perf_counter()
        docs = [r.text for rs in requests for r in rs if not r.query]
        queries = [r.text for rs in requests for r in rs if r.query]
        doc_vecs = iter(self.embedder.encode_documents(docs)) if docs else iter(())
        query_vecs = iter(self.embedder.encode_queries(queries)) if queries else iter(())
        out = [[next(query_vecs) if r.query else next(doc_vecs) for r in rs] for rs in requests]
        self.stats.embed_s += time.perf_counter() - t0
        self.stats.embedded_texts += len(docs) + len(queries)
        return out
