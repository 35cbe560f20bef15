"""MemoryStore saves: atomic against failures, kills and concurrent readers; damaged saves are named on load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from atom.memory.embedder import HashEmbedder
from atom.memory.persist import StoreError
from atom.memory.store import MemoryConfig, MemoryStore

ROOT = Path(__file__).resolve().parents[1]
HNSW = MemoryConfig(embedder="hash", exact_below=0, initial_capacity=4)


def make_store(texts: list[str]) -> MemoryStore:
    store = MemoryStore(HashEmbedder(64), HNSW)
    store.create_many(texts)
    store.read(texts[0], 1)  # builds the hnsw index, so saves carry index.bin too
    return store


def live(path: Path) -> Path:
    return path / (path / "CURRENT").read_text().strip()


def texts_of(path: Path) -> list[str]:
    return [e.text for e in MemoryStore.load(path, HashEmbedder(64)).entries()]


def test_text_must_be_valid_utf8_and_a_bad_one_changes_nothing():
    store = make_store(["good"])
    for bad in ("\ud800", "ok \udfff tail"):
        with pytest.raises(ValueError, match=r"memory text 0 is not valid UTF-8 text: surrogates not allowed"):
            store.create(bad)
        with pytest.raises(ValueError, match="not valid UTF-8"):
            store.update(0, bad)
    assert [e.text for e in store.entries()] == ["good"] and store.next_id == 1


def test_saves_are_versions_behind_a_pointer_and_only_the_previous_one_is_kept(tmp_path):
    for i in range(4):
        make_store([f"generation {i}", "x"]).save(tmp_path / "mem")
    versions = sorted(p.name for p in (tmp_path / "mem").iterdir() if p.is_dir())
    assert versions == ["v000003", "v000004"] and live(tmp_path / "mem").name == "v000004"
    manifest = json.loads((live(tmp_path / "mem") / "manifest.json").read_text())
    assert manifest["format"] == 2 and set(manifest["files"]) == {"store.json", "vectors.npy", "index.bin"}
    assert texts_of(tmp_path / "mem") == ["generation 3", "x"]


def test_a_save_that_fails_half_way_leaves_the_previous_save_intact(tmp_path, monkeypatch):
    make_store(["old a", "old b"]).save(tmp_path / "mem")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", fail)
    with pytest.raises(OSError, match="No space left"):
        make_store(["new"]).save(tmp_path / "mem")
    monkeypatch.undo()
    assert texts_of(tmp_path / "mem") == ["old a", "old b"]
    assert [p.name for p in (tmp_path / "mem").iterdir() if p.is_dir()] == ["v000001"]  # the half save removed


def test_a_save_killed_half_way_leaves_the_previous_save_loadable(tmp_path):
    mem = tmp_path / "mem"
    child = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        from tests.test_store_persist import make_store
        make_store(["old a", "old b"]).save({str(mem)!r})
        real = np.save
        def slow(*args, **kwargs):
            real(*args, **kwargs)
            print("MID", flush=True)  # vectors.npy written, store.json and the pointer not yet
            time.sleep(60)
        np.save = slow
        make_store(["new a", "new b", "new c"]).save({str(mem)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "MID"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (mem / "v000002" / "vectors.npy").is_file()  # the kill really hit a save in progress
    assert texts_of(mem) == ["old a", "old b"]
    make_store(["next"]).save(mem)  # the next save clears the debris of the killed one
    assert sorted(p.name for p in mem.iterdir() if p.is_dir()) == ["v000001", "v000003"]
    assert texts_of(mem) == ["next"]


@pytest.mark.slow
def test_concurrent_loads_always_see_a_whole_save(tmp_path):
    """A writer process alternates two different stores as fast as it can; every load in this process must
    succeed and pair each text with its own vector."""
    mem, stop = tmp_path / "mem", tmp_path / "stop"
    child = textwrap.dedent(f"""
        import os
        from tests.test_store_persist import make_store
        stores = [make_store([f"a{{i}} apple" for i in range(30)]), make_store([f"b{{i}} berry" for i in range(7)])]
        n = 0
        while not os.path.exists({str(stop)!r}):
            stores[n % 2].save({str(mem)!r})
            n += 1
            if n == 1:
                print("SAVED", flush=True)
        print(n, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    embedder = HashEmbedder(64)
    seen, loads = set(), 0
    try:
        assert proc.stdout.readline().strip() == "SAVED"
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline or len(seen) < 2:
            store = MemoryStore.load(mem, embedder)
            entries = store.entries()
            expect = embedder.encode_documents([e.text for e in entries])
            got = np.stack([store._vecs[store._slot[e.id]] for e in entries])
            np.testing.assert_allclose(got, expect, atol=1e-6)  # no text paired with another's vector
            assert store.read(entries[3].text, 1)[0].id == entries[3].id
            seen.add(len(entries))
            loads += 1
            assert time.monotonic() < deadline + 30, "the writer never switched stores"
    finally:
        stop.touch()
        saves = int(proc.stdout.readline() or 0)
        proc.wait(timeout=60)
    print(f"{loads} loads during {saves} saves")
    assert seen == {30, 7} and loads >= 20 and saves >= 20, (loads, saves)


def test_a_load_overtaken_by_two_saves_starts_over_on_the_new_version(tmp_path, monkeypatch):
    mem = tmp_path / "mem"
    make_store(["first"]).save(mem)
    real, opened = MemoryStore._read, []

    def overtaken(cls, src, embedder):
        if not opened:  # a writer saves twice while this reader is between CURRENT and the files
            opened.append(src.name)
            make_store(["second"]).save(mem)
            make_store(["third"]).save(mem)
            assert not src.exists()
        return real.__func__(cls, src, embedder)

    monkeypatch.setattr(MemoryStore, "_read", classmethod(overtaken))
    assert texts_of(mem) == ["third"] and opened == ["v000001"]


@pytest.mark.parametrize(
    "damage, file",
    [
        ("truncate", "vectors.npy"),
        ("reorder texts", "store.json"),
        ("flip a byte", "index.bin"),
        ("extra file", "notes.txt"),
        ("remove", "manifest.json"),
        ("remove", "store.json"),
    ],
)
def test_a_damaged_save_fails_with_one_error_naming_directory_and_file(tmp_path, damage, file):
    mem = tmp_path / "mem"
    make_store(["first fact", "second fact", "third fact"]).save(mem)
    target = live(mem) / file
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-20])
    elif damage == "reorder texts":  # the hand edit the issue describes: texts paired with other vectors
        meta = json.loads(target.read_text())
        meta["texts"].reverse()
        target.write_text(json.dumps(meta))
    elif damage == "flip a byte":
        raw = bytearray(target.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        target.write_bytes(bytes(raw))
    elif damage == "extra file":
        target.write_text("hello")
    else:
        target.unlink()
    with pytest.raises(StoreError) as err:
        MemoryStore.load(mem, HashEmbedder(64))
    assert str(mem) in str(err.value) and f"v000001/{file}" in str(err.value)


def test_a_damaged_pointer_and_a_folder_that_is_no_store_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="empty: not a saved MemoryStore"):
        MemoryStore.load(tmp_path / "empty", HashEmbedder(64))
    make_store(["x"]).save(tmp_path / "mem")
    (tmp_path / "mem" / "CURRENT").write_text("../../etc")
    with pytest.raises(StoreError, match="CURRENT names '../../etc', not a version directory"):
        MemoryStore.load(tmp_path / "mem", HashEmbedder(64))


def test_a_format_1_save_still_loads(tmp_path):
    store = make_store(["legacy one", "legacy two"])
    version = live(store.save(tmp_path / "new"))
    old = tmp_path / "old"
    old.mkdir()
    for name in ("store.json", "vectors.npy", "index.bin"):
        (old / name).write_bytes((version / name).read_bytes())
    meta = json.loads((old / "store.json").read_text())
    (old / "store.json").write_text(json.dumps(dict(meta, format=1)))
    before = sorted(os.listdir(old))
    assert texts_of(old) == ["legacy one", "legacy two"]
    assert sorted(os.listdir(old)) == before  # loading never writes
