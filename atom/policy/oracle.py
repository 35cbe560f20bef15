"""The oracle teacher: a policy that reads the gold supporting facts and writes ideal CRUD trajectories.

Its replies become SFT demonstrations (the cold start before GRPO), so each is what we want a model to write: a short
line of reasoning, then well-formed actions (``render_action``) of the operations the ``AgentConfig`` enables,
addressing only ids shown in the prompt.

Read phase, per chunk:
- a gold supporting sentence found in the chunk (whitespace-insensitive substring) and not yet held is stored
  as a self-contained fact ``"Title: sentence"``; sentences of one document seen together share one entry;
- if an entry for that title is among the memories shown, the new text is merged into it with ``<update>``
  (without Update: delete it and create the merged entry; without Delete either: create a new one);
- a document whose other supporting sentences run into the next chunk gets a ``<read>`` of its title, so
  that its entry is shown, and updated, at the next turn. A sentence cut off by the chunk end that the overlap
  does not repeat whole is stored as its beginning (with the same read) and completed at the next turn from
  the rest at the start of the next chunk;
- a shown entry whose text another shown entry contains (a duplicate, a superseded beginning) is deleted;
- the scratchpad keeps one status line per question ("Q1: found 1/2 facts (Title A)"), rewritten only when it
  changes; without the store it also keeps the facts, grouped by title, as many as fit;
- at the last chunk, a ``<read>`` of the first question and its titles prepares the answer phase.

Answer phase, per question: while the shown memories miss supporting facts that the store holds and reads
remain, ``<read>`` (the question and its titles, then the missing titles, then each alone); then ``<answer>``
the gold answer (first alias, boxed when ``boxed_answers`` or under the release protocol).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from atom.data.longcontext import LongContextSample
from atom.env.actions import Action, render_action
from atom.env.episode import ANSWER, READ, EpisodeView, SampleCache
from atom.env.release import to_release_reply
from atom.env.rewards import normalize_answer
from atom.env.rollout import Observation, Reply
from atom.memory.store import Entry

_NOTHING = (
    "Nothing in this chunk helps with the questions.",
    "This chunk has nothing relevant to the questions.",
    "No evidence for the questions here; moving on.",
)


_DOC_TITLE = re.compile(r"Document \d+:\n([^\n]+)")


def _part_note(ep: EpisodeView) -> str:
    """A factual note on the documents of the current chunk (titles), for a chunk with nothing to store."""
    titles = list(dict.fromkeys(t.strip() for t in _DOC_TITLE.findall(ep.chunk)))
    part = f"Part {ep.chunk_index + 1} of the article"
    note = f"{part} has documents on: {'; '.join(titles)}." if titles else f"{part} continues the document before it."
    return note.replace("<", "").replace(">", "")[: ep.cfg.action_max_chars]


def _squash(text: str) -> str:
    """Whitespace-insensitive form used to match gold sentences against chunk and memory text."""
    return " ".join(text.split())


@dataclass(frozen=True)
class _Fact:
    doc: int  # document index of its first occurrence
    title: str
    sentence: str  # stripped gold sentence, as written into memory
    squashed: str  # _squash(sentence)
    norm: str  # normalize_answer(sentence): the episode's coverage metric matches on this
    questions: tuple[int, ...]  # the questions it supports


def sample_facts(sample: LongContextSample) -> tuple[list[_Fact], list[list[int]]]:
    """The sample's distinct supporting facts (document order) and, per question, the indices of its facts."""
    found: dict[tuple[str, str], tuple[int, int, list[int]]] = {}
    for q, per_q in enumerate(sample.supporting_facts):
        for d, s in per_q:
            doc = sample.documents[d]
            sentence = doc.sentences[s].strip()
            if not normalize_answer(sentence):
                continue  # nothing a memory could be matched on
            _, _, questions = found.setdefault((doc.title, _squash(sentence)), (d, s, []))
            if q not in questions:
                questions.append(q)
    facts = []
    for (title, squashed), (d, s, questions) in sorted(found.items(), key=lambda kv: kv[1][:2]):
        sentence = sample.documents[d].sentences[s].strip()
        facts.append(_Fact(d, title, sentence, squashed, normalize_answer(sentence), tuple(questions)))
    per_question = [[i for i, f in enumerate(facts) if q in f.questions] for q in range(len(sample.questions))]
    return facts, per_question


