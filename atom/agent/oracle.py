"""The oracle teacher: a policy that reads the gold supporting facts and writes ideal CRUD trajectories.

Its replies are SFT demonstrations (DESIGN.md section 3), so each one is what we want a model to write: one or two
short sentences of reasoning, then well-formed actions (``render_action``), using only the operations the episode's
``AgentConfig`` enables, and only ids the model could see in its prompt.

Read phase, per chunk:
- a gold supporting sentence that appears in the chunk (whitespace-insensitive substring) and is not yet held is
  stored as a self-contained fact ``"Title: sentence"``; sentences of one document seen together go into one entry;
- if an entry for that title is among the memories shown this turn, the new sentence is merged into it with
  ``<update>`` (without Update: delete it and create the merged entry; without Delete either: create);
- a sentence cut off by the end of the chunk is stored as its beginning, and a ``<read>`` for its title makes the
  entry visible next turn, where the full sentence (seen whole thanks to the overlap, or completed from the rest
  at the start of the next chunk) replaces it by ``<update>``; the same read is issued when a document with more
  supporting sentences runs into the next chunk;
- a shown entry whose text is contained in another shown entry (a duplicate, a superseded beginning) is deleted;
- the scratchpad keeps one status line per question ("Q1: found 1/2 facts (Title A)") and is rewritten only when
  it changes; without the store, it also holds the facts themselves;
- at the last chunk, a ``<read>`` with the first question and its titles prepares the answer phase.

Answer phase, per question: while the shown memories miss supporting facts that the store holds and reads remain,
``<read>`` (the question and its titles first, then the missing titles); then ``<answer>`` the gold answer (first
alias, boxed when ``boxed_answers``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from atom.agent.actions import Action, render_action
from atom.agent.episode import ANSWER, READ, Episode
from atom.agent.prompts import Messages
from atom.agent.rollout import Reply
from atom.data.longcontext import LongContextSample
from atom.eval.metrics import normalize_answer
from atom.memory.store import Entry

_NOTHING = (
    "Nothing in this chunk helps with the questions.",
    "This chunk has nothing relevant to the questions.",
    "No evidence for the questions here; moving on.",
)


def _squash(text: str) -> str:
    """Whitespace-insensitive form used for matching gold sentences against chunk and memory text."""
    return " ".join(text.split())


@dataclass(frozen=True)
class _Fact:
    doc: int  # document index of its first occurrence
    title: str
    sentence: str  # stripped gold sentence, as written into memory
    squashed: str  # _squash(sentence)
    norm: str  # normalize_answer(sentence): the episode's coverage metric matches on this
    questions: tuple[int, ...]  # questions it supports


def _facts(sample: LongContextSample) -> tuple[list[_Fact], list[list[int]]]:
    """The sample's distinct supporting facts (document order) and, per question, the indices of its facts."""
    by_key: dict[tuple[str, str], dict] = {}
    for q, per_q in enumerate(sample.supporting_facts):
        for d, s in per_q:
            doc = sample.documents[d]
            sentence = doc.sentences[s].strip()
            if not sentence or not normalize_answer(sentence):
                continue
            item = by_key.setdefault((doc.title, _squash(sentence)), {"doc": d, "s": s, "q": []})
            if q not in item["q"]:
                item["q"].append(q)
    ordered = sorted(by_key.items(), key=lambda kv: (kv[1]["doc"], kv[1]["s"]))
    facts = [
        _Fact(v["doc"], title, sentence, _squash(sentence), normalize_answer(sentence), tuple(v["q"]))
        for (title, _), v in ordered
        for sentence in [sample.documents[v["doc"]].sentences[v["s"]].strip()]
    ]
    per_question = [
        [i for i, f in enumerate(facts) if q in f.questions] for q in range(len(sample.questions))
    ]
    return facts, per_question


