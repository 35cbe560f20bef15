"""The trajectory viewer: one self-contained HTML page per evaluation (``trajectories.html``).

For every episode, turn by turn: the chunk read (folded, gold supporting sentences marked), the memories the read
query returned, the reply with each action highlighted by kind, the effect of each action (created / updated with
the old text / deleted / invalid with its reason), the store and the scratchpad after the turn; per question the
prediction, the gold answers and where each gold supporting fact went (the chunks holding it, the store at the end
of reading, the memories shown when the question was answered). A summary table of the episodes sorts by any
column and filters by method, reward, invalid actions and sample id.

The page loads nothing from the network (inline CSS and a few lines of inline JavaScript). All model and dataset
text goes through ``atom.eval.safe_html``, so a reply can neither inject markup nor hide or reorder text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from atom.data.longcontext import LongContextSample
from atom.env import trace as tr
from atom.env.rewards import normalize_answer
from atom.env.rollout import Trajectory, Turn
from atom.eval.safe_html import action_spans, attr, escape, find_all, highlight
from atom.memory.store import Entry

ChunksOf = Callable[[LongContextSample], list[str]]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; max-width: 90em; color: #222; }
table.summary { border-collapse: collapse; font-size: 0.9em; }
table.summary th, table.summary td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
table.summary th { background: #eee; cursor: pointer; user-select: none; }
table.summary td.txt { text-align: left; }
table.summary tbody tr { cursor: pointer; } table.summary tbody tr:hover { background: #f3f7ff; }
.filters { margin: 0.8em 0; display: flex; gap: 1em; flex-wrap: wrap; align-items: center; }
details.episode { border: 1px solid #bbb; border-radius: 6px; margin: 0.6em 0; padding: 0.3em 0.8em; }
details.episode > summary { font-weight: 600; cursor: pointer; }
.turn { border-left: 4px solid #8ab; margin: 0.7em 0; padding-left: 0.8em; }
.turn.answer { border-color: #b8a; }
.meta { color: #555; font-size: 0.85em; }
pre { white-space: pre-wrap; word-break: break-word; background: #f6f6f6; padding: 0.4em; margin: 0.25em 0; }
.ok { color: #080; font-weight: 600; } .bad { color: #b00; font-weight: 600; }
mark.gold { background: #ffe066; } .goldtag { background: #ffe066; font-size: 0.8em; padding: 0 0.3em; }
.cp { border: 1px solid #c00; color: #c00; font-size: 0.75em; padding: 0 0.15em; font-family: monospace; }
.act { border-radius: 3px; padding: 0 0.1em; }
.act.create { background: #d4f5d4; } .act.read { background: #d6e6ff; } .act.update { background: #ffe8c2; }
.act.delete { background: #ffd6d6; } .act.scratchpad { background: #ecdcff; } .act.answer { background: #c9f1f1; }
.act.bad { background: #ddd; text-decoration: underline wavy #b00; }
ul.effects { margin: 0.2em 0; padding-left: 1.2em; } ul.effects li.invalid { color: #b00; }
ol.entries { margin: 0.2em 0; font-size: 0.9em; } .eid { font-family: monospace; color: #555; }
del { background: #fdd; } ins { background: #dfd; text-decoration: none; }
"""

_SCRIPT = """
const table = document.getElementById('summary');
const rows = () => Array.from(table.tBodies[0].rows);
function applyFilters() {
  const method = document.getElementById('f-method').value;
  const lo = parseFloat(document.getElementById('f-min').value);
  const hi = parseFloat(document.getElementById('f-max').value);
  const inv = document.getElementById('f-invalid').checked;
  const text = document.getElementById('f-text').value.toLowerCase();
  let shown = 0;
  for (const r of rows()) {
    const rew = parseFloat(r.dataset.reward);
    const ok = (!method || r.dataset.method === method) && !(rew < lo) && !(rew > hi)
      && (!inv || parseInt(r.dataset.invalid) > 0) && (!text || r.dataset.sample.toLowerCase().includes(text));
    r.hidden = !ok;
    document.getElementById(r.dataset.ep).hidden = !ok;
    shown += ok;
  }
  document.getElementById('f-count').textContent = shown + ' of ' + rows().length + ' episodes';
}
for (const id of ['f-method', 'f-min', 'f-max', 'f-invalid', 'f-text']) {
  document.getElementById(id).addEventListener('input', applyFilters);
}
table.tHead.querySelectorAll('th').forEach((th, col) => th.addEventListener('click', () => {
  const desc = th.dataset.dir !== 'desc';
  table.tHead.querySelectorAll('th').forEach(h => delete h.dataset.dir);
  th.dataset.dir = desc ? 'desc' : 'asc';
  const key = r => { const v = r.cells[col].dataset.v; const n = parseFloat(v); return isNaN(n) ? v : n; };
  const sorted = rows().sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (desc ? -1 : 1));
  sorted.forEach(r => table.tBodies[0].appendChild(r));
}));
for (const r of rows()) r.addEventListener('click', () => {
  const ep = document.getElementById(r.dataset.ep);
  ep.open = true;
  ep.scrollIntoView();
});
applyFilters();
"""


