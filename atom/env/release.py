"""The AtomMem release's protocol (``agent.protocol: release``): its prompts, tags, positional addressing and turn
rules, run by atom's episode engine so that numbers can be compared rule by rule with atom's own protocol.

Facts from the release (``recurrent/impls/memory_long_short_multiquery.py`` of RUCBM/AtomMem); the prompt text
here is atom's own wording with the release's structure:

- System prompt: the two memories (a scratchpad rewritten every reply, a vector store), the four store actions,
  paired tags for several actions per reply, four action examples and one worked response.
- Read turn: the questions (one per line), the scratchpad, the current query, the retrieved memories
  ("Memory i: ..." for the top-k, or "No previous memory"), retrieval tips, "This is the article:" and the chunk,
  the strategy (short scratchpad, many facts into the store, one line per question) and the query-count warning.
- Answer turn: answer in ``<final_answer>\\boxed{...}</final_answer>`` or query first; the one question, the
  scratchpad, query, memories, "exact match", two examples, the query-count warning and the way to skip.
- Tags: the release's regular expression ``<(\\w+)[^>]*>(.*?)</\\1>`` (case-insensitive, non-greedy, outermost
  pairs only, so tags inside a ``<think>`` pair are never seen), executed in order: ``add_memory`` (Create),
  ``update_query`` (Read; an empty one keeps the query but still counts), ``modify_memory`` with
  "Memory i: text" (Update of the i-th memory shown; an empty text deletes it), ``delete_memory`` with
  "Memory i", ``update_memory`` (the scratchpad) and ``final_answer`` (answers the current question and moves
  to the next one, in either phase). Position 0 addresses the last memory shown (the release indexed its list
  with i - 1). A modify or delete without the "Memory i" form raised in the release and its handler dropped
  the rest of the reply: here it is counted invalid and the rest of the reply is dropped too. A position
  beyond the memories shown is counted invalid and does nothing.
- Chunk advance: the reply moves to the next chunk only if it has an ``add_memory`` or ``modify_memory`` tag
  (before any dropped rest). A query-only reply, or a reply without tags, sees the same chunk again, with the
  new query's results.
- Initial query: a placeholder query is in force from the start, so the top-k memories are shown as soon as the
  store is non-empty.
- Query count: it rises with every query and falls back to 0 on any other store or scratchpad action and on a
  new question; a query when it already is ``agent.answer_reads`` (3) skips the current question instead.
- Caps (set by ``experiments/protocols/release.yaml``): 41 LLM calls, 4,096 new tokens per turn, no
  scratchpad cap, the retrieved block cut at 4,096 tokens (``agent.memory_max_tokens``), Qwen3 thinking on.

Where atom keeps its fixes under this protocol (docs/agent.md, "Protocols"): memories are addressed through stable store
ids behind the positions (the release searched the whole shared store by exact text), a modify is an in-place
update of that entry, and a malformed reply is counted, never swallowed by an exception.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from atom.env.actions import Action, parse_actions
from atom.env.episode import READ, AtomMemEpisode, TurnParse

if TYPE_CHECKING:
    import numpy as np

    from atom.memory.store import Entry

Messages = list[dict[str, str]]

INITIAL_QUERY = "(placeholder query: write your own)"
NO_MEMORY = "No previous memory"
_PAIRED = re.compile(r"<(\w+)[^>]*>(.*?)</\1>", re.DOTALL | re.IGNORECASE)
_MODIFY = re.compile(r"Memory\s+(\d+)\s*:\s*(.*)", re.DOTALL)
_DELETE = re.compile(r"Memory\s+(\d+)", re.DOTALL)
_TAG_KINDS = {
    "add_memory": "create",
    "update_query": "read",
    "modify_memory": "update",
    "delete_memory": "delete",
    "update_memory": "scratchpad",
    "final_answer": "answer",
}

SYSTEM_PROMPT = """You read an article one section at a time, together with your memory, and manage that memory \
so that you can answer questions about the article afterwards.

You have two memories. The short-term memory is a running summary that you rewrite completely with \
<update_memory> in every response. The long-term memory is a vector database that you change through atomic \
operations.

The database has four actions:
<update_query>: the system keeps one query and shows you the database entries that match it. Change the query \
with this action; until you set one, the results come from a placeholder query.
<add_memory>: store a new entry. Do not re-add an entry that is already shown, and do not write its index.
<modify_memory>: rewrite an existing entry, named by its index as shown, "Memory i: new text". Prefer modifying \
entries to piling up new ones when the database grows.
<delete_memory>: remove an entry, named by its index as shown, "Memory i". Always delete duplicated entries.

