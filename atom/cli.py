"""What every ``python -m atom.*`` command shares: its argument parser, one-line errors, and quiet Lightning.

Expected failures (``AtomError``: bad config, bad data, a busy run directory, a damaged checkpoint or store;
``OSError``: a missing file, a full disk, a refused permission) are printed as one line on stderr,

    atom.fit: error: experiments/x.yaml: unknown config key 'grpo.lr_rate'; did you mean 'lr'? ...

and the command exits with ``AtomError.exit_code`` (2; 128 + signal number after a pre-emption). Anything else is
a bug and keeps its traceback. ``--verbose`` (or ``ATOM_DEBUG=1``) shows the traceback of expected failures too.

Lightning's tips about other products and its warnings that say nothing to an atom user (dataloader workers, a
GPU left unused by ``trainer.accelerator=cpu``, the TensorBoard backend) are silenced for the command's
lifetime; its other warnings (precision, resuming, strategy) stay.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any

from atom.errors import AtomError, Interrupted

# Warnings that are noise for an atom user: atom chooses num_workers, the logger, and sets the accelerator
# explicitly, so none of them asks for a decision the user can make.
_NOISE_WARNINGS = (
    r".*does not have many workers.*",
    r".*GPU available but not used.*",
    r".*tensorboardX.*",
    r".*litlogger.*",
    r".*litmodels.*",
    r".*The number of training batches \(\d+\) is smaller than the logging interval.*",
    r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*Checkpoint directory .* exists and is not empty.*",  # resuming is atom's default; resume=false logs it
)
_NOISE_LOGS = re.compile(
    r"Tip:|litlogger|litmodels|GPU available:|TPU available:|HPU available:|💡|"
    r"You are using a CUDA device .* Tensor Cores|LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES"
)


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """The argument parser of an entry point, with the shared ``--verbose`` flag."""
    p = argparse.ArgumentParser(prog=prog, description=(doc or "").strip().splitlines()[0] if doc else None)
    p.add_argument("--verbose", action="store_true", help="full tracebacks for expected errors (or ATOM_DEBUG=1)")
    return p


def one_line(exc: BaseException) -> str:
    """The message of an expected failure as one line (what, where, how to fix)."""
    if isinstance(exc, OSError) and not isinstance(exc, AtomError) and exc.filename is not None:
        text = f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _verbose(argv: list[str] | None) -> bool:
    args = sys.argv[1:] if argv is None else argv
    return "--verbose" in args or os.environ.get("ATOM_DEBUG", "") not in ("", "0")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _NOISE_LOGS.search(record.getMessage())


def quiet_lightning() -> None:
    """Silence Lightning's product tips and the warnings listed in ``_NOISE_WARNINGS`` (see module docstring)."""
    for pattern in _NOISE_WARNINGS:
        if not any(f[0] == "ignore" and f[1] is not None and f[1].pattern == pattern for f in warnings.filters):
            warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
        for handler in logger.handlers:
            if not any(isinstance(f, _DropNoise) for f in handler.filters):
                handler.addFilter(_DropNoise())


def entry_point(prog: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate ``main(argv=None)`` of a ``python -m`` module: expected failures become one line on stderr and
    ``SystemExit(exit_code)``; ``--verbose`` / ``ATOM_DEBUG=1`` re-raise them with their traceback."""

    def wrap(main: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> Any:
            quiet_lightning()
            try:
                return main(argv)
            except KeyboardInterrupt:
                if _verbose(argv):
                    raise
                print(f"{prog}: interrupted", file=sys.stderr)
                raise SystemExit(130) from None
            except (AtomError, OSError) as exc:
                if _verbose(argv):
                    raise
                label = "stopped" if isinstance(exc, Interrupted) else "error"
                print(f"{prog}: {label}: {one_line(exc)}", file=sys.stderr)
                raise SystemExit(getattr(exc, "exit_code", 2)) from None

        return run

    return wrap
