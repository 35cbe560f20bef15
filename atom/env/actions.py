"""The action grammar of the AtomMem policy and its parser. A model reply is untrusted text.

Grammar (tag names are case-insensitive; ``N`` is a non-negative ASCII decimal integer):

    <create>fact</create>             Create: store a new memory entry.
    <read>query</read>                Read: set the retrieval query. Its top-k results, with their store
                                      ids, are shown at the NEXT step.
    <update id="N">new text</update>  Update: replace the text of store entry N.
    <delete id="N"/>                  Delete: remove store entry N (``<delete id="N"></delete>`` too).
    <scratchpad>text</scratchpad>     Overwrite the scratchpad. An empty body or ``<scratchpad/>`` clears it.
    <answer>text</answer>             Answer the current question (answer phase).

Everything outside action tags is free reasoning and is ignored. Rules, applied in this order:

1. Input that is not a ``str`` parses as ``""``: no actions, nothing counted. ``parse_actions`` never
   raises for any ``text`` and never evaluates anything.
2. Reasoning: ``<think>...</think>`` spans are removed before anything else. An unclosed ``<think>``
   removes the rest of the reply. If the first think tag is a ``</think>``, everything before it is
   removed too (chat templates such as Qwen3-Thinking-2507 open the ``<think>`` in the prompt). Other
   stray ``</think>`` are dropped.
3. A *tag* is ``<name>``, ``<name attrs>``, ``<name/>``, ``<name attrs/>`` or ``</name>``. ``name`` is an
   ASCII letter followed by letters, digits, ``_`` or ``-``, with no space after ``<``. ``attrs`` begins
   with whitespace or ``/`` and contains no ``<`` or ``>``. Anything else is prose (``a < b``, ``<3``,
   ``< create>``).
4. Attributes: ``update`` and ``delete`` need exactly one attribute, ``id``, written ``id="N"``,
   ``id='N'`` or ``id=N``, with optional spaces around ``=``. An id such as ``abc``, ``-1``, ``7.5``,
   ``1e3``, non-ASCII digits or more than 18 digits, or a missing id, makes the action invalid. The other
   four kinds take no attribute, and an attribute makes them invalid.
5. Bodies: the body of ``<kind>`` ends at the FIRST following ``</kind>`` and is stripped of surrounding
   whitespace. A body longer than ``max_text_chars`` is cut to that length, which does not make it invalid.
   An empty body is invalid for create, read, update and answer (it clears the scratchpad). A non-empty body
   without a letter or digit (``...``, ``-``) is invalid for all five: the system prompt writes the grammar with
   such placeholders, so copying it executes nothing. A delete must have an empty body.
6. Nesting: if a body contains any action tag or think tag (an open, close or self-closing tag of the six
   kinds or of think), the outer action is invalid. Nothing inside it is executed or counted, and parsing
   resumes after its close tag. So prose about an action inside a scratchpad
   (``<scratchpad>next: <delete id="3"/></scratchpad>``) never deletes anything.
7. Unclosed: an open tag of create, read, update, scratchpad or answer with no ``</kind>`` after it is
   invalid for that kind and takes the rest of the reply with it. The usual cause is generation stopping
   at the token limit, and an action inside a truncated body is not clearly meant. A non-self-closing
   ``<delete id="N">`` that is not directly followed by ``</delete>`` is invalid, and parsing continues
   right after it, because a delete has no body to swallow.
8. Truncated tag: if the reply ends inside a tag, that is, the text after its last ``<`` has no ``>``
   (``<crea``, ``<update id="3``), this counts once as invalid for the kind the tag names. A prefix is
   enough, because the six kinds start with six different letters.
9. Stray close tags of the six kinds (``</create>`` with no open tag) count as invalid for that kind.
10. Unknown tags outside action bodies count as ``"unknown"``: each self-closing ``<foo/>`` counts once,
    and so does each ``<foo>`` that gets a later ``</foo>`` (names compared case-insensitively).
    Unpaired ``<br>`` or ``</foo>`` in prose count nothing. Unknown tags are transparent, so actions
    between ``<foo>`` and ``</foo>`` are parsed.

Parsing is linear in the length of the reply. One regex pass finds the tags, and no pattern can
backtrack past the next ``<`` or ``>``. Then every tag is visited once.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

ACTION_KINDS = ("create", "read", "update", "delete", "scratchpad", "answer")
UNKNOWN = "unknown"  # key of ParseResult.invalid for unknown tags
_ID_KINDS = ("update", "delete")
_STRUCTURAL = frozenset(ACTION_KINDS + ("think",))  # tags that may not appear inside an action body
_MAX_ID_DIGITS = 18  # longer ids cannot name a store entry; cap them so int() stays cheap and never raises

# Groups: 1 "/" of a close tag, 2 name, 3 attributes (with a trailing "/" for a self-closing tag).
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9_\-]*)((?:[\s/][^<>]*)?)>")
_THINK = re.compile(r"<(/?)think((?:[\s/][^<>]*)?)>", re.IGNORECASE)
_ID_ATTR = re.compile(r"\s*id\s*=\s*(?:\"([0-9]+)\"|'([0-9]+)'|([0-9]+))\s*", re.IGNORECASE | re.ASCII)
_TAIL = re.compile(r"<([A-Za-z]*)(.*)", re.DOTALL)


@dataclass(frozen=True)
class Action:
    """One parsed action. Ids are stable store ids, never positions in a shown list."""

    kind: str  # one of ACTION_KINDS
    text: str = ""  # body (empty for delete)
    id: int | None = None  # target store id for update/delete, None otherwise

    def __post_init__(self) -> None:
        if self.kind not in ACTION_KINDS:
            raise ValueError(f"Action.kind must be one of {ACTION_KINDS}, got {self.kind!r}")
        if not isinstance(self.text, str):
            raise ValueError(f"Action.text must be a str, got {type(self.text).__name__}")
        if self.kind in _ID_KINDS:
            if not isinstance(self.id, int) or isinstance(self.id, bool) or self.id < 0:
                raise ValueError(f"Action.id of a {self.kind} must be an int >= 0, got {self.id!r}")
        elif self.id is not None:
            raise ValueError(f"Action.id must be None for a {self.kind}, got {self.id!r}")
        if self.kind == "delete" and self.text:
            raise ValueError(f"Action.text must be empty for a delete, got {self.text!r}")


@dataclass
class ParseResult:
    actions: list[Action] = field(default_factory=list)  # valid actions in the order they appear
    invalid: Counter = field(default_factory=Counter)  # ignored actions by kind: ACTION_KINDS plus "unknown"

    @property
    def num_invalid(self) -> int:
        return sum(self.invalid.values())


class _Tag(NamedTuple):
    start: int
    end: int
    name: str  # lower-cased
    closing: bool
    self_closing: bool
    attrs: str  # attribute text without the self-closing "/"


def _tags(text: str) -> list[_Tag]:
    tags = []
    for m in _TAG.finditer(text):
        slash, name, attrs = m.groups()
        closing, self_closing = slash == "/", False
        if attrs and not closing:
            stripped = attrs.rstrip()
            if stripped.endswith("/"):
                self_closing, attrs = True, stripped[:-1]
        start, end = m.span()
        tags.append(_Tag(start, end, name.lower(), closing, self_closing, attrs))
    return tags


def strip_think(text: str) -> str:
    """Rule 2: remove reasoning spans (the baselines use it too, on replies that are not actions)."""
    pieces: list[str] = []
    pos = 0
    inside = False
    first = True
    for m in _THINK.finditer(text):
        closing = bool(m.group(1))
        self_closing = not closing and m.group(2).rstrip().endswith("/")
        if inside:
            if closing:
                inside, pos = False, m.end()
        elif closing:
            if not first:
                pieces.append(text[pos : m.start()])
            pos = m.end()
        else:
            pieces.append(text[pos : m.start()])
            inside, pos = not self_closing, m.end()
        first = False
    if not inside:
        pieces.append(text[pos:])
    return "".join(pieces)


def _parse_id(attrs: str) -> int | None:
    m = _ID_ATTR.fullmatch(attrs)
    if m is None:
        return None
    digits = m.group(1) or m.group(2) or m.group(3)
    return int(digits) if len(digits) <= _MAX_ID_DIGITS else None


def _build(tag: _Tag, body: str, max_text_chars: int) -> Action | None:
    """The action of an open tag and its body, or None when rules 4-5 make it invalid."""
    action_id = None
    if tag.name in _ID_KINDS:
        action_id = _parse_id(tag.attrs)
        if action_id is None:
            return None
    elif tag.attrs.strip():
        return None
    text = body.strip()
    if tag.name == "delete":
        return None if text else Action("delete", "", action_id)
    if len(text) > max_text_chars:
        text = text[:max_text_chars].rstrip()
    if (text or tag.name != "scratchpad") and not any(ch.isalnum() for ch in text):
        return None  # empty (a scratchpad may clear), or a placeholder such as "..." (the prompt's grammar uses them)
    return Action(tag.name, text, action_id)


def _truncated_kind(tail: str) -> str | None:
    """Rule 8: the kind named by a tag cut off at the end of the reply, if any."""
    lt = tail.rfind("<")
    if lt < 0 or ">" in tail[lt:]:
        return None
    m = _TAIL.fullmatch(tail, lt)
    name, rest = m.group(1).lower(), m.group(2)
    if not name:
        return None
    if not rest:
        matches = [kind for kind in ACTION_KINDS if kind.startswith(name)]
        return matches[0] if len(matches) == 1 else None
    if rest[0].isspace() or rest[0] == "/":
        return name if name in ACTION_KINDS else None
    return None


def valid_unicode(text: str) -> str:
    """``text`` with lone surrogates (which no file, JSON or tokenizer can hold, and the store refuses) replaced
    by U+FFFD, so a reply with one still parses into storable actions."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def parse_actions(text: str, max_text_chars: int = 2000) -> ParseResult:
    """Parse the actions of one model reply (see the module docstring for the grammar and its rules).

    Args:
        text: the reply. Anything that is not a str parses as "".
        max_text_chars: bodies are cut to this many characters (must be > 0).
    """
    if isinstance(max_text_chars, bool) or not isinstance(max_text_chars, int) or max_text_chars <= 0:
        raise ValueError(f"max_text_chars must be an int > 0, got {max_text_chars!r}")
    result = ParseResult()
    if not isinstance(text, str) or not text:
        return result
    clean = strip_think(text)
    tags = _tags(clean)
    pending_unknown: dict[str, int] = {}  # open unknown tags still waiting for their close, by name
    consumed_to = 0  # end of the last tag handled; the truncated-tag check looks after it
    i = 0
    while i < len(tags):
        tag = tags[i]
        if tag.name == "think":  # only reachable when removing think spans spliced a new think tag together
            if tag.closing or tag.self_closing:
                i, consumed_to = i + 1, tag.end
                continue
            j = next((k for k in range(i + 1, len(tags)) if tags[k].name == "think" and tags[k].closing), None)
            if j is None:
                return result
            i, consumed_to = j + 1, tags[j].end
            continue
        if tag.name not in ACTION_KINDS:
            if tag.self_closing:
                result.invalid[UNKNOWN] += 1
            elif tag.closing:
                if pending_unknown.get(tag.name, 0) > 0:
                    pending_unknown[tag.name] -= 1
                    result.invalid[UNKNOWN] += 1
            else:
                pending_unknown[tag.name] = pending_unknown.get(tag.name, 0) + 1
            i, consumed_to = i + 1, tag.end
            continue
        if tag.closing:  # rule 9
            result.invalid[tag.name] += 1
            i, consumed_to = i + 1, tag.end
            continue
        if tag.self_closing:
            close, body = None, ""
        elif tag.name == "delete":  # rule 7, second part: a delete never swallows what follows
            nxt = tags[i + 1] if i + 1 < len(tags) else None
            if nxt is None or not (nxt.closing and nxt.name == "delete"):
                result.invalid["delete"] += 1
                i, consumed_to = i + 1, tag.end
                continue
            close, body = i + 1, clean[tag.end : nxt.start]
        else:
            close, nested = i + 1, False
            while close < len(tags) and not (tags[close].closing and tags[close].name == tag.name):
                nested = nested or tags[close].name in _STRUCTURAL
                close += 1
            if close == len(tags):  # rule 7: unclosed, takes the rest of the reply
                result.invalid[tag.name] += 1
                return result
            if nested:  # rule 6
                result.invalid[tag.name] += 1
                i, consumed_to = close + 1, tags[close].end
                continue
            body = clean[tag.end : tags[close].start]
        action = _build(tag, body, max_text_chars)
        if action is None:
            result.invalid[tag.name] += 1
        else:
            result.actions.append(action)
        last = tag if close is None else tags[close]
        i, consumed_to = (i + 1 if close is None else close + 1), last.end
    kind = _truncated_kind(clean[consumed_to:])
    if kind is not None:
        result.invalid[kind] += 1
    return result


