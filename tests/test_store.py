"""MemoryStore semantics: stable ids, exact reads on both search paths, errors, persistence, and a stateful
hypothesis test against a plain-Python reference."""

from __future__ import annotations

import atexit
import json
import math
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from atom.memory.embedder import HashEmbedder, MemoryConfig
from atom.memory.store import Entry, MemoryStore

EXACT = MemoryConfig(embedder="hash")
HNSW = MemoryConfig(embedder="hash", exact_below=0, initial_capacity=4)


def hash_store(cfg: MemoryConfig = EXACT, dim: int = 64) -> MemoryStore:
    return MemoryStore(HashEmbedder(dim), cfg)


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class NoEmbedder:
    """An embedder that must not be called (the caller passes vectors)."""

    def __init__(self, dim: int = 8):
        self.dim = dim

    def encode_documents(self, texts):
        raise AssertionError("embedder called although vectors were given")

    encode_queries = encode_documents


# ---- ids, CRUD, read semantics -----------------------------------------------------------------------------
def test_ids_start_at_zero_and_are_never_reused():
    store = hash_store()
    assert store.create_many(["a b", "c d"]) == [0, 1]
    store.delete(1)
    assert store.create("e f") == 2  # not 1, although 1 is free
    store.delete(2)
    store.delete(0)
    assert len(store) == 0 and store.ids() == []
    assert store.create("g") == 3
    assert store.ids() == [3] and 3 in store and 0 not in store and "3" not in store
    assert store.entries() == [Entry(3, "g")]


@pytest.mark.parametrize("cfg", [EXACT, HNSW], ids=["exact", "hnsw"])
def test_read_best_first_ties_to_smaller_id(cfg):
    store = hash_store(cfg)
    store.create_many(["banana", "apple cherry", "apple", "apple", "delta echo"])
    got = store.read("apple", 3)
    assert [e.id for e in got] == [2, 3, 1]  # 2 and 3 are identical: the smaller id first
    assert got[0].score == pytest.approx(1.0) and got[0].score == got[1].score > got[2].score > 0
    assert [e.text for e in got] == ["apple", "apple", "apple cherry"]


@pytest.mark.parametrize("cfg", [EXACT, HNSW], ids=["exact", "hnsw"])
def test_duplicate_vectors_tie_exactly_despite_blas_summation_order(cfg):
    # BLAS sums identical rows in different orders depending on their position, so raw float scores of
    # duplicates differ in the last bits; the store must still treat them as ties.
    rng = np.random.default_rng(4)
    store = MemoryStore(NoEmbedder(384), cfg)
    store.create_many([f"t{i}" for i in range(10)], np.repeat(unit_rows(rng, 1, 384), 10, axis=0))
    for q in unit_rows(rng, 20, 384):
        got = store.read("q", 3, vector=q)
        assert [e.id for e in got] == [0, 1, 2] and len({e.score for e in got}) == 1


def test_near_equal_scores_are_ordered_by_exact_arithmetic():
    # Scores closer than float32 rounding error: the exact scan's float32 pre-filter must keep the true best.
    rng = np.random.default_rng(5)
    for _ in range(200):  # about 1 in 12 of these flips order in float32
        q, a = unit_rows(rng, 2, 384)
        near = a + 1e-8 * rng.standard_normal((5, 384)).astype(np.float32)
        vecs = np.concatenate([near / np.linalg.norm(near, axis=1, keepdims=True), unit_rows(rng, 3, 384)])
        exact = [round(math.fsum((v.astype(np.float64) * q.astype(np.float64)).tolist()), 9) for v in vecs]
        store = MemoryStore(NoEmbedder(384), EXACT)
        store.create_many([f"t{i}" for i in range(8)], vecs)
        assert store.read("q", 1, vector=q)[0].id == min(range(8), key=lambda i: (-exact[i], i))


