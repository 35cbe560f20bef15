"""JSON Lines files: one JSON value per line, read record by record and written or appended whole.

``read`` yields each non-blank line's record, parsed by the caller's ``parse``; a line that is not JSON, or whose
value ``parse`` rejects (``ValueError``, ``KeyError``, ``TypeError``), raises the caller's error type with a
message naming the file and the line: ``path:line: not <what> (<exception>)``. Lines end at ``\\n`` only
(``str.splitlines`` would also cut at U+2028, U+2029 and U+0085, which JSON strings may hold raw). ``write``
replaces a file, ``append`` adds to one (flushed and synced to disk with ``sync``, so a crash loses at most the
lines being written).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def read(
    path: str | Path,
    parse: Callable[[Any], T] = lambda row: row,
    what: str = "a JSON record",
    error: type[Exception] = ValueError,
) -> Iterator[T]:
    """``parse(value)`` of each non-blank line of ``path``, in order (see the module docstring for errors)."""
    with open(path, encoding="utf-8", newline="\n") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = parse(json.loads(line))
            except (ValueError, KeyError, TypeError) as exc:
                raise error(f"{path}:{lineno}: not {what} ({exc!r})") from exc
            yield value


def _write(path: str | Path, rows: Iterable[Any], mode: str, sync: bool) -> int:
    n = 0
    with open(path, mode, encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
            n += 1
        if sync:
            f.flush()
            os.fsync(f.fileno())
    return n


def write(path: str | Path, rows: Iterable[Any], sync: bool = False) -> int:
    """Write ``rows`` to ``path`` (replacing it), one line each; returns how many."""
    return _write(path, rows, "w", sync)


def append(path: str | Path, rows: Iterable[Any], sync: bool = False) -> int:
    """Append ``rows`` to ``path`` (created if absent), one line each; returns how many."""
    return _write(path, rows, "a", sync)


__all__ = ["append", "read", "write"]
