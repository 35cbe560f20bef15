"""An LLM judge behind an OpenAI-compatible server: one pass/fail verdict per question, as the paper reports.

The prompt follows the structure of the AtomMem release's judge (the wording is atom's own): one user message
with the model's answer and the gold answer in labelled blocks, the rule (same meaning passes; other wording,
order or extra detail is fine; the key facts such as numbers must be there), and the verdict as a fenced JSON
object ``{"pass": true}`` or ``{"pass": false}``. atom adds the question and lists every gold alias in one
prompt, so a question costs one judge call and scores 0 or 1 (the release called the judge per alias and could
count one answer twice).

Parsing: the last fenced ```json block (or, failing that, the last ``{...}`` object) of the reply must be a JSON
object with a boolean ``pass``. A reply without one is malformed and re-asked like a failed request
(``server.retries``); a question whose judge calls all fail gets ``None``: it is counted (``judge_failed``) and
left out of the judge score, never scored as right or wrong. An unanswered question fails without a call.

Cost per question: one request of about 150 prompt tokens plus the answer and golds, and up to ``max_tokens``
reply tokens (a verdict alone is ~10 tokens).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from atom.policy.openai_client import MalformedReply, ServerConfig, ServerError, ServingClient, choice_of

log = logging.getLogger(__name__)

PROMPT = """You grade answers to questions. Decide whether the model's answer means the same as the gold answer.

[QUESTION]
{question}

[MODEL ANSWER]
{prediction}

[GOLD ANSWER]
{golds}

Rules: the answer passes when it states the same thing as a gold answer, even in other words, in another order \
or with extra details; it fails when it contradicts the gold answer, misses a key fact of it (a name, date or \
number), or gives no answer. Ignore extra information in the model answer.
End your reply with the verdict as a fenced JSON object: ```json{{"pass": true}}``` or ```json{{"pass": false}}```."""

_FENCED = re.compile(r"```json(.*?)```", re.DOTALL)
_OBJECT = re.compile(r"\{[^{}]*\}")


@dataclass
class JudgeConfig:
    server: ServerConfig = field(default_factory=ServerConfig)  # the judge's endpoint; server.base_url "" = no judge
    max_tokens: int = 512  # judge reply cap in tokens (room for a short reasoning before the verdict)
    temperature: float = 0.0  # judge decoding temperature (0 = greedy, reproducible verdicts)

    def __post_init__(self) -> None:
        if self.max_tokens <= 0 or self.temperature < 0:
            raise ValueError("eval.judge.max_tokens must be > 0 and eval.judge.temperature >= 0")

    @property
    def enabled(self) -> bool:
        return bool(self.server.base_url)


def judge_prompt(question: str, prediction: str, golds: Sequence[str]) -> str:
    gold = golds[0] if len(golds) == 1 else "\n".join(f"- {g}" for g in golds) + "\n(any one of these is correct)"
    return PROMPT.format(question=question, prediction=prediction, golds=gold)


def parse_verdict(text: str) -> bool:
    """The ``pass`` boolean of the judge's reply (see module docstring); MalformedReply when there is none."""
    candidates = _FENCED.findall(text) or _OBJECT.findall(text)
    for raw in reversed(candidates):
        try:
            obj = json.loads(raw.strip())
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("pass"), bool):
            return obj["pass"]
    raise MalformedReply(f"the judge's reply has no {{'pass': true|false}} verdict: {text[-200:]!r}")


class Judge:
    """Verdicts for (question, prediction, golds) triples, sent concurrently; ``failed`` counts None verdicts."""

    def __init__(self, cfg: JudgeConfig):
        self.cfg = cfg
        self.client = ServingClient(cfg.server, "eval.judge.server")
        self.calls = 0  # questions sent to the judge
        self.failed = 0  # questions whose judge calls all failed (verdict None)
        self._lock = threading.Lock()

    def verdicts(self, items: Sequence[tuple[str, str | None, Sequence[str]]]) -> list[float | None]:
        """1.0 (pass), 0.0 (fail) or None (judge failed after its retries) per (question, prediction, golds)."""
        return self.client.map(self._one, list(items))

    def _one(self, item: tuple[str, str | None, Sequence[str]]) -> float | None:
        question, prediction, golds = item
        if prediction is None or not prediction.strip():
            return 0.0  # nothing to judge: a definite fail, not a judge failure
        kind = "POST /chat/completions (judge)"

        def request() -> bool:
            reply = self.client.client.chat.completions.create(
                model=self.client.model,
                messages=[{"role": "user", "content": judge_prompt(question, prediction, golds)}],
                max_tokens=self.cfg.max_tokens,
                temperature=self.cfg.temperature,
            )
            message = choice_of(reply, kind).get("message") or {}
            return parse_verdict(message.get("content") or "")

        with self._lock:
            self.calls += 1
        try:
            return 1.0 if self.client.call(kind, request) else 0.0
        except ServerError as exc:
            with self._lock:
                self.failed += 1
            log.warning("judge failed on %r: %s", question[:80], exc)
            return None

    def judge_trajectories(self, trajectories: Sequence, samples: Sequence) -> list[list[float | None]]:
        """Per trajectory, one verdict per question of its sample (``samples`` looked up by id)."""
        by_id = {s.id: s for s in samples}
        items, owners = [], []
        for i, t in enumerate(trajectories):
            sample = by_id[t.sample_id]
            for q, golds, pred in zip(sample.questions, sample.answers, t.result.predictions):
                items.append((q, pred, golds))
                owners.append(i)
        out: list[list[float | None]] = [[] for _ in trajectories]
        for i, v in zip(owners, self.verdicts(items)):
            out[i].append(v)
        return out

    def close(self) -> None:
        self.client.close()


def judged_reward(verdicts: Sequence[float | None]) -> float | None:
    """Mean verdict of one episode's questions; None when any of them could not be judged."""
    if not verdicts or any(v is None for v in verdicts):
        return None
    return sum(verdicts) / len(verdicts)  # type: ignore[arg-type]


def judge_summary(verdicts: Sequence[Sequence[float | None]]) -> dict:
    """Evaluation columns: ``judge`` (percent passed over judged questions) and ``judge_failed`` (count)."""
    flat = [v for vs in verdicts for v in vs]
    judged = [v for v in flat if v is not None]
    return {
        "judge": 100 * sum(judged) / len(judged) if judged else None,
        "judge_failed": len(flat) - len(judged),
    }


def build_judge(cfg: JudgeConfig) -> Judge | None:
    return Judge(cfg) if cfg.enabled else None
