"""Resumable trajectory collection for SFT, and the teacher as the paper used it (a strong model behind an API).

``collect(engine, samples, path, repeats, batch)`` rolls out ``batch`` samples at a time and *appends* their
trajectories to the JSONL after each batch (flushed and synced), so a crash, a kill or a server that stays down
loses at most the batch in flight. Run again, it reads the file, skips every sample that already has its
``repeats`` trajectories, and continues; a torn last line (a kill during a write) is cut off first. With a judge
(``eval.judge``) each line also carries the judge's verdicts and the judged reward, which ``read_demos`` then
filters on instead of the exact-match reward (the paper kept teacher trajectories at judged reward >= 0.5).

The teacher (``sft.teacher``, ``python -m atom.collect CONFIG --policy openai``) samples as the release's did:
T = 0.6, up to 8,192 tokens per reply, with an optional strategy text of its own added to its system prompt
(the stored prompts stay the student's, see ``atom.policy.openai_policy``).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from atom import jsonl
from atom.policy.openai_client import ServerConfig

log = logging.getLogger(__name__)


@dataclass
class TeacherConfig:
    server: ServerConfig = field(default_factory=ServerConfig)  # the teacher's endpoint (atom.collect --policy openai)
    temperature: float = 0.6  # teacher sampling temperature (the release: 0.6)
    top_p: float = 1.0  # teacher nucleus mass
    max_new_tokens: int = 8192  # teacher reply cap in tokens (the release: 8192)
    strategy: str = ""  # extra strategy text for the teacher's system prompt only (demos keep the student prompt)

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_new_tokens <= 0:
            raise ValueError("sft.teacher: temperature >= 0, top_p in (0, 1], max_new_tokens > 0 required")


def trajectory_record(t, verdicts: Sequence[float | None] | None = None) -> dict:
    """The JSONL line of one trajectory (what ``atom.train.sft.read_demos`` reads)."""
    from atom.eval.judge import judged_reward

    turns = [{"messages": x.messages, "completion": x.reply.text, "phase": x.phase} for x in t.turns]
    row = {"sample_id": t.sample_id, "reward": t.reward, "em": t.result.em, "turns": turns}
    if verdicts is not None:
        row["judge"] = list(verdicts)
        row["judge_reward"] = judged_reward(verdicts)
    return row


def done_counts(path: str | Path) -> Counter:
    """Trajectories already in ``path`` per sample id; a torn last line is cut off (with a warning)."""
    p = Path(path)
    counts: Counter = Counter()
    if not p.is_file():
        return counts
    data = p.read_bytes()
    good = 0  # byte length of the intact prefix
    for raw in data.splitlines(keepends=True):
        try:
            row = json.loads(raw)
            counts[row["sample_id"]] += 1
        except (ValueError, KeyError, TypeError) as exc:
            if good + len(raw) == len(data) and not raw.endswith(b"\n"):
                log.warning("%s: cutting off a torn last line (%d bytes) left by an interrupted write", p, len(raw))
                with open(p, "r+b") as f:
                    f.truncate(good)
                break
            raise ValueError(f"{p}: line {sum(counts.values()) + 1} is not a trajectory record ({exc!r})") from exc
        good += len(raw)
    return counts


def collect(
    run: Callable[[Sequence, int], list],
    samples: Sequence,
    path: str | Path,
    repeats: int = 1,
    batch: int = 8,
    judge=None,
) -> dict:
    """Roll out (``run(samples, repeats) -> trajectories``) every sample not yet complete in ``path``, ``batch``
    samples at a time, appending after each batch. Returns counts: written now, skipped, total in the file."""
    if repeats <= 0 or batch <= 0:
        raise ValueError("collect: repeats and batch must be > 0")
    counts = done_counts(path)
    todo = [(s, repeats - counts[s.id]) for s in samples if counts[s.id] < repeats]
    skipped = len(samples) - len(todo)
    if skipped:
        log.info("%s: %d of %d samples already collected, skipping them", path, skipped, len(samples))
    written = 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        trajectories = []
        for need in sorted({n for _, n in chunk}):  # == repeats except after a torn write
            trajectories += run([s for s, n in chunk if n == need], need)
        verdicts = judge.judge_trajectories(trajectories, [s for s, _ in chunk]) if judge is not None else None
        rows = (trajectory_record(t, verdicts[i] if verdicts else None) for i, t in enumerate(trajectories))
        jsonl.append(path, rows, sync=True)
        written += len(trajectories)
        log.info("%s: %d trajectories appended (%d of %d samples done)", path, written,
                 skipped + start + len(chunk), len(samples))  # fmt: skip
    return {"written": written, "skipped_samples": skipped, "total": sum(done_counts(path).values())}