class _Gold:
    """The gold supporting sentences of a sample: raw (to find in chunks) and normalised (to find in memories)."""

    def __init__(self, sample: LongContextSample):
        self.facts = [
            (q, sample.documents[d].sentences[s].strip())
            for q, per_q in enumerate(sample.supporting_facts)
            for d, s in per_q
            if 0 <= d < len(sample.documents) and 0 <= s < len(sample.documents[d].sentences)
        ]
        self.norm = [normalize_answer(f) for _, f in self.facts]

    def in_chunk(self, chunk: str) -> list[tuple[int, int, str]]:
        return [(a, b, "gold") for _, f in self.facts for a, b in find_all(chunk, f)]

    def held_by(self, text: str) -> list[int]:
        """Indices of the facts whose normalised sentence ``text`` contains (the metric's facts_stored rule)."""
        t = normalize_answer(text)
        return [i for i, f in enumerate(self.norm) if f and f in t]


def _entries(entries: Sequence[Entry], gold: _Gold, empty: str) -> str:
    if not entries:
        return f'<div class="meta">{empty}</div>'
    items = []
    for e in entries:
        tag = ' <span class="goldtag">gold fact</span>' if gold.held_by(e.text) else ""
        items.append(f'<li><span class="eid">#{e.id}</span> {escape(e.text)}{tag}</li>')
    return f'<ol class="entries">{"".join(items)}</ol>'


def _effect(e: tr.Effect) -> str:
    ident = f"#{e.id}" if e.id is not None else ""
    if e.status == tr.CREATED:
        body = f"created {ident}: {escape(e.text)}"
    elif e.status == tr.UPDATED:
        body = f"updated {ident}: <del>{escape(e.old_text or '')}</del> &rarr; <ins>{escape(e.text)}</ins>"
    elif e.status == tr.DELETED:
        body = f"deleted {ident} (was: {escape(e.old_text or '')})"
    elif e.status == tr.READ_SET:
        body = f"read query set: {escape(e.text)} (results show from the next turn)"
    elif e.status == tr.SCRATCHPAD_SET:
        body = f"scratchpad overwritten ({len(e.text)} chars)"
    elif e.status == tr.ANSWERED:
        body = f"answered: {escape(e.text)}"
    else:
        shown = f": {escape(e.text[:200])}" if e.text else ""
        body = f"invalid {escape(e.kind)} {ident} &mdash; {escape(e.reason)}{shown}"
    return f'<li class="{attr(e.status)}">{body}</li>'


