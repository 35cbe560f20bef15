"""The episode memory: texts under stable integer ids, searched by cosine similarity (exact or hnswlib).

One ``MemoryStore`` per episode. Ids start at 0 and are never reused, not even after a delete, so an id the
policy saw earlier always means the same entry or none. Semantics are exact under any sequence of operations:
a deleted entry is never returned, an updated entry is found by its new text only, results are best first
with ties going to the smaller id.

Search: the store keeps its own vectors (float32, unit rows) and live set; hnswlib is only a candidate
generator. At or below ``exact_below`` live entries a read is an exact scan. Above it, hnsw proposes a
candidate pool that is rescored exactly from the stored vectors; the store falls back to an exact scan when
hnsw raises (hnswlib 0.8 raises whenever it finds fewer than k), returns too few ids, or when the pool may
have cut a group of tied scores in two (so ties still go to the smaller id). The hnsw index is built lazily,
on the first read that needs it, so small stores never pay for it. Its labels are not the ids: an update
marks the old label deleted and adds the new vector under a fresh label, because hnswlib's in-place update
(re-adding a label) repairs the neighbourhood and costs about 8x an insert.

Scores are float64 inner products of the stored float32 vectors rounded to ``SCORE_DECIMALS`` decimals: BLAS
sums identical rows in different orders depending on their position, and equal similarities must compare
equal so that the id decides.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# torch before hnswlib: on a CUDA image (torch 2.11+cu130, hnswlib built there from source) importing hnswlib
# first makes the later torch import segfault in torch/_ops.py; this order imports cleanly (measured on an H200)
# isort: off
import torch  # noqa: F401  (import order only)
import hnswlib

# isort: on
import numpy as np

from atom.memory.embedder import Embedder, MemoryConfig
from atom.memory.persist import POINTER, StoreError, read_version, write_version

SCORE_DECIMALS = 9  # scores equal after rounding to this many decimals are ties (broken by smaller id)
_NORM_TOLERANCE = 1e-3  # precomputed vectors must have an L2 norm within this of 1
_FORMAT = 2  # version of store.json (1: saved without a manifest, still loadable)


@dataclass(frozen=True)
class Entry:
    """One memory entry as a read returns it."""

    id: int  # stable store id
    text: str  # the entry's current text
    score: float = 0.0  # cosine similarity to the query (0.0 where there is no query, e.g. entries())


def _check_text(text: Any, what: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{what} must be non-empty, got {text!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: no file, JSON or tokenizer could hold it
        raise ValueError(
            f"{what} is not valid UTF-8 text: {exc.reason} {text[exc.start]!r} at position {exc.start}"
        ) from None
    return text


class MemoryStore:
    """CRUD over texts with stable integer ids and cosine-similarity reads; see the module docstring.

    ``search_counts`` counts the reads served by each path: "exact" (scan at or below ``exact_below``),
    "hnsw", and "fallback" (an exact scan where hnsw could not be trusted).

    Args:
        embedder: embeds texts when no vectors are passed (documents on create/update, queries on read).
        cfg: search and index settings.
    """

    def __init__(self, embedder: Embedder, cfg: MemoryConfig | None = None):
        self.embedder = embedder
        self.cfg = cfg if cfg is not None else MemoryConfig()
        self.dim = int(embedder.dim)
        self._texts: dict[int, str] = {}  # live id -> text; insertion order is ascending id (ids only grow)
        self._slot: dict[int, int] = {}  # live id -> row of _vecs
        self._vecs = np.zeros((self.cfg.initial_capacity, self.dim), dtype=np.float32)  # rows [0, live) used
        self._slot_ids = np.zeros(self.cfg.initial_capacity, dtype=np.int64)  # id stored in each used row
        self._next_id = 0
        self._index: hnswlib.Index | None = None  # built on the first read that needs it
        self._label: dict[int, int] = {}  # live id -> its current hnsw label (empty while there is no index)
        self._owner: dict[int, int] = {}  # current hnsw label -> live id
        self._next_label = 0
        self.search_counts = {"exact": 0, "hnsw": 0, "fallback": 0}  # reads served by each path

    # ---- introspection -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._texts)

    def __contains__(self, id: object) -> bool:
        return isinstance(id, (int, np.integer)) and not isinstance(id, bool) and int(id) in self._texts

    @property
    def next_id(self) -> int:
        return self._next_id

    def ids(self) -> list[int]:
        """Live ids, ascending."""
        return list(self._texts)

    def entries(self) -> list[Entry]:
        """Live entries, ascending id (score 0.0)."""
        return [Entry(i, t) for i, t in self._texts.items()]

    def get(self, id: int) -> str:
        return self._texts[self._check_id(id)]

    def _check_id(self, id: Any) -> int:
        if isinstance(id, bool) or not isinstance(id, (int, np.integer)):
            raise TypeError(f"memory id must be an int, got {type(id).__name__} {id!r}")
        if int(id) not in self._texts:
            state = "was deleted" if 0 <= int(id) < self._next_id else "was never created"
            raise KeyError(f"memory id {int(id)} does not exist (it {state}); live ids: {self._preview()}")
        return int(id)

    def _preview(self) -> str:
        ids = self.ids()
        return str(ids) if len(ids) <= 20 else f"{ids[:20]} ... ({len(ids)} in all)"

    def _check_vectors(self, vectors: Any, n: int, what: str) -> np.ndarray:
        arr = np.asarray(vectors)
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"{what} must be a floating-point array, got dtype {arr.dtype}")
        if arr.shape != (n, self.dim):
            raise ValueError(f"{what} must have shape ({n}, {self.dim}), got {arr.shape}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ValueError(f"{what} contains NaN or infinite values")
        norms = np.linalg.norm(arr.astype(np.float64), axis=1)
        if n and np.abs(norms - 1.0).max() > _NORM_TOLERANCE:
            lo, hi = norms.min(), norms.max()
            raise ValueError(f"{what} rows must be L2-normalised (norms {lo:.4f} to {hi:.4f})")
        return arr

    def _embed(self, texts: list[str], vectors: Any, query: bool, what: str) -> np.ndarray:
        if vectors is None:
            vectors = self.embedder.encode_queries(texts) if query else self.embedder.encode_documents(texts)
        return self._check_vectors(vectors, len(texts), what)

    # ---- create / update / delete --------------------------------------------------------------------------
    def create(self, text: str, vector: Any = None) -> int:
        """Store ``text``; returns its new id."""
        return self.create_many([text], None if vector is None else np.asarray(vector)[None])[0]

    def create_many(self, texts: Sequence[str], vectors: Any = None) -> list[int]:
        """Store several texts (one embedder call); returns their ids, ascending. All or nothing."""
        texts = [_check_text(t, f"memory text {i}") for i, t in enumerate(texts)]
        vecs = self._embed(texts, vectors, query=False, what="create vectors")
        new_ids = list(range(self._next_id, self._next_id + len(texts)))
        self._reserve_rows(len(self._texts) + len(texts))
        for i, text, vec in zip(new_ids, texts, vecs):
            row = len(self._texts)
            self._vecs[row] = vec
            self._slot_ids[row] = i
            self._slot[i] = row
            self._texts[i] = text
        self._next_id += len(texts)
        if self._index is not None and new_ids:
            self._index_add(vecs, new_ids)
        return new_ids

    def update(self, id: int, text: str, vector: Any = None) -> None:
        """Replace the text (and vector) of entry ``id``."""
        self.update_many([id], [text], None if vector is None else np.asarray(vector)[None])

    def update_many(self, ids: Sequence[int], texts: Sequence[str], vectors: Any = None) -> None:
        """Replace several entries, in order (a repeated id ends with its last text). All or nothing."""
        if len(ids) != len(texts):
            raise ValueError(f"update_many: {len(ids)} ids but {len(texts)} texts")
        ids = [self._check_id(i) for i in ids]
        texts = [_check_text(t, f"memory text for id {i}") for i, t in zip(ids, texts)]
        vecs = self._embed(texts, vectors, query=False, what="update vectors")
        for i, text, vec in zip(ids, texts, vecs):
            self._texts[i] = text
            self._vecs[self._slot[i]] = vec
        if self._index is not None and ids:
            last = {i: row for row, i in enumerate(ids)}  # a repeated id ends with its last vector
            for i in last:
                self._unindex(i)
            self._index_add(vecs[list(last.values())], list(last))
            self._maybe_drop_index()

    def delete(self, id: int) -> None:
        """Delete entry ``id``; its id is never reused."""
        id = self._check_id(id)
        row, last = self._slot.pop(id), len(self._texts) - 1
        del self._texts[id]
        if row != last:  # keep used rows contiguous: move the last row into the hole
            moved = int(self._slot_ids[last])
            self._vecs[row] = self._vecs[last]
            self._slot_ids[row] = moved
            self._slot[moved] = row
        if self._index is not None:
            self._unindex(id)
            self._maybe_drop_index()

    def _reserve_rows(self, n: int) -> None:
        if n <= len(self._vecs):
            return
        cap = max(n, 2 * len(self._vecs))
        vecs = np.zeros((cap, self.dim), dtype=np.float32)
        vecs[: len(self._texts)] = self._vecs[: len(self._texts)]
        slot_ids = np.zeros(cap, dtype=np.int64)
        slot_ids[: len(self._texts)] = self._slot_ids[: len(self._texts)]
        self._vecs, self._slot_ids = vecs, slot_ids

    # ---- hnsw index ----------------------------------------------------------------------------------------
    def _new_index(self, capacity: int) -> hnswlib.Index:
        index = hnswlib.Index(space="ip", dim=self.dim)
        index.init_index(max_elements=capacity, M=self.cfg.hnsw_m, ef_construction=self.cfg.ef_construction)
        index.set_ef(self.cfg.ef_search)
        return index

    def _build_index(self) -> hnswlib.Index:
        n = len(self._texts)
        self._index = self._new_index(max(self.cfg.initial_capacity, 2 * n))
        self._label, self._owner, self._next_label = {}, {}, 0
        if n:
            self._index_add(self._vecs[:n], self._slot_ids[:n].tolist())
        return self._index

    def _index_add(self, vecs: np.ndarray, ids: list[int]) -> None:
        """Add vectors of ``ids`` (not in the index) under fresh labels, growing the index first if needed."""
        index = self._index
        assert index is not None
        if index.element_count + len(ids) > index.max_elements:
            index.resize_index(max(index.element_count + len(ids), 2 * index.max_elements))
        labels = list(range(self._next_label, self._next_label + len(ids)))
        self._next_label += len(ids)
        # One thread: the graph (and so any approximate miss) is then the same on every run.
        index.add_items(vecs, labels, num_threads=1)
        for i, label in zip(ids, labels):
            self._label[i] = label
            self._owner[label] = i

    def _unindex(self, id: int) -> None:
        label = self._label.pop(id)
        del self._owner[label]
        self._index.mark_deleted(label)  # type: ignore[union-attr]

    def _maybe_drop_index(self) -> None:
        # Without replace_deleted (unsafe in 0.8) deleted slots are never freed; drop the index once they
        # outnumber the live entries (the next read that needs it rebuilds it), so it stays proportional to
        # the store.
        dead = self._index.element_count - len(self._texts)  # type: ignore[union-attr]
        if dead > max(len(self._texts), self.cfg.initial_capacity):
            self._index, self._label, self._owner = None, {}, {}

    # ---- read ----------------------------------------------------------------------------------------------
    def read(self, query: str, k: int, vector: Any = None) -> list[Entry]:
        """The ``k`` live entries most similar to ``query``, best first (ties: smaller id)."""
        return self.read_many([query], k, None if vector is None else np.asarray(vector)[None])[0]

    def read_many(self, queries: Sequence[str], k: int, vectors: Any = None) -> list[list[Entry]]:
        """``read`` for several queries with one embedder call."""
        queries = [_check_text(q, f"query {i}") for i, q in enumerate(queries)]
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"read k must be an int, got {type(k).__name__}")
        if k <= 0:
            raise ValueError(f"read k must be >= 1, got {k}")
        if not self._texts:
            if vectors is not None:
                self._check_vectors(vectors, len(queries), "query vectors")
            return [[] for _ in queries]
        qvecs = self._embed(queries, vectors, query=True, what="query vectors")
        return [self._search(q, min(int(k), len(self._texts))) for q in qvecs]

    def _search(self, q: np.ndarray, k: int) -> list[Entry]:
        n = len(self._texts)
        if n > self.cfg.exact_below:
            found = self._search_hnsw(q, k)
            if found is not None:
                self.search_counts["hnsw"] += 1
                return found
            self.search_counts["fallback"] += 1
        else:
            self.search_counts["exact"] += 1
        rows = np.arange(n)
        if k < n:
            # A float32 pass picks the rows that can still reach the k-th best score: the float32 error of a
            # dot product of unit vectors is below dim * eps / 2, so a margin of twice that (plus the rounding
            # of SCORE_DECIMALS) keeps the whole tie group of the k-th score; only those are rescored exactly.
            fast = self._vecs[:n] @ q
            margin = 2 * self.dim * float(np.finfo(np.float32).eps) + 10.0**-SCORE_DECIMALS
            rows = np.flatnonzero(fast >= np.partition(fast, n - k)[n - k] - margin)
        return self._top(rows, self._scores(rows, q), k)

    def _scores(self, rows: np.ndarray, q: np.ndarray) -> np.ndarray:
        return np.round(self._vecs[rows].astype(np.float64) @ q.astype(np.float64), SCORE_DECIMALS)

    def _top(self, rows: np.ndarray, scores: np.ndarray, k: int) -> list[Entry]:
        ids = self._slot_ids[rows]
        order = np.lexsort((ids, -scores))[:k]
        return [Entry(int(ids[j]), self._texts[int(ids[j])], float(scores[j])) for j in order]

    def _search_hnsw(self, q: np.ndarray, k: int) -> list[Entry] | None:
        """Exact top-k from an hnsw candidate pool, or None when only an exact scan can be trusted."""
        index = self._index if self._index is not None else self._build_index()
        n = len(self._texts)
        pool = min(n, max(2 * k, self.cfg.ef_search))
        index.set_ef(max(self.cfg.ef_search, pool))
        try:
            labels, _ = index.knn_query(q[None], k=pool, num_threads=1)
        except RuntimeError:  # fewer than `pool` found (small or damaged graph)
            return None
        owners = [self._owner.get(int(x)) for x in labels[0]]
        rows = np.array([self._slot[i] for i in owners if i is not None], dtype=np.int64)
        if len(np.unique(rows)) < pool:
            return None
        scores = self._scores(rows, q)
        result = self._top(rows, scores, k)
        # A pool that is not the whole store may have cut the group tied with the k-th score in two; entries
        # of that group outside the pool could have smaller ids.
        if pool < n and scores.min() >= result[-1].score:
            return None
        return result

    # ---- persistence ---------------------------------------------------------------------------------------
    def save(self, path: str | Path, durable: bool = True) -> Path:
        """Save to directory ``path`` atomically (``atom.memory.persist``): a new version holding store.json,
        vectors.npy and index.bin (if built), checksummed; no pickle. The previous save stays loadable until
        this one is complete. ``durable=False`` skips the fsyncs (still atomic against crashes and kills, not
        against a power loss). Returns ``path``."""
        n = len(self._texts)
        order = np.argsort(self._slot_ids[:n], kind="stable")  # rows in ascending id, aligned with "ids"
        meta = {
            "format": _FORMAT,
            "dim": self.dim,
            "next_id": self._next_id,
            "ids": self.ids(),
            "texts": list(self._texts.values()),
            "has_index": self._index is not None,
            "labels": [self._label[i] for i in self._texts] if self._index is not None else [],  # as "ids"
            "next_label": self._next_label,
            "config": dataclasses.asdict(self.cfg),
        }
        encoded = json.dumps(meta, ensure_ascii=False).encode("utf-8")  # fails here, before the disk is touched

        def write(version: Path) -> None:
            np.save(version / "vectors.npy", self._vecs[:n][order], allow_pickle=False)
            if self._index is not None:
                self._index.save_index(str(version / "index.bin"))
            (version / "store.json").write_bytes(encoded)

        write_version(path, write, durable)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, embedder: Embedder) -> MemoryStore:
        """Restore a store written by ``save``; new ids continue after the saved ``next_id``.

        Raises:
            StoreError: the directory is not a save, or a file is truncated, corrupted or edited (named).
            FileNotFoundError: ``path`` does not exist.
        """
        src = Path(path)
        if not (src / POINTER).exists() and (src / "store.json").is_file():
            return cls._read(src, embedder)  # a format-1 save (files in the directory itself, no manifest)
        return read_version(src, lambda version: cls._read(version, embedder))

    @classmethod
    def _read(cls, src: Path, embedder: Embedder) -> MemoryStore:
        where = f"{src.parent}: {src.name}/"
        try:
            meta = json.loads((src / "store.json").read_text(encoding="utf-8"))
            if meta.get("format") not in (1, _FORMAT):
                raise StoreError(f"{where}store.json: store format {meta.get('format')} is not the supported {_FORMAT}")
            ids, texts = [int(i) for i in meta["ids"]], meta["texts"]
            config, next_id, has_index = MemoryConfig(**meta["config"]), int(meta["next_id"]), meta["has_index"]
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts) or len(texts) != len(ids):
                raise StoreError(f"{where}store.json: 'texts' must be {len(ids)} strings, one per id")
        except (ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"{where}store.json is not a MemoryStore description ({exc!r})") from None
        if int(embedder.dim) != meta["dim"]:
            raise StoreError(
                f"{where}store.json: the store holds {meta['dim']}-d vectors but the embedder makes {embedder.dim}-d "
                "ones; load it with the embedder it was saved with"
            )
        store = cls(embedder, config)
        try:
            vecs = np.load(src / "vectors.npy", allow_pickle=False)
        except (ValueError, EOFError, OSError) as exc:
            raise StoreError(f"{where}vectors.npy is not a float array file ({exc}); the save is damaged") from None
        if vecs.shape != (len(ids), store.dim):
            raise StoreError(f"{where}vectors.npy {vecs.shape} does not fit {len(ids)} ids, dim {store.dim}")
        store._reserve_rows(len(ids))
        store._vecs[: len(ids)] = vecs
        store._slot_ids[: len(ids)] = ids
        store._slot = {i: row for row, i in enumerate(ids)}
        store._texts = dict(zip(ids, texts))
        store._next_id = next_id
        if has_index:
            index = hnswlib.Index(space="ip", dim=store.dim)
            try:
                index.load_index(str(src / "index.bin"))
            except RuntimeError as exc:
                raise StoreError(f"{where}index.bin is not an hnswlib index ({exc}); the save is damaged") from None
            index.set_ef(store.cfg.ef_search)  # save_index does not keep ef
            labels = [int(x) for x in meta["labels"]]
            if len(labels) != len(ids) or not set(labels) <= set(index.get_ids_list()):
                raise StoreError(f"{where}index.bin lacks some labels of store.json; the save is inconsistent")
            store._index = index
            store._label = dict(zip(ids, labels))
            store._owner = dict(zip(labels, ids))
            store._next_label = int(meta["next_label"])
        return store