def _tail_prefix(chunk: str, sentence: str, min_chars: int) -> str | None:
    """The longest beginning of ``sentence`` that ``chunk`` ends with, cut back to whole words (or None)."""
    probe = sentence[:min_chars]
    i = chunk.find(probe, max(0, len(chunk) - len(sentence) + 1))
    while i != -1:
        tail = chunk[i:]
        if sentence.startswith(tail):
            if len(tail) < len(sentence) and sentence[len(tail)] != " " and " " in tail:
                tail = tail[: tail.rfind(" ")]  # the chunk ends inside a word
            tail = tail.strip()
            return tail if len(tail) >= min_chars else None
        i = chunk.find(probe, i + 1)
    return None


def _head_suffix_start(chunk: str, sentence: str, min_chars: int) -> int | None:
    """Smallest ``b > 0`` such that ``chunk`` starts with ``sentence[b:]``, at least ``min_chars`` long."""
    probe = chunk[:min_chars]
    if len(probe) < min_chars:
        return None
    b = sentence.find(probe, 1)
    while b != -1 and len(sentence) - b >= min_chars:
        if chunk.startswith(sentence[b:]):
            return b
        b = sentence.find(probe, b + 1)
    return None


def _stored_beginning(body: str, sentence: str, min_chars: int) -> int:
    """Length of the longest word-aligned tail of ``body`` that begins ``sentence``; 0 below ``min_chars``."""
    probe = sentence[:min_chars]
    i = body.find(probe, max(0, len(body) - len(sentence)))
    while i != -1:
        if sentence.startswith(body[i:]) and (i == 0 or body[i - 1] == " "):
            return len(body) - i
        i = body.find(probe, i + 1)
    return 0


def _merge(text: str, title: str, sentences: Sequence[str], min_chars: int) -> str:
    """The text of a "Title: ..." entry with ``sentences`` added; a stored beginning of one is replaced."""
    head = f"{title}: "
    body = _squash(text[len(head) :] if text.startswith(head) else text)
    for sentence in sentences:
        s = _squash(sentence)
        if normalize_answer(s) in normalize_answer(body):
            continue
        cut = _stored_beginning(body, s, min_chars)
        body = f"{body[: len(body) - cut].rstrip()} {s}".strip()
    return head + body


def _fit_lines(lines: Sequence[str], limit: int) -> str:
    """Whole lines, in order, as many as fit in ``limit`` characters (the scratchpad is cut, not wrapped)."""
    out: list[str] = []
    size = -1
    for line in lines:
        if size + 1 + len(line) > limit:
            break
        out.append(line)
        size += 1 + len(line)
    return "\n".join(out)


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


@dataclass
class _ReadTurn:
    """What the oracle decided for one read-phase turn: its reasoning sentences and rendered actions."""

    reasons: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    touched: set[int] = field(default_factory=set)  # ids updated or deleted this turn

    def text(self, fallback: str) -> str:
        return " ".join(self.reasons or [fallback]) + "".join("\n" + a for a in self.actions)


