"""What each turn of an AtomMem episode did, for the trajectory viewer: the effect of every action and the state after.

The episode notes each action's effect as it validates (``observe``) and executes (``commit``) it, then closes the
turn with a snapshot of the store, the scratchpad and the read query. The engine attaches the closed ``TurnTrace``
to the turn it records (``Turn.trace``). Nothing here feeds training: it is a record for people, kept apart from the
episode's rules so that those stay readable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from atom.memory.store import Entry

# Effect.status values
CREATED, UPDATED, DELETED, READ_SET, SCRATCHPAD_SET, ANSWERED, INVALID = (
    "created", "updated", "deleted", "read", "scratchpad", "answered", "invalid",
)  # fmt: skip


@dataclass(frozen=True)
class Effect:
    """The outcome of one action of a reply."""

    kind: str  # action kind (create/read/update/delete/scratchpad/answer) or "unknown" (an unknown tag)
    status: str  # one of the constants above
    id: int | None = None  # store id created, updated or deleted (or named by an invalid update/delete)
    text: str = ""  # new text / query / answer / scratchpad
    old_text: str | None = None  # update and delete: the entry's text before the action
    reason: str = ""  # invalid: why the action was not executed


@dataclass(frozen=True)
class TurnTrace:
    """One turn as a person reads it: what the prompt showed, what each action did, the state after the turn."""

    phase: str  # "read" or "answer"
    chunk_index: int | None  # read phase: the chunk this turn consumed
    question_index: int | None  # answer phase: the question being asked
    shown: tuple[Entry, ...]  # memories the prompt showed (results of the persistent read query)
    effects: tuple[Effect, ...]  # in reply order: invalid ones first as the parser found them, then executed ones
    store: tuple[Entry, ...]  # live entries after the turn, ascending id
    scratchpad: str | None  # after the turn; None when the scratchpad is switched off
    query: str  # the read query in force after the turn


@dataclass
class TraceRecorder:
    """Collects effects during a turn; ``close`` turns them into a ``TurnTrace``."""

    turns: list[TurnTrace] = field(default_factory=list)
    _effects: list[Effect] = field(default_factory=list)

    def note(self, effect: Effect) -> None:
        self._effects.append(effect)

    def invalid(self, kind: str, reason: str, id: int | None = None, text: str = "") -> None:
        self._effects.append(Effect(kind, INVALID, id=id, text=text, reason=reason))

    def close(self, phase: str, chunk_index: int | None, question_index: int | None, shown: list[Entry],
              store: list[Entry], scratchpad: str | None, query: str) -> TurnTrace:  # fmt: skip
        turn = TurnTrace(
            phase, chunk_index, question_index, tuple(shown), tuple(self._effects), tuple(store), scratchpad, query
        )
        self._effects = []
        self.turns.append(turn)
        return turn