def render_action(action: Action) -> str:
    """The canonical text of ``action``: ``parse_actions(render_action(a)).actions == [a]``.

    The round trip holds when ``len(action.text) <= max_text_chars`` of the parse. Raises ValueError for an
    action no reply could produce: a body with surrounding whitespace, an empty body (except for the
    scratchpad), a body without a letter or digit, or a body that contains an action or think tag.
    """
    if not isinstance(action, Action):
        raise TypeError(f"render_action expects an Action, got {type(action).__name__}")
    if action.kind == "delete":
        return f'<delete id="{action.id}"/>'
    text = action.text
    if text != text.strip():
        raise ValueError(f"cannot render a {action.kind} whose text has surrounding whitespace: {text!r}")
    if not text and action.kind != "scratchpad":
        raise ValueError(f"cannot render a {action.kind} with an empty text")
    if text and not any(ch.isalnum() for ch in text):
        raise ValueError(f"cannot render a {action.kind} whose text has no letter or digit (a placeholder): {text!r}")
    for tag in _tags(text):
        if tag.name in _STRUCTURAL:
            raise ValueError(f"cannot render a {action.kind} whose text contains the tag {text[tag.start : tag.end]!r}")
    attr = f' id="{action.id}"' if action.kind == "update" else ""
    return f"<{action.kind}{attr}>{text}</{action.kind}>"
