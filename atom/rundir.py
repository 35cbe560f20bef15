"""Ownership of a run directory: one process trains a run at a time, and evaluations never overwrite silently.

``hold(run_dir)`` takes ``<run_dir>/run.lock`` for the life of an ``atom.fit`` run. The lock is an advisory
``flock`` on that file: the kernel drops it when the holder exits in any way (crash, SIGKILL, OOM killer), so a
lock left by a dead process is taken over without anyone deleting anything. The file holds the holder's pid,
host and command, so a second ``atom.fit`` on the same run stops at once with a message that names them. Only
global rank zero takes the lock: the other ranks of a multi-GPU run belong to the same run. Where the
filesystem refuses ``flock`` (some network mounts), the pid recorded in the file decides instead: a live pid on
this host holds the run, anything else is stale and taken over.

``eval_dir(run_dir, tag, overwrite)`` claims ``<run_dir>/eval/<tag>/`` for ``atom.evaluate``: a new numbered
tag by default (``evaluate-1``, ``evaluate-2``, ...), an error if a named tag already holds files, unless
``overwrite``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from atom.errors import AtomError

LOCK_NAME = "run.lock"

try:
    import fcntl
except ImportError:  # Windows: only the pid check
    fcntl = None  # type: ignore[assignment]


class RunLocked(AtomError):
    """Another live process owns the run directory."""


def _is_global_zero() -> bool:
    # The launchers' environment (torchrun: RANK; SLURM: SLURM_PROCID; Lightning's own launcher: LOCAL_RANK and
    # NODE_RANK) is set before atom.fit starts, so this holds before any process group exists.
    keys = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")
    return all(os.environ.get(k, "0") in ("", "0") for k in keys)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        info = json.loads(raw)
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(run_dir: Path, info: dict) -> str:
    who = f"pid {info.get('pid', '?')} on {info.get('host', '?')}"
    since = f" since {info['started']}" if "started" in info else ""
    command = f" ({info['command']})" if info.get("command") else ""
    return (
        f"run directory {run_dir} is in use by {who}{since}{command}; wait for it to finish, stop it, "
        "or choose another run.name"
    )


@contextlib.contextmanager
def hold(run_dir: str | Path) -> Iterator[Path]:
    """Own ``run_dir`` for the duration of the block (see the module docstring); raises RunLocked if taken."""
    run_dir = Path(run_dir)
    if not _is_global_zero():
        yield run_dir
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunLocked(_describe(run_dir, _holder(fd))) from None
            except OSError as exc:  # no flock on this filesystem: fall back to the recorded pid
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                _check_pid(run_dir, _holder(fd))
        else:
            _check_pid(run_dir, _holder(fd))
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(["python", *sys.argv])[:300],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield run_dir
    finally:
        # The file stays: unlinking a flock'ed file lets a waiter lock an inode nobody else can see.
        os.close(fd)  # releases the flock


def _check_pid(run_dir: Path, info: dict) -> None:
    pid = info.get("pid")
    mine = pid == os.getpid() and info.get("host") == socket.gethostname()
    if isinstance(pid, int) and info.get("host") == socket.gethostname() and _alive(pid) and not mine:
        raise RunLocked(_describe(run_dir, info))


def eval_dir(run_dir: str | Path, tag: str = "", overwrite: bool = False) -> Path:
    """Claim ``<run_dir>/eval/<tag>/`` (a fresh ``evaluate-N`` when ``tag`` is empty) and return it.

    Raises:
        AtomError: ``tag`` names a folder that already holds files and ``overwrite`` is False.
    """
    parent = Path(run_dir) / "eval"
    parent.mkdir(parents=True, exist_ok=True)
    if not tag:
        n = 1
        while True:  # mkdir is the atomic claim: two evaluations never get the same folder
            try:
                (parent / f"evaluate-{n}").mkdir()
                return parent / f"evaluate-{n}"
            except FileExistsError:
                n += 1
    if tag in (".", "..") or "/" in tag or "\\" in tag:
        raise AtomError(f"--tag {tag!r} must be a plain folder name (it goes under {parent})")
    out = parent / tag
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise AtomError(
                f"{out} already holds an evaluation; choose another --tag, or pass --overwrite to replace it"
            )
        shutil.rmtree(out)
    out.mkdir(exist_ok=True)
    return out
