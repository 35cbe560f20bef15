"""A seeded synthetic multi-hop QA task over a made-up world, as ``QARecord``s like the real datasets.

The world has people, cities, countries and companies with made-up names and one fact per relation:

    person  --born in-->            city        "Alden Voss was born in Marrow Creek."
    person  --works for-->          company     "Alden Voss works for Velora Systems."
    company --founded by-->         person      "Velora Systems was founded by Alden Voss."
    company --headquartered in-->   city        "Velora Systems is headquartered in Marrow Creek."
    city    --lies in-->            country     "Marrow Creek lies in Teshavia."
    country --capital-->            city        "The capital of Teshavia is Marrow Creek."

Each entity has one paragraph (title = its name, one sentence per relation). A question follows a random walk
of ``hops`` relations that never revisits an entity, phrased with one fixed noun phrase per relation
("What is the country of the birthplace of Alden Voss?"), so the answer is unique and a short entity name.
Gold paragraphs are the walk's paragraphs (the fact sentence of each hop is a supporting sentence);
distractors are paragraphs of other entities of the same types, so finding the right paragraph needs
retrieval. The whole world is consistent (a country's capital lies in that country), so pooling paragraphs
across records never contradicts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from atom.data.records import Paragraph, QARecord

_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "st", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai")
_CODAS = ("", "", "", "n", "r", "s", "l", "d")
_CITY_SUFFIXES = ("Creek", "Falls", "Haven", "Ford", "Ridge", "Harbor", "Vale", "Port", "Hollow", "Crossing")
_COUNTRY_SUFFIXES = ("avia", "land", "ora", "istan", "esh", "onia")
_COMPANY_SUFFIXES = ("Systems", "Works", "Labs", "Foods", "Motors", "Textiles", "Mining", "Press", "Airways")


@dataclass(frozen=True)
class _Relation:
    name: str
    subject: str  # entity type of the subject
    object: str  # entity type of the object
    fact: str  # fact sentence template with {s} and {o}
    phrase: str  # noun phrase template with {s}: "the birthplace of {s}"


_RELATIONS = (
    _Relation("born_in", "person", "city", "{s} was born in {o}.", "the birthplace of {s}"),
    _Relation("works_for", "person", "company", "{s} works for {o}.", "the employer of {s}"),
    _Relation("founded_by", "company", "person", "{s} was founded by {o}.", "the founder of {s}"),
    _Relation("headquartered_in", "company", "city", "{s} is headquartered in {o}.", "the headquarters city of {s}"),
    _Relation("located_in", "city", "country", "{s} lies in {o}.", "the country of {s}"),
    _Relation("capital", "country", "city", "The capital of {s} is {o}.", "the capital of {s}"),
)
_TYPES = ("person", "company", "city", "country")


@dataclass
class SyntheticConfig:
    num_records: int = 200  # questions generated
    hops: int = 2  # relations chained per question (1-4); each hop is one gold paragraph
    num_entities: int = 60  # people, cities and companies each; countries are a quarter of it (at least 2)
    distractors: int = 8  # paragraphs per record about other entities of the chain's types
    seed: int = 0  # seed of the world and of the questions
    val_seed: int = -1  # >= 0: validation comes from a second world of this seed (unseen entities); -1: split one
    val_records: int = 0  # with val_seed: questions of the validation world; 0 = data.val_fraction x num_records
    rl_seed: int = -1  # >= 0: GRPO's prompts come from a world of this seed (questions SFT never saw); -1: SFT's
    rl_records: int = 0  # with rl_seed: questions of GRPO's world; 0 = num_records

    def __post_init__(self) -> None:
        if self.val_seed >= 0 and self.val_seed == self.seed:
            raise ValueError(f"data.synthetic.val_seed must differ from data.synthetic.seed ({self.seed}) or be -1")
        if self.rl_seed >= 0 and self.rl_seed in (self.seed, self.val_seed):
            raise ValueError(
                f"data.synthetic.rl_seed ({self.rl_seed}) must differ from seed ({self.seed}) and val_seed "
                f"({self.val_seed}): GRPO's world is neither SFT's nor the evaluation's"
            )
        if self.rl_records < 0:
            raise ValueError(f"data.synthetic.rl_records must be >= 0, got {self.rl_records}")
        if self.val_records < 0:
            raise ValueError(f"data.synthetic.val_records must be >= 0, got {self.val_records}")
        if self.num_records < 1:
            raise ValueError(f"data.synthetic.num_records must be >= 1, got {self.num_records}")
        if not 1 <= self.hops <= 4:
            raise ValueError(f"data.synthetic.hops must be in 1..4, got {self.hops}")
        if self.num_entities < 8:
            raise ValueError(f"data.synthetic.num_entities must be >= 8, got {self.num_entities}")
        if not 0 <= self.distractors <= self.num_entities - self.hops:
            raise ValueError(
                f"data.synthetic.distractors must be in 0..num_entities - hops "
                f"({self.num_entities - self.hops}), got {self.distractors}"
            )


class _World:
    """Entities, their facts (one object per relation) and one paragraph per entity."""

    def __init__(self, cfg: SyntheticConfig, rng: random.Random):
        self._used: set[str] = set()
        n, n_countries = cfg.num_entities, max(2, cfg.num_entities // 4)
        self.names = {
            "person": [f"{self._word(rng)} {self._word(rng)}" for _ in range(n)],
            "city": [f"{self._word(rng)} {rng.choice(_CITY_SUFFIXES)}" for _ in range(n)],
            "country": [self._word(rng, rng.choice(_COUNTRY_SUFFIXES)) for _ in range(n_countries)],
            "company": [f"{self._word(rng)} {rng.choice(_COMPANY_SUFFIXES)}" for _ in range(n)],
        }
        # The first n_countries cities are the capitals, one per country, so every country has a city in it.
        city_country = [i if i < n_countries else rng.randrange(n_countries) for i in range(n)]
        self.facts: dict[tuple[str, int], dict[str, int]] = {}
        for i in range(n):
            self.facts[("person", i)] = {"born_in": rng.randrange(n), "works_for": rng.randrange(n)}
            self.facts[("company", i)] = {
                "founded_by": rng.randrange(n),
                "headquartered_in": rng.randrange(n),
            }
            self.facts[("city", i)] = {"located_in": city_country[i]}
        for i in range(n_countries):
            self.facts[("country", i)] = {"capital": i}

    def _word(self, rng: random.Random, suffix: str = "") -> str:
        # Names are unique across every entity type, so an answer never names two things.
        while True:
            syllables = [
                rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(2 - bool(suffix))
            ]
            word = ("".join(syllables) + suffix).capitalize()
            if word not in self._used:
                self._used.add(word)
                return word

    def relations(self, kind: str) -> list[_Relation]:
        return [r for r in _RELATIONS if r.subject == kind]

    def paragraph(self, kind: str, i: int) -> Paragraph:
        name = self.names[kind][i]
        facts = self.facts[(kind, i)]
        sentences = [r.fact.format(s=name, o=self.names[r.object][facts[r.name]]) for r in self.relations(kind)]
        # later sentences carry their separating space (the Paragraph convention)
        return Paragraph(name, tuple(s if i == 0 else " " + s for i, s in enumerate(sentences)))

    def walk(self, hops: int, rng: random.Random, asked: set) -> list[tuple[str, int, _Relation]]:
        """A new random chain of ``hops`` (subject type, subject index, relation) steps, no entity twice.

        ``asked`` holds the chains already used; the new one is added to it, so no question repeats.
        """
        for _ in range(10_000):
            kind = rng.choice(_TYPES)
            i = rng.randrange(len(self.names[kind]))
            seen, steps = {(kind, i)}, []
            for _ in range(hops):
                relation = rng.choice(self.relations(kind))
                steps.append((kind, i, relation))
                kind, i = relation.object, self.facts[(kind, i)][relation.name]
                if (kind, i) in seen:
                    break
                seen.add((kind, i))
            else:
                key = tuple((k, j, r.name) for k, j, r in steps)
                if key not in asked:
                    asked.add(key)
                    return steps
        raise ValueError(
            f"data.synthetic: found no new {hops}-hop question after {len(asked)}; "
            f"raise num_entities or lower "
            f"num_records"
        )

    def answer(self, steps: list[tuple[str, int, _Relation]]) -> str:
        kind, i, relation = steps[-1]
        return self.names[relation.object][self.facts[(kind, i)][relation.name]]


def generate(cfg: SyntheticConfig) -> list[QARecord]:
    """``cfg.num_records`` synthetic records; the same config gives identical records."""
    rng = random.Random(cfg.seed)
    world = _World(cfg, rng)
    records, asked = [], set()
    for index in range(cfg.num_records):
        steps = world.walk(cfg.hops, rng, asked)
        phrase = world.names[steps[0][0]][steps[0][1]]
        for _, _, relation in steps:
            phrase = relation.phrase.format(s=phrase)
        gold = [(kind, i) for kind, i, _ in steps]
        taken = set(gold)
        distractors = []
        for d in range(cfg.distractors):
            kind = gold[d % len(gold)][0]  # same types as the chain, so titles alone do not give the answer away
            candidates = [(kind, j) for j in range(len(world.names[kind])) if (kind, j) not in taken]
            if not candidates:  # a small type (countries) ran out: fall back to any unused entity
                candidates = [(k, j) for k in _TYPES for j in range(len(world.names[k])) if (k, j) not in taken]
            pick = rng.choice(candidates)
            taken.add(pick)
            distractors.append(pick)
        order = gold + distractors
        rng.shuffle(order)
        position = {entity: p for p, entity in enumerate(order)}
        facts = []
        for kind, i, relation in steps:
            facts.append((position[(kind, i)], [r.name for r in world.relations(kind)].index(relation.name)))
        records.append(
            QARecord(
                id=f"synthetic-{cfg.seed}-{index}",
                question=f"What is {phrase}?",
                answers=(world.answer(steps),),
                paragraphs=tuple(world.paragraph(kind, i) for kind, i in order),
                supporting=tuple(sorted(position[g] for g in gold)),
                supporting_sentences=tuple(sorted(facts)),
                dataset="synthetic",
            )
        )
    return records
