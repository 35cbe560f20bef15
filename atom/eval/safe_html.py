"""Untrusted text (model replies, dataset text) as HTML that shows exactly what the text holds and nothing more.

``escape`` HTML-escapes and also makes invisible or deceptive code points visible: C0/C1 control characters (NUL,
ESC, ...; newline and tab are kept), DEL, bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069, plus
the LRM/RLM/ALM marks), zero-width characters, and lone surrogates (which could not even be written as UTF-8). Each
becomes a small ``<span class="cp">U+XXXX</span>`` badge, so a reply cannot reorder what the reader sees.
``highlight`` escapes a text while wrapping given character spans in elements of a class (gold facts, actions).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence

# Invisible or reordering code points, shown as badges instead of being passed through.
_HIDDEN = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\u2066-\u2069"
    "\ufeff\ufff9-\ufffb\ud800-\udfff]"
)


def _badge(match: re.Match) -> str:
    return f'<span class="cp">U+{ord(match.group()):04X}</span>'


def escape(text: object) -> str:
    """HTML for ``text`` (any object, shown with ``str``): escaped, hidden code points made visible."""
    return _HIDDEN.sub(_badge, html.escape(str(text), quote=True))


def merge_spans(spans: Iterable[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Sort ``(start, end, cls)`` spans and drop any that overlaps an earlier-starting kept span."""
    out: list[tuple[int, int, str]] = []
    for start, end, cls in sorted(spans):
        if end > start and (not out or start >= out[-1][1]):
            out.append((start, end, cls))
    return out


def highlight(text: str, spans: Sequence[tuple[int, int, str]], tag: str = "mark") -> str:
    """Escaped ``text`` with each ``(start, end, cls)`` span wrapped in ``<tag class="cls">`` (overlaps dropped)."""
    parts, pos = [], 0
    for start, end, cls in merge_spans(spans):
        parts.append(escape(text[pos:start]))
        parts.append(f'<{tag} class="{escape(cls)}">{escape(text[start:end])}</{tag}>')
        pos = end
    parts.append(escape(text[pos:]))
    return "".join(parts)


def find_all(text: str, needle: str) -> list[tuple[int, int]]:
    """Every non-overlapping occurrence of ``needle`` in ``text`` as ``(start, end)``."""
    if not needle:
        return []
    out, pos = [], text.find(needle)
    while pos >= 0:
        out.append((pos, pos + len(needle)))
        pos = text.find(needle, pos + len(needle))
    return out


_ACTION_TAG = re.compile(r"<(/?)(create|read|update|delete|scratchpad|answer)\b[^<>]*?(/?)>", re.IGNORECASE)


def action_spans(reply: str) -> list[tuple[int, int, str]]:
    """Character spans of the action tags of ``reply`` (open tag to its close tag), classed by kind.

    For display only: what an action really did is the episode's trace (the parser in atom/env/actions.py
    decides); an open tag without its close tag is marked ``act bad``.
    """
    spans, pos = [], 0
    while (m := _ACTION_TAG.search(reply, pos)) is not None:
        kind = m.group(2).lower()
        if m.group(1):  # stray close tag
            spans.append((m.start(), m.end(), "act bad"))
            pos = m.end()
            continue
        if m.group(3):  # self-closing
            spans.append((m.start(), m.end(), f"act {kind}"))
            pos = m.end()
            continue
        close = re.compile(rf"</{kind}\s*>", re.IGNORECASE).search(reply, m.end())
        if close is None:
            spans.append((m.start(), m.end(), "act bad"))
            pos = m.end()
        else:
            spans.append((m.start(), close.end(), f"act {kind}"))
            pos = close.end()
    return spans


def attr(text: object) -> str:
    """``text`` for an HTML attribute value (quoted with ``"``): escaped, hidden code points as U+FFFD."""
    return html.escape(_HIDDEN.sub("\ufffd", str(text)), quote=True)