def _tail_prefix(chunk: str, sentence: str, min_chars: int) -> str | None:
    """The longest beginning of ``sentence`` that ``chunk`` ends with, cut back to whole words (or None)."""
    for i in range(max(0, len(chunk) - len(sentence) + 1), len(chunk) - min_chars + 1):
        tail = chunk[i:]
        if sentence.startswith(tail):
            if len(tail) < len(sentence) and sentence[len(tail)] != " " and " " in tail:
                tail = tail[: tail.rfind(" ")]  # the chunk ends inside a word
            tail = tail.strip()
            return tail if len(tail) >= min_chars else None
    return None


def _head_suffix_start(chunk: str, sentence: str, min_chars: int) -> int | None:
    """Smallest ``b > 0`` such that ``chunk`` starts with ``sentence[b:]`` (at least ``min_chars`` long)."""
    for b in range(1, len(sentence) - min_chars + 1):
        if chunk.startswith(sentence[b:]):
            return b
    return None


def _stored_beginning(body: str, sentence: str, min_chars: int) -> int:
    """Length of the longest word-aligned tail of ``body`` that begins ``sentence`` (0 if under ``min_chars``)."""
    for i in range(max(0, len(body) - len(sentence)), len(body) - min_chars + 1):
        if sentence.startswith(body[i:]) and (i == 0 or body[i - 1] == " "):
            return len(body) - i
    return 0


def _merge(text: str, title: str, sentences: Sequence[str], min_chars: int) -> str:
    """``text`` of a "Title: ..." entry with ``sentences`` added; a trailing beginning of one is replaced."""
    head = f"{title}: "
    body = _squash(text[len(head) :] if text.startswith(head) else text)
    for sentence in sentences:
        s = _squash(sentence)
        if normalize_answer(s) in normalize_answer(body):
            continue
        # A beginning stored at a chunk boundary (see _tail_prefix) is superseded by the whole sentence.
        cut = _stored_beginning(body, s, min_chars)
        body = f"{body[: len(body) - cut].rstrip()} {s}".strip()
    return head + body