def _turn(i: int, turn: Turn, chunks: list[str] | None, gold: _Gold, sample: LongContextSample, query: str) -> str:
    t = turn.trace
    head = [f"turn {i + 1}", escape(turn.phase)]
    parts = []
    if t is not None and t.chunk_index is not None and chunks is not None and t.chunk_index < len(chunks):
        chunk = chunks[t.chunk_index]
        spans = gold.in_chunk(chunk)
        head.append(f"chunk {t.chunk_index + 1}/{len(chunks)}")
        mark = f' &middot; <span class="goldtag">{len(spans)} gold sentence(s)</span>' if spans else ""
        parts.append(
            f"<details><summary>chunk {t.chunk_index + 1} ({len(chunk)} chars){mark}</summary>"
            f"<pre>{highlight(chunk, spans)}</pre></details>"
        )
    elif t is not None and t.question_index is not None:
        head.append(f"question {t.question_index + 1}")
        parts.append(f"<div>asked: <b>{escape(sample.questions[t.question_index])}</b></div>")
    if t is None or t.chunk_index is None or chunks is None:  # no chunk to show: the whole prompt, folded
        parts.append(f"<details><summary>prompt</summary><pre>{escape(turn.messages[-1]['content'])}</pre></details>")
    if t is not None:
        q = f" for <i>{escape(query)}</i>" if query else " (no read query yet)"
        parts.append(f"<div class='meta'>read returned{q}:</div>{_entries(t.shown, gold, 'no memories shown')}")
    parts.append(f'<pre class="reply">{highlight(turn.reply.text, action_spans(turn.reply.text), "span")}</pre>')
    if t is not None:
        invalid = sum(e.status == tr.INVALID for e in t.effects)
        head.append(f"{len(t.effects) - invalid} action(s)" + (f", {invalid} invalid" if invalid else ""))
        if t.effects:
            parts.append(f'<ul class="effects">{"".join(_effect(e) for e in t.effects)}</ul>')
        parts.append(
            f"<details><summary>store after the turn: {len(t.store)} entries</summary>"
            f"{_entries(t.store, gold, 'empty store')}</details>"
        )
        if t.scratchpad is not None:
            parts.append(f"<details><summary>scratchpad ({len(t.scratchpad)} chars)</summary>"
                         f"<pre>{escape(t.scratchpad)}</pre></details>")  # fmt: skip
    return (
        f'<div class="turn {attr(turn.phase)}"><div class="meta">{" &middot; ".join(head)}</div>{"".join(parts)}</div>'
    )


def _gold_table(traj: Trajectory, sample: LongContextSample, gold: _Gold, chunks: list[str] | None) -> str:
    if not gold.facts:
        return ""
    traces = [t.trace for t in traj.turns if t.trace is not None]
    reading = [t for t in traces if t.phase == "read"]
    final_store = reading[-1].store if reading else ()
    shown_at_answer: dict[int, tuple[Entry, ...]] = {}
    for t in traces:
        if t.question_index is not None:
            shown_at_answer[t.question_index] = t.shown  # the last answer turn of the question
    rows = []
    for i, (q, fact) in enumerate(gold.facts):
        where_chunk = [str(c + 1) for c, text in enumerate(chunks or []) if fact and fact in text]
        stored = [f"#{e.id}" for e in final_store if i in gold.held_by(e.text)]
        shown = [f"#{e.id}" for e in shown_at_answer.get(q, ()) if i in gold.held_by(e.text)]
        rows.append(
            f"<tr><td>{q + 1}</td><td class='txt'>{escape(fact)}</td>"
            f"<td>{', '.join(where_chunk) or ('-' if chunks is not None else '?')}</td>"
            f"<td>{', '.join(stored) or '-'}</td><td>{', '.join(shown) or '-'}</td></tr>"
        )
    return (
        "<details><summary>gold supporting facts: where they went</summary><table class='summary'><thead><tr>"
        "<th>q</th><th>sentence</th><th>in chunk</th><th>in store after reading</th><th>shown at answer</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></details>"
    )


def _episode(ep: str, method: str, traj: Trajectory, sample: LongContextSample, chunks: list[str] | None) -> str:
    r = traj.result
    gold = _Gold(sample)
    qs = []
    for q, pred, answers, em in zip(sample.questions, r.predictions, sample.answers, r.em):
        qs.append(
            f'<li>{escape(q)} &rarr; <span class="{"ok" if em else "bad"}">'
            f"{'(no answer)' if pred is None else escape(pred)}</span> "
            f"(gold: {escape(' | '.join(answers))})</li>"
        )
    turns, query = [], ""  # the query in force before a turn is the one whose results its prompt showed
    for i, t in enumerate(traj.turns):
        turns.append(_turn(i, t, chunks, gold, sample, query))
        query = t.trace.query if t.trace is not None else query
    return (
        f'<details class="episode" id="{attr(ep)}"><summary>{escape(method)} &middot; {escape(r.sample_id)} '
        f"&middot; reward {r.reward:.2f} &middot; {len(traj.turns)} turns &middot; "
        f"{sum(r.stats.invalid.values())} invalid</summary><ul>{''.join(qs)}</ul>"
        f"{_gold_table(traj, sample, gold, chunks)}{''.join(turns)}</details>"
    )