class OraclePolicy:
    """Text-only policy for AtomMem episodes: it reads each turn's ``EpisodeView`` (the gold supporting facts among
    it), never the episode itself (see module docstring).

    Args:
        min_partial_chars: shortest beginning of a cut-off sentence worth storing, and shortest overlap
            used to recognise beginnings and continuations of sentences.
    """

    reads_view = True  # the engine builds each turn's EpisodeView for it (atom.env.rollout.Policy)

    def __init__(self, min_partial_chars: int = 20):
        if min_partial_chars <= 0:
            raise ValueError(f"min_partial_chars must be > 0, got {min_partial_chars}")
        self.min_chars = min_partial_chars
        self._facts: SampleCache[tuple[list[_Fact], list[list[int]]]] = SampleCache()

    def act(self, observations: Sequence[Observation]) -> list[Reply]:
        return [Reply(self.reply(o.view)) for o in observations]

    def reply(self, view: EpisodeView) -> str:
        """The reply to the turn ``view`` describes (an AtomMem episode's ``view()``)."""
        if not isinstance(view, EpisodeView) or view.kind != "atommem":
            raise TypeError(f"OraclePolicy drives AtomMem episodes only, got {getattr(view, 'kind', view)!r}")
        if view.phase == READ:
            text = self._read_turn(view)
        elif view.phase == ANSWER:
            text = self._answer_turn(view)
        else:
            raise RuntimeError("episode is over")
        if view.cfg.protocol == "release":
            text = to_release_reply(text, list(view.shown))
        return text

    def _sample_facts(self, sample: LongContextSample) -> tuple[list[_Fact], list[list[int]]]:
        return self._facts.get(sample, lambda: sample_facts(sample))

    @staticmethod
    def _render(kind: str, text: str = "", id: int | None = None) -> str:
        try:
            return render_action(Action(kind, text, id))
        except ValueError:
            # A gold text with a tag in it: drop the angle brackets (normalization ignores them anyway).
            return render_action(Action(kind, text.replace("<", "").replace(">", "").strip(), id))

    @staticmethod
    def _status(facts: list[_Fact], per_question: list[list[int]], held: set[int]) -> list[str]:
        lines = []
        for q, idx in enumerate(per_question):
            if idx:
                # Only what a model could know: the documents it has found so far, not the gold fact count.
                titles = list(dict.fromkeys(facts[i].title for i in idx if i in held))
                lines.append(f"Q{q + 1}: have {'; '.join(titles)}" if titles else f"Q{q + 1}: nothing yet")
        return lines

    # -- read phase ------------------------------------------------------------------------------------------

    def _read_turn(self, ep: EpisodeView) -> str:
        cfg, storage = ep.cfg, ep.cfg.use_storage
        facts, per_question = self._sample_facts(ep.sample)
        last = ep.last_chunk
        texts = [e.text for e in ep.stored] if storage else [ep.scratchpad]
        memory = [normalize_answer(t) for t in texts]
        held = {i for i, f in enumerate(facts) if any(f.norm in t for t in memory)}
        # Only entries shown whole can be merged: the model could not rewrite text it never saw.
        shown = [e for e in ep.shown if len(e.text) <= cfg.memory_max_chars] if storage else []
        visible, completes, partial = self._scan(ep, facts, held, shown)

        turn = _ReadTurn()
        if visible:
            turn.reasons.append(self._evidence(facts, visible))
        held |= set(visible)
        query = ""
        if storage:
            self._store(ep, facts, visible, completes, partial, shown, turn)
            self._dedupe(ep, shown, turn)
            # Documents whose other supporting sentences come later, and sentences cut off: look their entry
            # up now, so that it is shown (and can be updated) at the next turn.
            later = {g.doc for j, g in enumerate(facts) if j not in held}
            continuing = [facts[i].title for i in visible if facts[i].doc in later]
            cut = list(dict.fromkeys(facts[i].title for i in partial))
            follow = list(dict.fromkeys(continuing + cut))
            query = self._question_query(ep, facts, per_question, 0) if last else "; ".join(follow)
            reading = bool(query) and query != ep.query
            if cut:
                look = " and look it up" if reading else ""
                turn.reasons.append(
                    f"The paragraph on {_join(cut)} is cut off at the end of the chunk; "
                    f"I store its beginning{look} to complete it."
                )
            rest = [t for t in follow if t not in cut]
            if rest and reading and not last:
                turn.reasons.append(f"The paragraph on {_join(rest)} continues; I look it up to extend it.")
            if last and reading:
                turn.reasons.append("This is the last chunk, so I search memory for question 1.")
        if cfg.use_scratchpad:
            pad = self._pad(ep, facts, per_question, held, visible)
            if pad != ep.scratchpad:
                turn.actions.append(self._render("scratchpad", pad))
                if not storage and visible:
                    turn.reasons.append("I note the facts in the scratchpad.")
        if query and query != ep.query:
            turn.actions.append(self._render("read", query))
        if (
            cfg.protocol == "release"
            and storage
            and not any(a.startswith(("<create", "<update")) for a in turn.actions)
        ):
            # The release moves on only after an addition or a modification: note what this part covers.
            turn.actions.insert(0, self._render("create", _part_note(ep)))
            turn.reasons.append("I note which documents this part of the article covers.")
        return turn.text(_NOTHING[ep.chunk_index % len(_NOTHING)])

    def _scan(
        self, ep: EpisodeView, facts: list[_Fact], held: set[int], shown: list[Entry]
    ) -> tuple[list[int], dict[int, Entry], dict[int, str]]:
        """Facts of this chunk not yet held: (visible, completed entry per fact, beginning per cut-off fact).

        Visible: whole in the chunk, or completed from a beginning shown in memory plus the chunk's start.
        Cut off: the chunk ends with its beginning and the next chunk does not repeat it whole.
        """
        storage = ep.cfg.use_storage
        chunk = _squash(ep.chunk)
        visible: list[int] = []
        completes: dict[int, Entry] = {}
        for i, f in enumerate(facts):
            if i in held:
                continue
            if f.squashed in chunk:
                visible.append(i)
                continue
            b = _head_suffix_start(chunk, f.squashed, self.min_chars) if storage else None
            for e in shown if b is not None else []:
                body = _squash(e.text)
                if body.startswith(f"{f.title}: ") and _stored_beginning(body, f.squashed, self.min_chars) >= b:
                    visible.append(i)
                    completes[i] = e
                    break
        partial: dict[int, str] = {}
        if storage and ep.next_chunk is not None:
            following = _squash(ep.next_chunk)
            for i, f in enumerate(facts):
                if i in held or i in visible or f.squashed in following:
                    continue
                p = _tail_prefix(chunk, f.squashed, self.min_chars)
                if p is not None and not any(_squash(e.text).endswith(p) for e in shown):
                    partial[i] = p
        return visible, completes, partial

    @staticmethod
    def _evidence(facts: list[_Fact], visible: list[int]) -> str:
        by_q: dict[int, list[str]] = {}
        for i in visible:
            for q in facts[i].questions:
                titles = by_q.setdefault(q, [])
                if facts[i].title not in titles:
                    titles.append(facts[i].title)
        parts = [f"Q{q + 1} ({_join(t)})" for q, t in sorted(by_q.items())]
        return f"This chunk has evidence for {_join(parts)}."

    def _store(
        self,
        ep: EpisodeView,
        facts: list[_Fact],
        visible: list[int],
        completes: dict[int, Entry],
        partial: dict[int, str],
        shown: list[Entry],
        turn: _ReadTurn,
    ) -> None:
        """Create, or merge into a shown entry of the same title, this turn's facts (grouped by title)."""
        cfg = ep.cfg
        groups: dict[str, list[str]] = {}
        targets: dict[str, Entry] = {}
        for i in sorted(set(visible) | set(partial), key=lambda i: (facts[i].doc, i)):
            groups.setdefault(facts[i].title, []).append(partial.get(i, facts[i].sentence))
            if i in completes:
                targets.setdefault(facts[i].title, completes[i])
        for title in groups:
            match = [e for e in shown if e.text.startswith(f"{title}: ")]
            if title not in targets and match:
                targets[title] = match[0]
        merged: list[tuple[int, str]] = []
        for title, sentences in groups.items():
            target = targets.get(title)
            if target is not None and target.id not in turn.touched and (cfg.allow_update or cfg.allow_delete):
                text = _merge(target.text, title, sentences, self.min_chars)
                if len(text) <= cfg.action_max_chars:
                    turn.touched.add(target.id)
                    merged.append((target.id, title))
                    if cfg.allow_update:
                        turn.actions.append(self._render("update", text, target.id))
                    else:  # no Update: replace the entry by a merged one
                        turn.actions.append(self._render("delete", id=target.id))
                        turn.actions.append(self._render("create", text))
                    continue
            for body in self._pack(title, sentences, cfg.action_max_chars):
                turn.actions.append(self._render("create", body))
        if merged:
            refs = _join([f"[id {i}]" for i, _ in merged])
            titles = _join([t for _, t in merged])
            turn.reasons.append(f"Memory {refs} already covers {titles}, so I merge the new text into it.")

    @staticmethod
    def _pack(title: str, sentences: Sequence[str], max_chars: int) -> list[str]:
        """Entry texts "Title: s1 s2 ..." of at most ``max_chars`` (the parser cuts one overlong sentence)."""
        bodies: list[str] = []
        for s in sentences:
            if bodies and len(bodies[-1]) + 1 + len(s) <= max_chars:
                bodies[-1] += " " + s
            else:
                bodies.append(f"{title}: {s}")
        return bodies

    def _dedupe(self, ep: EpisodeView, shown: list[Entry], turn: _ReadTurn) -> None:
        """Delete shown entries that another shown entry already contains (duplicates, stale beginnings)."""
        if not ep.cfg.allow_delete:
            return
        norms = {e.id: normalize_answer(e.text) for e in shown}
        for e in shown:
            if e.id in turn.touched:
                continue
            for other in shown:
                if other.id == e.id or other.id in turn.touched:
                    continue
                same = norms[e.id] == norms[other.id]
                if norms[e.id] in norms[other.id] and (not same or e.id > other.id):
                    turn.touched.add(e.id)
                    turn.actions.append(self._render("delete", id=e.id))
                    turn.reasons.append(f"Memory [id {e.id}] repeats memory [id {other.id}], so I delete it.")
                    break

    def _pad(
        self,
        ep: EpisodeView,
        facts: list[_Fact],
        per_question: list[list[int]],
        held: set[int],
        visible: list[int],
    ) -> str:
        """Status per question; without the store, also the facts (grouped by title) that fit."""
        limit = ep.cfg.scratchpad_max_chars or ep.cfg.action_max_chars  # 0 = no cap: one action body
        if ep.cfg.use_storage:
            return _fit_lines(self._status(facts, per_question, held), limit)
        pad_norm = normalize_answer(ep.scratchpad)
        notes = [i for i in range(len(facts)) if facts[i].norm in pad_norm]

        def render(kept: list[int]) -> list[str]:
            by_title: dict[str, list[str]] = {}
            for i in sorted(kept):
                by_title.setdefault(facts[i].title, []).append(facts[i].sentence)
            body = [f"{t}: {' '.join(s)}" for t, s in by_title.items()]
            return self._status(facts, per_question, set(kept)) + (["Notes:"] + body if body else [])

        for i in visible:
            if len("\n".join(render(notes + [i]))) <= limit:
                notes.append(i)  # a fact that does not fit stays unknown rather than cut mid-sentence
        return _fit_lines(render(notes), limit)

    # -- answer phase ----------------------------------------------------------------------------------------

    @staticmethod
    def _question_query(ep: EpisodeView, facts: list[_Fact], per_question: list[list[int]], q: int) -> str:
        titles = list(dict.fromkeys(facts[i].title for i in per_question[q]))
        return " ".join([ep.sample.questions[q].strip(), *titles]).strip()

    def _answer_turn(self, ep: EpisodeView) -> str:
        cfg = ep.cfg
        facts, per_question = self._sample_facts(ep.sample)
        q = ep.question_index
        shown = list(ep.shown) if cfg.use_storage else []
        shown_norm = [normalize_answer(e.text) for e in shown]
        stored = [normalize_answer(e.text) for e in ep.stored] if cfg.use_storage else []
        needed = [facts[i] for i in per_question[q]]
        missing = [f for f in needed if not any(f.norm in t for t in shown_norm) and any(f.norm in t for t in stored)]
        # A read must leave enough LLM calls to answer this question and every later one.
        budget = ep.calls_left > len(ep.sample.questions) - q
        if cfg.use_storage and ep.reads_left > 0 and missing and budget:
            query = self._next_query(ep, facts, per_question, missing)
            if query is not None:
                if any(f.norm in t for f in needed for t in shown_norm):
                    titles = _join(list(dict.fromkeys(f.title for f in missing)))
                    why = f"The memories shown miss {titles}; I look it up."
                else:
                    why = "I search memory for this question."
                return f"{why}\n{self._render('read', query)}"
        answer = ep.sample.answers[q][0].strip()
        if cfg.boxed:
            answer = f"\\boxed{{{answer}}}"
        cited = [e.id for e, t in zip(shown, shown_norm) if any(f.norm in t for f in needed)]
        if cited:
            refs = _join([f"memory [id {i}]" for i in cited])
            why = f"{refs[0].upper()}{refs[1:]} {'gives' if len(cited) == 1 else 'give'} the answer."
        elif not cfg.use_storage and cfg.use_scratchpad and ep.scratchpad:
            why = "My notes in the scratchpad answer the question."
        else:
            why = "I answer from what I read."
        return f"{why}\n{self._render('answer', answer)}"

    def _next_query(
        self, ep: EpisodeView, facts: list[_Fact], per_question: list[list[int]], missing: list[_Fact]
    ) -> str | None:
        """The question with its titles, then the missing titles, then each alone; never the current query."""
        titles = list(dict.fromkeys(f.title for f in missing))
        candidates = [
            self._question_query(ep, facts, per_question, ep.question_index),
            " ".join(titles),
            *titles,
        ]
        candidates = list(dict.fromkeys(c for c in candidates if c))
        attempt = ep.cfg.answer_reads - ep.reads_left
        for c in candidates[attempt:] + candidates[:attempt]:
            if c != ep.query:
                return c
        return None