@pytest.mark.parametrize("cfg", [EXACT, HNSW], ids=["exact", "hnsw"])
def test_k_edge_cases(cfg):
    store = hash_store(cfg)
    assert store.read("anything", 6) == []  # empty store
    store.create_many(["a", "b", "c"])
    assert [e.id for e in store.read("b", 100)] == [1, 0, 2]  # k above live: all live
    for k in (0, -3):  # a caller asking for no results has a bug; say so instead of returning []
        with pytest.raises(ValueError, match=f"read k must be >= 1, got {k}"):
            store.read("b", k)
    assert store.read_many(["a", "c"], 1) == [[Entry(0, "a", 1.0)], [Entry(2, "c", 1.0)]]


@pytest.mark.parametrize("cfg", [EXACT, HNSW], ids=["exact", "hnsw"])
def test_deleted_never_returned_and_updates_found_by_new_text(cfg):
    store = hash_store(cfg)
    store.create_many(["paris france", "paris city", "berlin germany"])
    store.read("paris", 2)  # builds the hnsw index on the hnsw path, so later edits must reach it
    store.delete(0)
    assert [e.id for e in store.read("paris france", 6)] == [1, 2]
    store.update(1, "rome italy")
    assert store.get(1) == "rome italy"
    top = store.read("rome", 1)[0]
    assert (top.id, top.text, top.score) == (1, "rome italy", pytest.approx(math.sqrt(0.5)))
    assert all(e.score < 0.5 for e in store.read("paris city", 6))  # the old text is gone


def test_unknown_ids_raise_key_error_naming_the_id():
    store = hash_store()
    store.create_many(["a", "b"])
    store.delete(0)
    for call in (lambda: store.get(0), lambda: store.update(0, "x"), lambda: store.delete(0)):
        with pytest.raises(KeyError, match="memory id 0 .*deleted"):
            call()
    with pytest.raises(KeyError, match="memory id 7 .*never created"):
        store.update(7, "x")
    with pytest.raises(TypeError, match="int"):
        store.get("1")  # type: ignore[arg-type]
    assert store.ids() == [1] and store.get(1) == "b"