_COLUMNS = ("#", "method", "sample", "questions", "reward", "turns", "create", "read", "update", "delete",
            "invalid", "store", "facts stored %")  # fmt: skip


def _summary_row(n: int, ep: str, method: str, traj: Trajectory) -> str:
    r, s = traj.result, traj.result.stats
    invalid = sum(s.invalid.values())
    stored = "" if r.facts_stored is None else f"{100 * r.facts_stored:.0f}"
    cells = [n, method, r.sample_id, len(r.em), f"{r.reward:.2f}", len(traj.turns), s.ops["create"], s.ops["read"],
             s.ops["update"], s.ops["delete"], invalid, s.store_sizes[-1] if s.store_sizes else 0, stored]  # fmt: skip
    tds = "".join(
        f'<td data-v="{attr(c)}"{" class=txt" if isinstance(c, str) and i in (1, 2) else ""}>{escape(c)}</td>'
        for i, c in enumerate(cells)
    )
    return (
        f'<tr data-ep="{attr(ep)}" data-method="{attr(method)}" data-reward="{r.reward:.4f}" '
        f'data-invalid="{invalid}" data-sample="{attr(r.sample_id)}">{tds}</tr>'
    )


def render(
    trajectories: dict[str, list[Trajectory]],
    samples: Sequence[LongContextSample],
    chunks_of: ChunksOf | None = None,
    max_episodes: int = 50,
    title: str = "atom trajectories",
) -> str:
    """The page for the first ``max_episodes`` episodes of each method; ``chunks_of`` gives a sample's chunks."""
    by_id = {s.id: s for s in samples}
    chunk_cache: dict[str, list[str]] = {}
    rows, episodes, n = [], [], 0
    for method, trajs in trajectories.items():
        for traj in trajs[:max_episodes]:
            sample = by_id[traj.sample_id]
            if chunks_of is not None and sample.id not in chunk_cache:
                chunk_cache[sample.id] = chunks_of(sample)
            ep = f"ep-{n}"
            rows.append(_summary_row(n, ep, method, traj))
            episodes.append(_episode(ep, method, traj, sample, chunk_cache.get(sample.id)))
            n += 1
    options = "".join(f'<option value="{attr(m)}">{escape(m)}</option>' for m in trajectories)
    head = "".join(f"<th>{escape(c)}</th>" for c in _COLUMNS)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>{_STYLE}</style>"
        f"</head><body><h1>{escape(title)}</h1>"
        "<div class='filters'><label>method <select id='f-method'><option value=''>all</option>"
        f"{options}</select></label>"
        "<label>reward from <input id='f-min' type='number' step='0.1' min='0' max='1' size='4'></label>"
        "<label>to <input id='f-max' type='number' step='0.1' min='0' max='1' size='4'></label>"
        "<label><input id='f-invalid' type='checkbox'> with invalid actions</label>"
        "<label>sample <input id='f-text' type='search' size='16'></label><span id='f-count' class='meta'></span>"
        f"</div><table class='summary' id='summary'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
        "</table><p class='meta'>Click a row to open its episode; click a column header to sort. Actions: "
        + "".join(
            f'<span class="act {k}">{k}</span> ' for k in ("create", "read", "update", "delete", "scratchpad", "answer")
        )  # fmt: skip
        + '<span class="act bad">malformed</span>; <mark class="gold">gold supporting sentence</mark>.</p>'
        f"{''.join(episodes)}<script>{_SCRIPT}</script></body></html>"
    )


def write_viewer(
    path: str | Path,
    trajectories: dict[str, list[Trajectory]],
    samples: Sequence[LongContextSample],
    max_episodes: int = 50,
    chunks_of: ChunksOf | None = None,
    title: str = "atom trajectories",
) -> Path:
    """Write ``render(...)`` to ``path`` (UTF-8) and return it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(trajectories, samples, chunks_of, max_episodes, title), encoding="utf-8")
    return out