class OraclePolicy:
    """Text-only policy for AtomMem ``Episode``s that uses the gold supporting facts (see module docstring).

    Args:
        min_partial_chars: shortest beginning of a cut-off sentence worth storing (shorter ones are left to the
            overlap of the next chunk).
    """

    def __init__(self, min_partial_chars: int = 20):
        if min_partial_chars <= 0:
            raise ValueError(f"min_partial_chars must be > 0, got {min_partial_chars}")
        self.min_partial_chars = min_partial_chars
        self._facts: dict[str, tuple[list[_Fact], list[list[int]]]] = {}

    def act(self, episodes: Sequence[Episode], messages: Sequence[Messages]) -> list[Reply]:
        return [Reply(self.reply(e)) for e in episodes]

    def reply(self, episode: Episode) -> str:
        """The oracle's reply to the episode's current prompt (``messages()`` must have been built)."""
        if not isinstance(episode, Episode):
            raise TypeError(f"OraclePolicy drives AtomMem Episodes only, got {type(episode).__name__}")
        if episode.phase == READ:
            return self._read_turn(episode)
        if episode.phase == ANSWER:
            return self._answer_turn(episode)
        raise RuntimeError("episode is over")

    # -- helpers -----------------------------------------------------------------------------------------------

    def _sample_facts(self, sample: LongContextSample) -> tuple[list[_Fact], list[list[int]]]:
        if sample.id not in self._facts:
            if len(self._facts) >= 256:
                self._facts.clear()
            self._facts[sample.id] = _facts(sample)
        return self._facts[sample.id]

    @staticmethod
    def _shown(episode: Episode) -> list[Entry]:
        shown = getattr(episode, "last_shown", None)
        return list(shown if shown is not None else getattr(episode, "_last_shown", None) or [])

    @staticmethod
    def _render(kind: str, text: str = "", id: int | None = None) -> str:
        try:
            return render_action(Action(kind, text, id))
        except (
            ValueError
        ):  # a gold text that contains a tag: drop the angle brackets (normalization ignores them)
            return render_action(Action(kind, text.replace("<", "").replace(">", "").strip(), id))

    @staticmethod
    def _held(fact: _Fact, texts: Sequence[str]) -> bool:
        return any(fact.norm in t for t in texts)

    def _status(self, facts: list[_Fact], per_question: list[list[int]], held: set[int]) -> list[str]:
        lines = []
        for q, idx in enumerate(per_question):
            if not idx:
                continue
            found = [facts[i] for i in idx if i in held]
            titles = list(dict.fromkeys(f.title for f in found))
            suffix = f" ({'; '.join(titles)})" if titles else ""
            lines.append(f"Q{q + 1}: found {len(found)}/{len(idx)} facts{suffix}")
        return lines

    # -- read phase --------------------------------------------------------------------------------------------

    def _read_turn(self, ep: Episode) -> str:
        cfg = ep.cfg
        facts, per_question = self._sample_facts(ep.sample)
        chunk = _squash(ep.chunks[ep.chunk_index])
        last = ep.chunk_index == len(ep.chunks) - 1
        storage = cfg.use_storage
        store_texts = [normalize_answer(e.text) for e in ep.store.entries()] if storage else []
        pad_text = normalize_answer(ep.scratchpad)
        held_before = {
            i for i, f in enumerate(facts) if self._held(f, store_texts if storage else [pad_text])
        }  # fmt: skip
        shown = [e for e in self._shown(ep) if len(e.text) <= cfg.memory_max_chars] if storage else []

        # Facts whole in this chunk, or completed from a beginning shown in memory plus the rest at its start.
        visible: list[int] = []
        completes: dict[int, Entry] = {}
        for i, f in enumerate(facts):
            if i in held_before:
                continue
            if f.squashed in chunk:
                visible.append(i)
                continue
            b = _head_suffix_start(chunk, f.squashed, self.min_partial_chars) if storage else None
            if b is not None:
                for e in shown:
                    body = _squash(e.text)
                    if (
                        body.startswith(f"{f.title}: ")
                        and _stored_beginning(body, f.squashed, self.min_partial_chars) >= b
                    ):
                        visible.append(i)
                        completes[i] = e
                        break
        partial: dict[int, str] = {}
        if storage and not last:
            for i, f in enumerate(facts):
                if i in held_before or i in visible:
                    continue
                p = _tail_prefix(chunk, f.squashed, self.min_partial_chars)
                if p is not None and not any(_squash(e.text).endswith(p) for e in shown):
                    partial[i] = p

        actions: list[str] = []
        reasons: list[str] = []
        if visible:
            reasons.append(self._evidence_line(facts, visible))
        held_after = held_before | set(visible)
        follow_up: list[str] = []  # titles to look up so that their entry is shown next turn
        if storage:
            touched = self._store_actions(ep, facts, visible, completes, partial, shown, actions, reasons)
            if not last:
                for i in visible:
                    doc_rest = [
                        j
                        for j, g in enumerate(facts)
                        if g.doc == facts[i].doc and j not in held_after and j != i
                    ]
                    if doc_rest and facts[i].title not in follow_up:
                        follow_up.append(facts[i].title)
                for i in partial:
                    if facts[i].title not in follow_up:
                        follow_up.append(facts[i].title)
                if follow_up:
                    titles = ", ".join(follow_up)
                    reasons.append(
                        f"The paragraph on {titles} runs into the next chunk; I look up its memory to complete it."
                    )
            self._dedupe(ep, shown, touched, actions, reasons)

        if cfg.use_scratchpad:
            pad = self._pad(ep, facts, per_question, held_after, visible, storage)
            if pad != ep.scratchpad:
                actions.append(self._render("scratchpad", pad))
                if not storage and visible:
                    reasons.append("I note the facts in the scratchpad.")

        if storage:
            query = ""
            if last and per_question:
                query = self._question_query(ep, facts, per_question, 0)
                if query != ep.query:
                    reasons.append("This is the last chunk, so I search memory for question 1.")
            elif follow_up:
                query = "; ".join(follow_up)
            if query and query != ep.query:
                actions.append(self._render("read", query))
        if not reasons:
            reasons.append(_NOTHING[ep.chunk_index % len(_NOTHING)])
        return " ".join(reasons) + ("\n" + "\n".join(actions) if actions else "")

    def _evidence_line(self, facts: list[_Fact], visible: list[int]) -> str:
        by_q: dict[int, list[str]] = {}
        for i in visible:
            for q in facts[i].questions:
                titles = by_q.setdefault(q, [])
                if facts[i].title not in titles:
                    titles.append(facts[i].title)
        parts = [f"Q{q + 1} ({', '.join(t)})" for q, t in sorted(by_q.items())]
        joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"This chunk has evidence for {joined}."

    def _store_actions(
        self,
        ep: Episode,
        facts: list[_Fact],
        visible: list[int],
        completes: dict[int, Entry],
        partial: dict[int, str],
        shown: list[Entry],
        actions: list[str],
        reasons: list[str],
    ) -> set[int]:
        """Create/update actions for this turn's facts, grouped by title; returns the ids it updates or deletes."""
        cfg = ep.cfg
        groups: dict[str, list[str]] = {}
        targets: dict[str, Entry] = {}
        for i in sorted(set(visible) | set(partial), key=lambda i: (facts[i].doc, i)):
            f = facts[i]
            groups.setdefault(f.title, []).append(partial.get(i, f.sentence))
            if i in completes:
                targets.setdefault(f.title, completes[i])
        for title in groups:
            if title not in targets:
                match = [e for e in shown if e.text.startswith(f"{title}: ")]
                if match:
                    targets[title] = match[0]
        touched: set[int] = set()
        merged_ids: list[int] = []
        for title, sentences in groups.items():
            target = targets.get(title)
            if target is not None and target.id not in touched:
                text = _merge(target.text, title, sentences, self.min_partial_chars)
                if len(text) <= cfg.action_max_chars and (cfg.allow_update or cfg.allow_delete):
                    touched.add(target.id)
                    merged_ids.append(target.id)
                    if cfg.allow_update:
                        actions.append(self._render("update", text, target.id))
                    else:  # no Update: replace the entry
                        actions.append(self._render("delete", id=target.id))
                        actions.append(self._render("create", text))
                    continue
            for body in self._pack(title, sentences, cfg.action_max_chars):
                actions.append(self._render("create", body))
        if merged_ids:
            ids = " and ".join(f"[id {i}]" for i in merged_ids)
            reasons.append(f"Memory {ids} already covers {'this title' if len(merged_ids) == 1 else 'these titles'}, "
                           "so I merge the new text into it.")  # fmt: skip
        if partial:
            reasons.append("One paragraph is cut off at the end of the chunk; I keep its beginning for now.")
        return touched

    @staticmethod
    def _pack(title: str, sentences: Sequence[str], max_chars: int) -> list[str]:
        """ "Title: s1 s2 ..." bodies of at most ``max_chars`` (a longer single sentence is left to the parser's cut)."""
        bodies: list[str] = []
        for s in sentences:
            if bodies and len(bodies[-1]) + 1 + len(s) <= max_chars:
                bodies[-1] += " " + s
            else:
                bodies.append(f"{title}: {s}")
        return bodies

    def _dedupe(
        self, ep: Episode, shown: list[Entry], touched: set[int], actions: list[str], reasons: list[str]
    ):
        """Delete shown entries whose text another shown entry already contains (duplicates, stale beginnings)."""
        if not ep.cfg.allow_delete:
            return
        norms = {e.id: normalize_answer(e.text) for e in shown}
        deleted: list[int] = []
        for e in shown:
            if e.id in touched:
                continue
            for other in shown:
                if other.id == e.id or other.id in touched or other.id in deleted:
                    continue
                same = norms[e.id] == norms[other.id]
                if norms[e.id] in norms[other.id] and (not same or e.id > other.id):
                    deleted.append(e.id)
                    reasons.append(f"Memory [id {e.id}] repeats memory [id {other.id}], so I delete it.")
                    break
        touched.update(deleted)
        actions += [self._render("delete", id=i) for i in deleted]

    def _pad(
        self,
        ep: Episode,
        facts: list[_Fact],
        per_question: list[list[int]],
        held: set[int],
        visible: list[int],
        storage: bool,
    ) -> str:
        """Status per question; without the store, the facts too (as many as fit)."""
        limit = ep.cfg.scratchpad_max_chars
        if storage:
            return "\n".join(self._status(facts, per_question, held))[:limit].strip()
        pad_norm = normalize_answer(ep.scratchpad)
        notes = [i for i in range(len(facts)) if i in held and facts[i].norm in pad_norm]
        for i in visible:
            notes.append(i)
            text = "\n".join(self._status(facts, per_question, set(notes)) + ["Notes:"]
                             + [f"{facts[j].title}: {facts[j].sentence}" for j in sorted(notes)])  # fmt: skip
            if len(text) > limit:
                notes.pop()  # does not fit: the fact stays unknown rather than cut mid-sentence
        body = [f"{facts[j].title}: {facts[j].sentence}" for j in sorted(notes)]
        lines = self._status(facts, per_question, set(notes)) + (["Notes:"] + body if body else [])
        return "\n".join(lines)[:limit].strip()

    # -- answer phase ------------------------------------------------------------------------------------------

    @staticmethod
    def _question_query(ep: Episode, facts: list[_Fact], per_question: list[list[int]], q: int) -> str:
        titles = list(dict.fromkeys(facts[i].title for i in per_question[q]))
        return " ".join([ep.sample.questions[q].strip(), *titles]).strip()

    def _answer_turn(self, ep: Episode) -> str:
        cfg = ep.cfg
        facts, per_question = self._sample_facts(ep.sample)
        q = ep.question_index
        shown = self._shown(ep) if cfg.use_storage else []
        shown_norm = [normalize_answer(e.text) for e in shown]
        store_norm = [normalize_answer(e.text) for e in ep.store.entries()] if cfg.use_storage else []
        needed = [facts[i] for i in per_question[q]] if q < len(per_question) else []
        missing = [f for f in needed if not self._held(f, shown_norm) and self._held(f, store_norm)]
        if cfg.use_storage and ep.reads_left > 0 and missing:
            query = self._next_query(ep, facts, per_question, missing)
            if query is not None:
                titles = ", ".join(dict.fromkeys(f.title for f in missing))
                first = not any(self._held(f, shown_norm) for f in needed)
                why = (
                    "I search memory for this question."
                    if first
                    else f"The memories shown miss {titles}; I look it up."
                )
                return f"{why}\n{self._render('read', query)}"
        answer = ep.sample.answers[q][0].strip()
        if cfg.boxed_answers:
            answer = f"\\boxed{{{answer}}}"
        cited = [e for e, n in zip(shown, shown_norm) if any(f.norm in n for f in needed)]
        if cited:
            refs = " and ".join(f"memory [id {e.id}]" for e in cited)
            why = f"{refs[0].upper()}{refs[1:]} {'gives' if len(cited) == 1 else 'give'} the answer."
        elif not cfg.use_storage and cfg.use_scratchpad and ep.scratchpad:
            why = "My notes in the scratchpad answer the question."
        else:
            why = "I answer from what I read."
        return f"{why}\n{self._render('answer', answer)}"

    def _next_query(
        self, ep: Episode, facts: list[_Fact], per_question: list[list[int]], missing: list[_Fact]
    ) -> str | None:
        """The first untried query: the question with its titles, then the missing titles, then each alone."""
        q = ep.question_index
        titles = list(dict.fromkeys(f.title for f in missing))
        candidates = [self._question_query(ep, facts, per_question, q), " ".join(titles)] + titles
        candidates = list(dict.fromkeys(c for c in candidates if c))
        attempt = ep.cfg.answer_reads - ep.reads_left
        for c in candidates[attempt:] + candidates[:attempt]:
            if c != ep.query:
                return c
        return None