def test_failed_calls_change_nothing():
    store = hash_store(HNSW)
    store.create_many(["alpha", "beta"])
    store.read("alpha", 1)
    with pytest.raises(ValueError, match="non-empty"):
        store.create("   ")
    with pytest.raises(TypeError, match="str"):
        store.create(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        store.create_many(["gamma", ""])
    with pytest.raises(KeyError, match="memory id 9"):
        store.update_many([0, 9], ["new zero", "new nine"])
    with pytest.raises(ValueError, match="non-empty"):
        store.update_many([0, 1], ["new zero", "\n"])
    with pytest.raises(ValueError, match="must be non-empty"):
        store.read(" ", 3)
    assert store.ids() == [0, 1] and store.get(0) == "alpha" and store.next_id == 2
    assert [e.id for e in store.read("alpha", 2)] == [0, 1]
    assert store.create("gamma") == 2


def test_precomputed_vectors_are_used_and_validated():
    rng = np.random.default_rng(0)
    store = MemoryStore(NoEmbedder(), MemoryConfig(embedder="hash"))
    vecs = unit_rows(rng, 3, 8)
    assert store.create_many(["x", "y"], vecs[:2]) == [0, 1]
    assert store.create("z", vecs[2].astype(np.float64)) == 2
    assert store.read("q", 1, vector=vecs[1])[0].id == 1
    store.update(0, "x2", vector=vecs[1])
    assert [e.id for e in store.read_many(["q"], 2, vectors=vecs[1:2])[0]] == [0, 1]
    bad = {
        "shape": (vecs[:1, :4], ValueError),
        "dtype": (np.ones((1, 8), dtype=np.int64), TypeError),
        "NaN": (np.full((1, 8), np.nan, dtype=np.float32), ValueError),
        "L2-normalised": (2 * vecs[:1], ValueError),
    }
    for match, (v, err) in bad.items():
        with pytest.raises(err, match=match):
            store.create_many(["w"], v)
    with pytest.raises(ValueError, match="shape"):
        store.read("q", 2, vector=vecs[:2])
    assert len(store) == 3 and store.next_id == 3


# ---- the hnsw path -----------------------------------------------------------------------------------------
def test_hnsw_grows_past_capacity_and_matches_exact_when_pool_covers_store():
    rng = np.random.default_rng(1)
    vecs, queries = unit_rows(rng, 300, 16), unit_rows(rng, 20, 16)
    cfg = MemoryConfig(embedder="hash", exact_below=0, initial_capacity=8, ef_search=512)
    fast = MemoryStore(NoEmbedder(16), cfg)
    exact = MemoryStore(NoEmbedder(16), MemoryConfig(exact_below=10**6))
    for i, v in enumerate(vecs):  # one at a time, reading in between, so the index resizes several times
        fast.create(f"t{i}", v)
        exact.create(f"t{i}", v)
        if i % 50 == 0:
            fast.read("q", 6, vector=queries[0])
    assert fast._index is not None and fast._index.max_elements >= 300
    for q in queries:
        assert fast.read("q", 6, vector=q) == exact.read("q", 6, vector=q)
    assert fast.search_counts["hnsw"] > 0


def test_exact_below_is_the_largest_live_count_scanned_exactly():
    store = hash_store(MemoryConfig(embedder="hash", exact_below=3))
    store.create_many(["a", "b", "c"])
    store.read("a", 1)
    assert store.search_counts == {"exact": 1, "hnsw": 0, "fallback": 0}
    store.create("d")
    store.read("a", 1)
    assert store.search_counts == {"exact": 1, "hnsw": 1, "fallback": 0}


def test_hnsw_recall_with_default_pool():
    rng = np.random.default_rng(2)
    vecs = unit_rows(rng, 2000, 32)
    queries = vecs[:50] + 0.3 * unit_rows(rng, 50, 32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    store = MemoryStore(NoEmbedder(32), MemoryConfig(exact_below=0))
    store.create_many([f"t{i}" for i in range(2000)], vecs)
    hits = 0
    for q in queries:
        truth = set(np.argsort(-(vecs @ q), kind="stable")[:6].tolist())
        hits += len(truth & {e.id for e in store.read("q", 6, vector=q)})
    assert hits / (6 * len(queries)) >= 0.95
    assert store.search_counts["hnsw"] >= 45  # the answers came from hnsw, not the exact fallback


def test_hnsw_index_follows_updates_when_the_pool_is_smaller_than_the_store():
    rng = np.random.default_rng(3)
    old, new = unit_rows(rng, 500, 16), unit_rows(rng, 40, 16)
    store = MemoryStore(NoEmbedder(16), MemoryConfig(exact_below=0, ef_search=16))
    store.create_many([f"t{i}" for i in range(500)], old)
    store.read("q", 1, vector=old[0])  # build the index before the updates
    store.update_many(list(range(40)), [f"u{i}" for i in range(40)], new)
    for i in range(40):
        top = store.read("q", 1, vector=new[i])[0]
        assert (top.id, top.text, top.score) == (i, f"u{i}", pytest.approx(1.0, abs=1e-6))
        assert store.read("q", 1, vector=old[i])[0].id != i
    for i in range(40, 80):
        store.delete(i)
        assert store.read("q", 1, vector=old[i])[0].id != i
    assert store.search_counts["fallback"] == 0  # deleted labels were hidden in the index, not just filtered


def test_tie_group_cut_by_the_pool_falls_back_to_exact():
    store = hash_store(MemoryConfig(embedder="hash", exact_below=0, ef_search=8))
    store.create_many(["same words"] * 100 + ["other"])
    assert [e.id for e in store.read("same words", 3)] == [0, 1, 2]
    assert store.search_counts["fallback"] == 1


def test_hnsw_error_falls_back_to_exact():
    store = hash_store(HNSW)
    store.create_many(["red apple", "green apple", "blue sky", "red sky"])
    reference = hash_store()
    reference.create_many(["red apple", "green apple", "blue sky", "red sky"])
    store.read("apple", 1)

    class Broken:
        element_count, max_elements = 4, 8

        def set_ef(self, ef):
            pass

        def knn_query(self, *args, **kwargs):
            raise RuntimeError("Cannot return the results in a contiguous 2D array")

    store._index = Broken()  # type: ignore[assignment]
    assert store.read("red", 3) == reference.read("red", 3)
    assert store.search_counts["fallback"] == 1


def test_deleted_slots_are_reclaimed():
    store = hash_store(MemoryConfig(embedder="hash", exact_below=0, initial_capacity=4))
    ids = store.create_many([f"fact number {i}" for i in range(40)])
    store.read("fact", 1)
    for i in ids[:35]:
        store.delete(i)
    assert [e.id for e in store.read("fact number 37", 2)] == [37, 35]
    assert store._index is not None and store._index.element_count <= 2 * 4 + 5


# ---- persistence -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [EXACT, HNSW], ids=["exact", "hnsw"])
def test_save_load_round_trip(tmp_path, cfg):
    store = hash_store(cfg)
    store.create_many(["alpha beta", "beta gamma", "gamma delta", "delta alpha", "alpha"])
    store.read("alpha", 2)
    store.delete(1)
    store.update(3, "epsilon")
    store.save(tmp_path / "mem")
    version = tmp_path / "mem" / (tmp_path / "mem" / "CURRENT").read_text().strip()
    files = sorted(p.name for p in version.iterdir())
    assert files == (["index.bin"] if cfg is HNSW else []) + ["manifest.json", "store.json", "vectors.npy"]
    json.loads((version / "store.json").read_text())  # plain JSON, no pickle
    loaded = MemoryStore.load(tmp_path / "mem", HashEmbedder(64))
    assert loaded.cfg == cfg and loaded.ids() == [0, 2, 3, 4] and loaded.get(3) == "epsilon"
    for q in ("alpha", "beta gamma", "epsilon", "zeta"):
        assert loaded.read(q, 3) == store.read(q, 3)
    assert loaded.create("new") == 5 == store.create("new")
    assert loaded.read("new", 1)[0].id == 5


def test_load_rejects_embedder_of_other_dim(tmp_path):
    store = hash_store()
    store.create("a")
    store.save(tmp_path)
    with pytest.raises(ValueError, match="64-d vectors .* 32-d"):
        MemoryStore.load(tmp_path, HashEmbedder(32))
    with pytest.raises(FileNotFoundError, match="no such store directory"):
        MemoryStore.load(tmp_path / "missing", HashEmbedder(64))


def test_config_invariants_name_the_field():
    with pytest.raises(ValueError, match="memory.ef_search"):
        MemoryConfig(ef_search=0)
    with pytest.raises(ValueError, match="memory.exact_below"):
        MemoryConfig(exact_below=-1)
    with pytest.raises(ValueError, match="memory.embedder"):
        MemoryConfig(embedder=" ")


# ---- stateful test against a plain-Python reference --------------------------------------------------------
WORDS = ["apple", "banana", "cherry", "delta", "echo"]
TEXTS = st.one_of(st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(" ".join), st.just("?!"))
EMBEDDER = HashEmbedder(32)  # small dim and vocabulary: duplicates, collisions and ties are common


class Reference:
    """Dict of live texts and an exact scan; scores are exact sums (fsum) rounded per the store's contract."""

    def __init__(self) -> None:
        self.texts: dict[int, str] = {}
        self.next_id = 0

    def read(self, query: str, k: int) -> list[tuple[int, str, float]]:
        q = EMBEDDER.encode_queries([query])[0].astype(np.float64)
        scored = []
        for i, text in self.texts.items():
            v = EMBEDDER.encode_documents([text])[0].astype(np.float64)
            scored.append((-round(math.fsum((v * q).tolist()), 9), i, text))
        return [(i, text, -s) for s, i, text in sorted(scored)[: max(k, 0)]]


def make_machine(cfg: MemoryConfig) -> type[RuleBasedStateMachine]:
    save_dir = tempfile.mkdtemp(prefix="atom-store-test-")
    atexit.register(shutil.rmtree, save_dir, ignore_errors=True)

    class StoreMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.store = MemoryStore(EMBEDDER, cfg)
            self.ref = Reference()

        def check_read(self, got: list[Entry], query: str, k: int) -> None:
            want = self.ref.read(query, k)
            assert [(e.id, e.text) for e in got] == [(i, t) for i, t, _ in want]
            assert np.allclose([e.score for e in got], [s for _, _, s in want], atol=1e-5)

        @rule(text=TEXTS)
        def create(self, text):
            assert self.store.create(text) == self.ref.next_id
            self.ref.texts[self.ref.next_id] = text
            self.ref.next_id += 1

        @rule(texts=st.lists(TEXTS, max_size=6))
        def create_many(self, texts):
            first = self.ref.next_id
            assert self.store.create_many(texts) == list(range(first, first + len(texts)))
            for text in texts:
                self.ref.texts[self.ref.next_id] = text
                self.ref.next_id += 1

        @rule(query=TEXTS, k=st.integers(-1, 8))
        def read(self, query, k):
            if k <= 0:
                with pytest.raises(ValueError, match="read k must be >= 1"):
                    self.store.read(query, k)
                return
            self.check_read(self.store.read(query, k), query, k)

        @rule(queries=st.lists(TEXTS, min_size=1, max_size=3), k=st.integers(1, 5))
        def read_many(self, queries, k):
            for got, query in zip(self.store.read_many(queries, k), queries, strict=True):
                self.check_read(got, query, k)

        @precondition(lambda self: self.ref.texts)
        @rule(data=st.data(), text=TEXTS)
        def update_live(self, data, text):
            id = data.draw(st.sampled_from(sorted(self.ref.texts)))
            self.store.update(id, text)
            self.ref.texts[id] = text

        @precondition(lambda self: self.ref.texts)
        @rule(data=st.data())
        def delete_live(self, data):
            id = data.draw(st.sampled_from(sorted(self.ref.texts)))
            self.store.delete(id)
            del self.ref.texts[id]

        @rule(id=st.integers(-2, 40), text=st.one_of(TEXTS, st.just("  ")))
        def update_or_delete_any(self, id, text):
            if id not in self.ref.texts:
                with pytest.raises(KeyError, match=f"memory id {id} "):
                    self.store.update(id, text) if id % 2 else self.store.delete(id)
            elif not text.strip():
                with pytest.raises(ValueError):
                    self.store.update(id, text)
            else:
                self.store.update(id, text)
                self.ref.texts[id] = text

        @rule()
        def save_and_load(self):
            # One folder for every example: each save must also replace what an earlier store left there.
            self.store.save(save_dir, durable=False)  # no fsyncs: thousands of saves here (durable: test_store_persist)
            self.store = MemoryStore.load(save_dir, EMBEDDER)

        @invariant()
        def same_entries(self):
            assert len(self.store) == len(self.ref.texts)
            assert self.store.ids() == sorted(self.ref.texts)
            assert self.store.next_id == self.ref.next_id
            assert all(self.store.get(i) == t for i, t in self.ref.texts.items())

    StoreMachine.TestCase.settings = settings(
        max_examples=200, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    return StoreMachine


# exact scans only; hnsw for every read (small capacity, so it grows and compacts); switching between the two
# Each machine runs for seconds (hnsw rebuilds under hypothesis): the slow tier.
TestStoreExactPath = pytest.mark.slow(make_machine(MemoryConfig(embedder="hash", initial_capacity=4)).TestCase)
TestStoreHnswPath = pytest.mark.slow(
    make_machine(MemoryConfig(embedder="hash", exact_below=0, initial_capacity=4)).TestCase
)
TestStoreMixedPaths = pytest.mark.slow(
    make_machine(MemoryConfig(embedder="hash", exact_below=6, initial_capacity=4)).TestCase
)


def test_torch_is_imported_before_hnswlib():
    """On a CUDA image (torch 2.11+cu130, hnswlib built from source there) `import hnswlib` before torch made the
    later torch import segfault; every atom entry point reaches hnswlib through atom.memory.store, which imports
    torch first. A fresh interpreter shows the order in which the modules were first imported."""
    import subprocess
    import sys

    code = "import sys, atom.memory.store; m = list(sys.modules); print(m.index('torch') < m.index('hnswlib'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
