"""Prompt text of the AtomMem agent and of the static baselines.

The system prompt gives the grammar (each tag with placeholders, never a copyable concrete action), what a reply
to one chunk does, and a strategy that matches the reward (EM on the questions: store every link of a question's
chain, merge instead of duplicating, answer with the exact short answer).

The read-phase prompt follows the AtomMem release's order (questions, scratchpad, current query, retrieved memories,
tips, the chunk, strategy hints) but shows every memory with its stable store id, which Update and Delete address.
Only the operations an ablation leaves enabled are described, so a disabled operation is never suggested.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from atom.memory.store import Entry

Messages = list[dict[str, str]]


# Each operation is described by its tag with "..." or N where the content goes: a placeholder is not a valid action
# (the parser refuses bodies without a letter or digit and ids that are not numbers), so a policy that copies the
# grammar executes nothing. Concrete wording is only ever shown as prose, never inside a tag (after GRPO the 135M
# policy copied the earlier concrete example update, an invalid id, in most replies; before that, it answered with
# a concrete example answer). The worked reply keeps only lines whose operation is enabled.
_DOCS = {
    "create": "<create>...</create>  store one fact, subject first, e.g. Name: Name was born in Place.",
    "read": "<read>...</read>  search memory with keywords; the results show with their ids at the next turn",
    "update": '<update id="N">...</update>  replace the text of the memory shown as [id N]',
    "delete": '<delete id="N"/>  delete the memory shown as [id N]',
    "scratchpad": "<scratchpad>...</scratchpad>  overwrite the scratchpad, which is always shown to you",
    "answer": "<answer>...</answer>  answer the current question (only when asked to answer)",
}
_WORKED = (
    ("create", "a create with that fact, copied from the chunk"),
    ("update", "an update of a shown memory on the same subject that lacks the new detail"),
    ("delete", "a delete of a shown memory that repeats another"),
    ("read", "a read with the key names of what is still missing"),
    ("scratchpad", "a scratchpad with one line per question"),
)
_STRATEGY = {
    "create": "Store every fact a question needs, each link of a chain too (a birthplace, then its country); copy "
    "names, dates and numbers exactly.",
    "update": "Merge a new detail into a shown entry on the same subject instead of adding a near-duplicate.",
    "delete": "Delete entries that repeat another one.",
    "read": "Read with key names before you answer.",
    "scratchpad": "Keep the scratchpad to one line per question: what you have, what is missing.",
}


def system_prompt(ops: Sequence[str]) -> str:
    """The action grammar (by example), a worked reply and the strategy, for the enabled operations ``ops``."""
    lines = [
        "You read a long article chunk by chunk and answer questions about it at the end.",
        "You only see one chunk at a time, so you must keep what matters in memory. Reply with a sentence of",
        "reasoning, then actions written as tags (anything outside tags is ignored):",
    ]
    lines += ["  " + _DOCS[op] for op in _DOCS if op in ops]
    worked = [text for op, text in _WORKED if op in ops]
    if worked:
        lines += [
            "A reply to a chunk: one sentence on what the chunk says that a question needs, then the actions it calls "
            "for, e.g. " + "; ".join(worked) + "."
        ]
    strategy = [_STRATEGY[op] for op in _STRATEGY if op in ops]
    if "create" not in ops and "scratchpad" in ops:
        strategy.insert(0, "The scratchpad is your only memory: write into it every fact the questions need.")
    strategy.append("Answer with the exact short answer only (a name, date, number or yes/no).")
    return "\n".join(lines + ["Strategy:"] + ["- " + s for s in strategy])


def _memories(query: str, results: Sequence[Entry], max_chars: int) -> list[str]:
    if not query:
        return ["Current query: (none)", "No memory retrieved."]
    lines = [f"Current query: {query}"]
    if not results:
        lines.append("No memory matches the query.")
    for entry in results:
        lines.append(f"Memory [id {entry.id}]: {entry.text[:max_chars]}")
    return lines


def read_prompt(
    questions: Sequence[str],
    scratchpad: str | None,
    query: str,
    results: Sequence[Entry] | None,
    chunk: str,
    chunk_index: int,
    num_chunks: int,
    max_memory_chars: int,
) -> str:
    """User message of one read-phase step. ``scratchpad``/``results`` are None when that part is ablated."""
    lines = ["Questions:"]
    lines += [f"{i + 1}. {q}" for i, q in enumerate(questions)]
    if scratchpad is not None:
        lines += ["", "Scratchpad:", scratchpad or "(empty)"]
    if results is not None:
        lines += [""] + _memories(query, results, max_memory_chars)
        lines.append("Tip: retrieval is by embedding similarity; a long query with several keywords works best.")
    lines += ["", f"This is the article (chunk {chunk_index + 1} of {num_chunks}):", chunk, ""]
    hints = ["Store facts that may help answer the questions, not your reasoning."]
    if scratchpad is not None and results is not None:
        hints.append("Keep the scratchpad short (progress per question); put details into memory.")
    if len(questions) > 1:
        hints.append("Track each question separately.")
    lines.append(" ".join(hints))
    return "\n".join(lines)


def answer_prompt(
    question: str,
    scratchpad: str | None,
    query: str,
    results: Sequence[Entry] | None,
    reads_left: int,
    max_memory_chars: int,
    boxed: bool,
) -> str:
    """User message of one answer-phase turn for one question."""
    lines = ["The article is over. Answer this question:", question]
    if scratchpad is not None:
        lines += ["", "Scratchpad:", scratchpad or "(empty)"]
    if results is not None:
        lines += [""] + _memories(query, results, max_memory_chars)
    fmt = "<answer>\\boxed{...}</answer>" if boxed else "<answer>...</answer>"
    lines.append("")
    if results is not None and reads_left > 0:
        lines.append(f"Reply with {fmt}, or with <read>...</read> to search memory first ({reads_left} searches left).")
    else:
        lines.append(f"You must answer now. Reply with {fmt}.")
    lines.append("In place of ... give only the exact answer (a name, date, number or yes/no), copied from memory.")
    return "\n".join(lines)


def memagent_update_prompt(questions: Sequence[str], memory: str, chunk: str, max_memory_chars: int) -> str:
    """MemAgent-style overwrite memory: the model rewrites its whole memory after each chunk."""
    return "\n".join(
        [
            "Questions:",
            *[f"{i + 1}. {q}" for i, q in enumerate(questions)],
            "",
            "Your current memory:",
            memory or "(empty)",
            "",
            "Section of the article:",
            chunk,
            "",
            "Rewrite your memory so it keeps everything needed to answer the questions, adding what this section "
            f"says about them. Reply with the new memory only (at most {max_memory_chars} characters).",
        ]
    )


def context_answer_prompt(question: str, context_title: str, context: str, boxed: bool) -> str:
    """Answer one question from a given context (full-context, RAG and MemAgent baselines)."""
    fmt = "<answer>\\boxed{...}</answer>" if boxed else "<answer>...</answer>"
    return "\n".join(
        [
            f"{context_title}:",
            context or "(empty)",
            "",
            f"Question: {question}",
            f"Reply with {fmt}, in place of ... only the exact answer (a name, date, number or yes/no).",
        ]
    )
