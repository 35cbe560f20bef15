"""Prompt text of the AtomMem agent and of the static baselines.

The system prompt gives the grammar, an example of each operation, a worked reply to one chunk and a strategy
that matches the reward (EM on the questions: store every link of a question's chain, merge instead of
duplicating, answer with the exact short answer).

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


# Each operation is described by an example of it; the worked reply and the strategy keep only lines whose
# operation is enabled, so an ablation's prompt never shows a disabled operation.
_DOCS = {
    "create": "<create>Ilsa Brandt: Ilsa Brandt was born in Keldon.</create>  store one fact, subject first",
    "read": "<read>Keldon country</read>  search memory; results show with their ids at the next turn",
    "update": '<update id="3">new text</update>  replace the text of memory 3',
    "delete": '<delete id="5"/>  delete memory 5',
    "scratchpad": "<scratchpad>Q1: ...</scratchpad>  overwrite the scratchpad, which is always shown to you",
    # a placeholder, not a name: a small policy copies a concrete example answer when unsure
    "answer": "<answer>short answer</answer>  answer the current question (only when asked to answer)",
}
_WORKED = (
    ("create", "<create>Keldon: Keldon is a town in Morvania.</create>"),
    ("update", '<update id="3">Ilsa Brandt: Ilsa Brandt was born in Keldon in 1931.</update>'),
    ("delete", '<delete id="5"/>'),
    ("read", "<read>Ilsa Brandt Keldon</read>"),
    ("scratchpad", "<scratchpad>Q1: Brandt born in Keldon, in Morvania: answer Morvania.</scratchpad>"),
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
        why = "This chunk says where Keldon is, which question 1 needs"
        why += "; memory [id 3] on Ilsa Brandt gets a detail" if "update" in ops else ""
        why += "; memory [id 5] repeats memory [id 3]" if "delete" in ops else ""
        lines += ["Example reply to a chunk:", why + ".", *worked]
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
    fmt = "<answer>\\boxed{your answer}</answer>" if boxed else "<answer>your answer</answer>"
    lines.append("")
    if results is not None and reads_left > 0:
        lines.append(
            f"Reply with {fmt}, or with <read>query</read> to search memory first ({reads_left} searches left)."
        )
    else:
        lines.append(f"You must answer now. Reply with {fmt}.")
    lines.append("Give only the exact answer (a name, date, number or yes/no), copied from memory.")
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
    fmt = "<answer>\\boxed{your answer}</answer>" if boxed else "<answer>your answer</answer>"
    return "\n".join(
        [
            f"{context_title}:",
            context or "(empty)",
            "",
            f"Question: {question}",
            f"Reply with {fmt}. Give only the exact answer (a name, date, number or yes/no).",
        ]
    )
