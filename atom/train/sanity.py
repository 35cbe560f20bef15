"""The GRPO sanity task: one turn, a verifiable reward, and a control whose advantage has the opposite sign.

Each prompt says where ``facts`` people live and asks where one of them lives::

    Ilsa Brandt lives in Lisbon. Omar Keel lives in Oslo. Tove Marr lives in Cairo.
    Where does Omar Keel live? Answer with the city name only.

The reward is 1 when the first city of ``CITIES`` named in the reply is the gold one, else 0 (a reply naming no
city scores 0). SmolLM2-135M-Instruct solves it sometimes but not always, which is what a GRPO check needs: groups
of G sampled replies then hold both successes and failures, and a correct loss raises the greedy success rate on
held-out prompts within a few minutes of CPU.

The control (``flip=True``) scores 1 - reward. With ``grpo.std_scale`` none or group the advantage is then exactly
the negation of the real run's, A' = (1 - R) - mean(1 - R) = -(R - mean R), and the group std is unchanged, so
the same code path with nothing else changed must push the success rate down. A loss with the wrong sign would
raise it; a loss of the wrong scale would move neither run.

``FactEpisode`` implements the rollout engine's ``Episode`` protocol (one turn, no memory operations), so the
sanity run goes through ``RolloutEngine``, ``HFPolicy`` and ``GRPOModule`` exactly as the memory agent does.
``benchmarks/grpo_sanity.py`` runs it.
"""

from __future__ import annotations

import random
import re

from atom.data.datamodule import AtomDataModule
from atom.data.loaders import DataConfig
from atom.data.longcontext import LongContextSample
from atom.data.records import Paragraph
from atom.env.episode import READ, AgentConfig, EmbedRequest, EpisodeResult, EpisodeStats, EpisodeView

DONE = "done"
CITIES = (
    "Lisbon", "Oslo", "Cairo", "Lima", "Dublin", "Vienna", "Madrid", "Nairobi", "Seoul", "Havana",
    "Prague", "Warsaw", "Athens", "Quito", "Dakar", "Riga", "Manila", "Hanoi", "Tunis", "Bern",
)  # fmt: skip
_FIRST = ("Ilsa", "Omar", "Tove", "Ravi", "Mina", "Jonas", "Elif", "Paulo", "Anya", "Kofi", "Lena", "Tariq", "Noor")
_LAST = ("Brandt", "Keel", "Marr", "Osei", "Varga", "Lund", "Sato", "Duarte", "Fiore", "Haddad", "Novak", "Reyes")
_CITY = re.compile(r"\b(" + "|".join(CITIES) + r")\b", re.IGNORECASE)
INSTRUCTION = "Answer with the city name only."


def first_city(reply: str) -> str | None:
    """The first city of ``CITIES`` the reply names (case-insensitive, whole words), as spelled in CITIES."""
    m = _CITY.search(reply)
    return None if m is None else next(c for c in CITIES if c.lower() == m.group(1).lower())


def fact_samples(n: int, facts: int, seed: int, split: str = "train") -> list[LongContextSample]:
    """``n`` prompts of ``facts`` distinct people in distinct cities each, one of them asked about."""
    if not 1 <= facts <= min(len(CITIES), len(_FIRST)):
        raise ValueError(f"facts must be in 1..{min(len(CITIES), len(_FIRST))}, got {facts}")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        people = [f"{f} {s}" for f, s in zip(rng.sample(_FIRST, facts), rng.choices(_LAST, k=facts))]
        cities = rng.sample(CITIES, facts)
        asked = rng.randrange(facts)
        # HotpotQA's sentence convention (records.Paragraph): later sentences carry their leading space
        sentences = tuple(f"{' ' * bool(k)}{p} lives in {c}." for k, (p, c) in enumerate(zip(people, cities)))
        doc = Paragraph(title="Residents", sentences=sentences)
        out.append(
            LongContextSample(
                id=f"facts{facts}-{split}-{seed}-{i}", questions=(f"Where does {people[asked]} live?",),
                answers=((cities[asked],),), record_ids=(f"{split}-{i}",), documents=(doc,),
                supporting_docs=((0,),), supporting_facts=(((0, asked),),), context=doc.text,
            )
        )  # fmt: skip
    return out


class FactEpisode:
    """One prompt, one reply, reward = the first named city is the gold one (``1 - that`` when ``flip``)."""

    def __init__(self, sample: LongContextSample, flip: bool = False):
        self.sample, self.flip = sample, flip
        self.stats = EpisodeStats()
        self.phase = READ
        self.prediction: str | None = None

    @property
    def done(self) -> bool:
        return self.phase == DONE

    def messages(self) -> list[dict[str, str]]:
        question = self.sample.questions[0]
        return [{"role": "user", "content": f"{self.sample.context}\n{question} {INSTRUCTION}"}]

    def view(self) -> EpisodeView:
        return EpisodeView(sample=self.sample, cfg=AgentConfig(), kind="facts", phase=READ, calls_left=1)

    def observe(self, reply: str) -> list[EmbedRequest]:
        self.stats.llm_calls += 1
        self.prediction = first_city(reply)
        return []

    def commit(self, vectors=None) -> None:
        self.phase = DONE

    def step(self, reply: str) -> None:
        self.observe(reply)
        self.commit()

    @property
    def success(self) -> float:
        return float(self.prediction == self.sample.answers[0][0])

    def result(self) -> EpisodeResult:
        s = self.success
        reward = 1.0 - s if self.flip else s
        return EpisodeResult(
            sample_id=self.sample.id, predictions=[self.prediction], em=[s], f1=[s], reward=reward,
            stats=self.stats, facts_stored=None, facts_retrieved=None,
        )  # fmt: skip


class FactData(AtomDataModule):
    """GRPO's data for the sanity task: the same rollout sampler and validation split as the memory agent's."""

    def __init__(self, train: list[LongContextSample], val: list[LongContextSample], prompts_per_step: int, seed=0):
        super().__init__(DataConfig(seed=seed), prompts_per_step=prompts_per_step, val_samples=0)
        self.train_samples, self.val_samples, self.records = train, val, []
        self._ready = True

    def setup(self, stage: str | None = None) -> None:
        pass