Write every action as a pair of tags; one response may hold several actions, e.g. several additions.

Example of a query:
<update_query>river delta; city founded by the Greeks</update_query>
Example of an addition:
<add_memory>
Document 7 says the festival was held in Lyon in June and that Marta Ruiz performed there; who else performed \
in Lyon in June may reveal her duet partner.
</add_memory>
Example of a modification:
<modify_memory>Memory 2: The 2024 programme lists Marta Ruiz with a new partner, Tom Ek, so the earlier entry \
naming Ivo Lenz as her partner is out of date; her partner since 2024 is Tom Ek.</modify_memory>
Example of a deletion:
Entries 3 and 5 say the same thing and entry 5 is newer, so I remove entry 3. <delete_memory>Memory 3</delete_memory>

Example of a whole response:
<update_memory>
1. Setting: the section describes an agent with a short-term summary and a long-term database.
2. Operations: query, add, modify and delete change the database; the summary is rewritten every step.
3. Open points: which operation keeps the database small.
</update_memory>

<update_query>
summary versus database; atomic operations; keeping the database small
</update_query>

<add_memory>
The agent's database is changed only through four operations: setting the query, adding an entry, modifying an \
entry and deleting an entry; the short-term summary is rewritten at every step.
</add_memory>
"""

READ_TEMPLATE = """
The questions to answer:
{questions}

Your short-term memory from the previous turn:
{scratchpad}

The current query to the database:
{query}

The database entries that match the query:
{memories}

Tips:
 - Do not keep changing the query. If an entry you want is not shown, the database does not have it. Use one \
query per response at most; a long query made of keywords for several questions retrieves entries for all of \
them, because entries are matched by embedding similarity.

This is the article:
{chunk}

Important, manage your memory this way:
1) Keep only the most important points in the short-term memory and put the details into the database, so that \
you can retrieve them when you need them.
2) The database entries should hold what the short-term memory leaves out, including facts that look weakly \
related or unrelated for now. Write facts and knowledge only, never reasoning or your current state. Add at \
least 5-6 such facts to the database.
3) With several questions, keep a numbered part (1. 2. 3.) for each question in the short-term memory.

Your query count:
You have changed the query **{query_times}** times; more than **3** makes the task fail.
"""

ANSWER_TEMPLATE = """You are given a question and your memory. Using the memory, answer the question inside \
'<final_answer></final_answer>' with the answer in \\boxed{{}}. You may change the query to retrieve memory first.

Tips:
Use one query per response at most; a long query of keywords retrieves entries for several needs at once, \
because entries are matched by embedding similarity. After a query the task waits, and you answer in the next \
round. Do not change memory at this stage!

question:
{question}

Your short-term memory from the previous turn:
{scratchpad}

The current query to the database:
{query}

The database entries that match the query:
{memories}

Give only the exact answer, no description.
Example 1:
<update_query>duet partner; Marta Ruiz.</update_query>
Example 2:
<final_answer>\\boxed{{Tom Ek}}</final_answer>.

Your query count:
You have changed the query **{query_times}** times; more than **3** makes the task fail. When you are about to \
pass the limit, answer <final_answer>don't know</final_answer> to skip the question.
"""


def memory_block(results: list[Entry], max_tokens: int, tokenizer=None) -> str:
    """ "Memory i: text" lines, cut to ``max_tokens`` tokens (``tokenizer``; ~4 characters a token without one)."""
    if not results:
        return NO_MEMORY
    text = "\n".join(f"Memory {i + 1}: {e.text}" for i, e in enumerate(results))
    if not max_tokens:
        return text
    if tokenizer is None:
        return text[: 4 * max_tokens]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


def parse_release(reply: str, shown: list[Entry], max_chars: int) -> TurnParse:
    """The release's reading of a reply: actions in order with positions resolved to store ids."""
    out = TurnParse(advance=False)
    if not isinstance(reply, str):
        return out
    for name, body in _PAIRED.findall(reply):
        name, body = name.lower(), body.strip()
        kind = _TAG_KINDS.get(name)
        if kind is None:
            if name != "think":
                out.invalid["unknown"] += 1
            continue
        if kind in ("update", "delete"):
            m = (_MODIFY if kind == "update" else _DELETE).match(body)
            if m is None:  # the release raised here: the rest of the reply is lost
                out.invalid[kind] += 1
                break
            out.advance |= kind == "update"
            position = int(m.group(1)) - 1
            if not -len(shown) <= position < len(shown):
                out.invalid[kind] += 1
                continue
            target = shown[position].id
            text = m.group(2).strip()[:max_chars] if kind == "update" else ""
            out.actions.append(Action("update", text, target) if text else Action("delete", "", target))
            continue
        out.advance |= kind == "create"
        if kind == "create" and not body:
            continue  # the release skipped an empty addition (and still moved on)
        out.actions.append(Action(kind, body[:max_chars]))
    return out


