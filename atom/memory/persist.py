"""Atomic, checksummed save directories: a save never damages the previous one, a reader never mixes two.

POSIX can replace a file atomically (``rename`` over it) but not a non-empty directory, so a save directory
holds immutable versions and a pointer file:

    <path>/CURRENT          the name of the live version ("v000007"), replaced atomically (os.replace)
    <path>/v000007/         one complete save: its files plus manifest.json
        manifest.json       {"format": 2, "files": {name: {"sha256": ..., "bytes": ...}}}

A save writes a new version directory (claimed with ``mkdir``, so two writers never share one), fsyncs its
files and the directory, and only then replaces ``CURRENT``; a save that fails or is killed at any point leaves
``CURRENT`` on the previous version, and the half-written directory is removed by the next save. After the
switch the versions older than the previous one are deleted: the previous one is kept so that a reader that
resolved ``CURRENT`` just before the switch can still finish.

A read resolves ``CURRENT`` once, checks every file of that version against the manifest (a truncated,
corrupted or hand-edited file is a ``StoreError`` naming the directory and the file), then reads the files. If
the version vanished under it (a writer saved twice during the read), the read starts over from the new
``CURRENT``; it gives up only when ``CURRENT`` stays put and the files are still wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from atom.errors import AtomError

FORMAT = 2  # version of the save directory layout (1: files directly in the directory, no manifest)
POINTER = "CURRENT"
MANIFEST = "manifest.json"
_VERSION = re.compile(r"^v(\d{6,})$")
_RETRIES = 20  # a reader restarts at most this many times while writers keep replacing versions

T = TypeVar("T")


class StoreError(AtomError, ValueError):
    """A save directory that cannot be loaded; the message names the directory and the file."""


def _fsync(path: Path) -> None:
    if os.name == "nt" and path.is_dir():  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _nothing(path: Path) -> None:
    pass


def _sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _versions(path: Path) -> list[tuple[int, Path]]:
    found = []
    for child in path.iterdir() if path.is_dir() else ():
        m = _VERSION.match(child.name)
        if m and child.is_dir():
            found.append((int(m.group(1)), child))
    return sorted(found)


def write_version(path: str | Path, write: Callable[[Path], None], durable: bool = True) -> Path:
    """Make ``write(version_dir)`` the new content of save directory ``path``, atomically; returns the version.

    ``write`` puts its files into the (empty) version directory; this adds the manifest, switches ``CURRENT``
    to it and prunes old versions. ``durable`` fsyncs files and directories before the switch, so that even a
    power loss cannot leave ``CURRENT`` naming a half-written version; without it a save is still atomic
    against failures and killed processes (the page cache survives them), at a fraction of the cost.
    """
    sync = _fsync if durable else _nothing
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    try:
        previous = (root / POINTER).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        previous = ""
    n = max((v for v, _ in _versions(root)), default=0) + 1
    while True:
        version = root / f"v{n:06d}"
        try:
            version.mkdir()
            break
        except FileExistsError:
            n += 1
    try:
        write(version)
        files = {}
        for f in sorted(version.iterdir()):
            digest, size = _sha256(f)
            files[f.name] = {"sha256": digest, "bytes": size}
            sync(f)
        manifest = version / MANIFEST
        manifest.write_text(json.dumps({"format": FORMAT, "files": files}, indent=1))
        sync(manifest)
        sync(version)
        pointer = root / f".{POINTER}.{os.getpid()}.tmp"
        pointer.write_text(version.name + "\n")
        sync(pointer)
        os.replace(pointer, root / POINTER)
        sync(root)
    except BaseException:
        shutil.rmtree(version, ignore_errors=True)
        raise
    for v, old in _versions(root):
        if v < n and old.name != previous:  # older versions, and half-written ones of killed saves
            shutil.rmtree(old, ignore_errors=True)
    return version


def current_version(path: str | Path) -> Path:
    """The live version directory of ``path`` (StoreError / FileNotFoundError naming what is missing)."""
    root = Path(path)
    pointer = root / POINTER
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such store directory (save() writes one)") from None
        raise StoreError(f"{root}: not a saved MemoryStore (no {POINTER} file); save() writes one") from None
    except UnicodeDecodeError:
        raise StoreError(f"{root}: {POINTER} is not text; the directory is damaged") from None
    if not _VERSION.match(name):
        raise StoreError(f"{root}: {POINTER} names {name[:40]!r}, not a version directory; the directory is damaged")
    return root / name


def verify(version: Path) -> dict:
    """Check every file of ``version`` against its manifest; returns the manifest."""
    where = f"{version.parent}: {version.name}/"
    try:
        manifest = json.loads((version / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        fmt = manifest["format"]
    except FileNotFoundError:
        raise StoreError(f"{where}{MANIFEST} is missing; the save is damaged") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{where}{MANIFEST} is unreadable ({exc}); the save is damaged") from None
    if fmt != FORMAT:
        raise StoreError(f"{where}{MANIFEST}: store format {fmt} is not the supported {FORMAT}")
    for name, want in files.items():
        try:
            digest, size = _sha256(version / name)
        except FileNotFoundError:
            raise StoreError(f"{where}{name} is listed in {MANIFEST} but missing; the save is damaged") from None
        if size != want["bytes"] or digest != want["sha256"]:
            what = f"{size} bytes instead of {want['bytes']}" if size != want["bytes"] else "checksum mismatch"
            raise StoreError(f"{where}{name} does not match {MANIFEST} ({what}): corrupted or edited by hand")
    extra = {p.name for p in version.iterdir()} - set(files) - {MANIFEST}
    if extra:
        raise StoreError(f"{where}{sorted(extra)[0]} is not listed in {MANIFEST}; the save was modified")
    return manifest


def read_version(path: str | Path, read: Callable[[Path], T]) -> T:
    """``read(version_dir)`` on the verified live version of ``path``, restarted if a writer replaced it."""
    root = Path(path)
    for _ in range(_RETRIES):
        version = current_version(root)
        try:
            verify(version)
            return read(version)
        except (OSError, StoreError) as exc:
            if current_version(root) == version and version.is_dir():  # nothing moved: not a race with a writer
                if isinstance(exc, StoreError):
                    raise
                raise StoreError(f"{version.parent}: {version.name}/: {exc}") from exc
    raise StoreError(f"{root}: the store kept changing during {_RETRIES} load attempts; load it when saves pause")
