"""The one base class of expected failures: bad input, a busy run directory, a damaged file, a pre-emption.

An ``AtomError`` is a failure the user can fix, not a bug: its message says what went wrong, where (key, file,
record) and how to fix it, and every ``python -m atom.*`` entry point prints it as one line (``atom.cli``)
instead of a traceback. ``exit_code`` is the process exit status the entry points use for it.
"""

from __future__ import annotations


class AtomError(Exception):
    """An expected failure whose message names what, where and how to fix; printed as one line by the CLI."""

    exit_code = 2  # like argparse's usage errors: the input, not the program, has to change


class Interrupted(AtomError):
    """A stage stopped by SIGTERM / SIGINT after saving its checkpoint; exit status 128 + signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)