class ReleaseRules:
    """``agent.protocol: release`` (see the module docstring)."""

    initial_query = INITIAL_QUERY

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer

    def messages(self, ep: AtomMemEpisode, results: list[Entry] | None) -> Messages:
        cfg = ep.cfg
        memories = memory_block(results or [], cfg.memory_max_tokens, self.tokenizer)
        pad = ep.shown_scratchpad or ""
        query_times = cfg.answer_reads - ep.reads_left
        if ep.phase == READ:
            user = READ_TEMPLATE.format(
                questions="\n".join(ep.sample.questions), scratchpad=pad, query=ep.query, memories=memories,
                chunk=ep.chunks[ep.chunk_index], query_times=query_times,
            )  # fmt: skip
        else:
            user = ANSWER_TEMPLATE.format(
                question=ep.sample.questions[ep.question_index], scratchpad=pad, query=ep.query,
                memories=memories, query_times=query_times,
            )  # fmt: skip
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

    def parse(self, ep: AtomMemEpisode, reply: str) -> TurnParse:
        return parse_release(reply, ep.last_shown, ep.cfg.action_max_chars)

    def allowed(self, ep: AtomMemEpisode) -> tuple[str, ...]:
        return ep.cfg.read_phase_ops + ("answer",)  # the release executed every tag in both phases

    def select(self, ep: AtomMemEpisode, actions: list[Action]) -> list[Action]:
        return actions

    def commit(
        self, ep: AtomMemEpisode, actions: list[Action], vectors: list[np.ndarray | None], parsed: TurnParse
    ) -> None:
        reading = ep.phase == READ
        for action, vector in zip(actions, vectors, strict=True):
            if ep.done:
                break
            if action.kind == "read":
                if ep.reads_left <= 0:  # one query too many: the question is skipped
                    ep.close_question()
                    continue
                ep.apply(action, vector)
                ep.reads_left -= 1
            elif action.kind == "answer":
                ep.apply(action, vector)
                ep.close_question()
            else:
                ep.apply(action, vector)
                ep.reads_left = ep.cfg.answer_reads
        if reading and parsed.advance and not ep.done:
            ep.next_chunk()


def to_release_reply(reply: str, shown: list[Entry]) -> str:
    """An atom-grammar reply (the oracle's) in the release's tags, ids turned into positions among ``shown``.

    Raises ValueError when an update or delete names an id that is not shown (the release cannot address it).
    """
    position = {e.id: i + 1 for i, e in enumerate(shown)}
    parsed = parse_actions(reply)
    # The oracle writes its reasoning first and each action on a line of its own after it.
    cut = reply.find("\n<")
    prose = reply[:cut] if parsed.actions and cut >= 0 else reply if not parsed.actions else ""
    prose = re.sub(r"[Mm]emory \[id (\d+)\]", lambda m: f"Memory {position.get(int(m.group(1)), '?')}", prose)
    tags = []
    for a in parsed.actions:
        if a.kind in ("update", "delete") and a.id not in position:
            raise ValueError(f"memory id {a.id} is not among the memories shown; the release addresses positions")
        if a.kind == "create":
            tags.append(f"<add_memory>{a.text}</add_memory>")
        elif a.kind == "read":
            tags.append(f"<update_query>{a.text}</update_query>")
        elif a.kind == "update":
            tags.append(f"<modify_memory>Memory {position[a.id]}: {a.text}</modify_memory>")
        elif a.kind == "delete":
            tags.append(f"<delete_memory>Memory {position[a.id]}</delete_memory>")
        elif a.kind == "scratchpad":
            tags.append(f"<update_memory>{a.text}</update_memory>")
        else:
            tags.append(f"<final_answer>{a.text}</final_answer>")
    return "\n".join(part for part in (prose, *tags) if part)
