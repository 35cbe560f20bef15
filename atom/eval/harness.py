"""The evaluation harness: run the AtomMem agent, the oracle and the static baselines on the same samples.

Every method goes through the same ``RolloutEngine``, chunker, embedder and metric, so rows of the table are
comparable. Used by ``python -m atom.evaluate`` and by the final ``eval`` stage of ``python -m atom.fit``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from atom.data.chunker import TokenChunker
from atom.data.longcontext import LongContextSample
from atom.env.episode import AgentConfig
from atom.env.rollout import RolloutEngine, Trajectory, atommem_episode
from atom.env.shaping import reward_terms
from atom.eval.categories import by_category, category_table
from atom.eval.judge import Judge, JudgeConfig, judge_summary
from atom.eval.report import summarize, write_results
from atom.eval.viewer import write_viewer
from atom.policy.factory import make_policy
from atom.policy.hf import SamplingConfig
from atom.policy.openai_client import ServerConfig

log = logging.getLogger(__name__)

METHODS = ("atommem", "oracle", "full_context", "rag", "memagent")


@dataclass
class EvalConfig:
    methods: list[str] = field(default_factory=lambda: ["atommem"])  # rows: atommem oracle full_context rag memagent
    max_samples: int = 0  # evaluate the first N validation samples; 0 = all
    temperature: float = 0.0  # decoding temperature at evaluation (0 = greedy, as the paper validates)
    checkpoint: str = ""  # a saved policy directory (atom.fit output) to evaluate instead of model.name_or_path
    memagent_memory_chars: int = 2000  # MemAgent baseline: bound on the rewritten memory
    full_context_tokens: int = 0  # full-context baseline budget; 0 = model window minus sampling.max_new_tokens
    before_training: bool = False  # atom.fit: also evaluate the untrained policy (a before/after table)
    kv_cache_gb: float = 24.0  # GB of KV cache per generate batch at full window: caps sampling.batch_size; 0 = no cap
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # LLM judge column (pass/fail per question); off if no URL

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"eval.methods: unknown or empty {bad or self.methods}; valid methods: {list(METHODS)}")
        if self.max_samples < 0 or self.temperature < 0 or self.kv_cache_gb < 0:
            raise ValueError("eval.max_samples, eval.temperature and eval.kv_cache_gb must be >= 0")


def episode_factory(method: str, agent: AgentConfig, ecfg: EvalConfig, window_tokens: int, tokenizer):
    """The episode kind of a method (``oracle`` runs the AtomMem episode with the oracle policy)."""
    from atom.env import baselines

    if method in ("atommem", "oracle"):
        return atommem_episode(agent, tokenizer)
    if method == "rag":
        return baselines.rag_episode(agent)
    if method == "memagent":
        return baselines.memagent_episode(agent, max_memory_chars=ecfg.memagent_memory_chars)
    return baselines.full_context_episode(agent, max_context_tokens=window_tokens, tokenizer=tokenizer)


def evaluate(
    samples: Sequence[LongContextSample],
    methods: Sequence[str],
    *,
    agent: AgentConfig,
    ecfg: EvalConfig,
    sampling: SamplingConfig,
    chunker: TokenChunker,
    embedder,
    memory_cfg,
    model=None,
    tokenizer=None,
    window_tokens: int = 2048,
    out_dir: str | Path | None = None,
    progress: bool = True,
    server: ServerConfig | None = None,
    judge: Judge | None = None,
    autocast: torch.dtype | None = None,
) -> tuple[dict[str, dict], dict[str, list[Trajectory]]]:
    """Run each method over ``samples``; return (summary per method, trajectories per method).

    ``server``: the policy is served (``model.backend=openai``) instead of ``model``. ``judge``: adds the
    ``judge`` and ``judge_failed`` columns. ``autocast``: ``model`` generates under ``torch.autocast(dtype)``.
    """
    greedy = dataclasses.replace(sampling, temperature=ecfg.temperature)
    rows: dict[str, dict] = {}
    trajectories: dict[str, list[Trajectory]] = {}
    terms: dict[str, list[dict[str, float]]] = {}
    for method in methods:
        kind = "oracle" if method == "oracle" else "served" if server is not None else "hf"
        if kind == "hf" and model is None:
            raise ValueError(f"eval method '{method}' needs a model")
        policy = make_policy(
            kind, greedy, tokenizer, window_tokens - greedy.max_new_tokens, model=model, server=server,
            autocast=autocast,
        )  # fmt: skip
        budget = ecfg.full_context_tokens or window_tokens - greedy.max_new_tokens - 256
        engine = RolloutEngine(
            policy, embedder, chunker, memory_cfg, episode_factory(method, agent, ecfg, budget, tokenizer)
        )
        start = time.perf_counter()
        with tqdm(total=len(samples), desc=f"eval {method}", disable=not progress, leave=False) as bar:
            trajs = engine.run(samples, progress=lambda n, bar=bar: bar.update(n - bar.n))
        wall_s = time.perf_counter() - start
        terms[method] = [reward_terms(t) for t in trajs]  # once: the summary and episodes.jsonl both show them
        rows[method] = summarize(trajs, wall_s, terms[method])
        if any(s.categories for s in samples):  # LongMemEval / LoCoMo / MemoryAgentBench: results per category
            rows[method]["by_category"] = by_category(trajs, samples)
        if hasattr(policy, "usage"):  # a served policy: the server's token counts and length-cut replies
            usage, n = policy.usage, max(len(trajs), 1)
            rows[method]["served"] = dataclasses.asdict(usage)
            if usage.prompt_tokens and not rows[method]["prompt_tokens_per_episode"]:  # chat mode: no ids here
                rows[method]["prompt_tokens_per_episode"] = usage.prompt_tokens / n
                rows[method]["completion_tokens_per_episode"] = usage.completion_tokens / n
            policy.close()
        if judge is not None:
            rows[method].update(judge_summary(judge.judge_trajectories(trajs, samples)))
        trajectories[method] = trajs
        log.info("%s: EM %.1f F1 %.1f", method, rows[method]["em"], rows[method]["f1"])
    if out_dir is not None:
        write_results(out_dir, rows, trajectories, {"samples": len(samples), "methods": list(methods)}, terms)
        if category_table(rows):
            with open(Path(out_dir) / "results.md", "a") as f:
                f.write("\n" + category_table(rows) + "\n")
        chunks_of = lambda s: list(chunker.stream(s.context))  # noqa: E731
        write_viewer(Path(out_dir) / "trajectories.html", trajectories, samples, chunks_of=chunks_of)
    return rows, trajectories


__all__ = ["EvalConfig", "METHODS", "evaluate"]
