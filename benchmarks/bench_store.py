"""MemoryStore throughput and hnsw recall.

Throughput: prefill a store to N entries, then time a random mix of operations (default 40% create, 40%
read top-6, 10% update, 10% delete) in three modes: "vectors" (precomputed random unit vectors of dim 384, so
embedding is excluded), "hash" (HashEmbedder, embedding included) and "minilm" (the embedded
all-MiniLM-L6-v2, embedding included, one text per call; its prefill uses random 384-d vectors so that a quick
run does not embed 10K texts first). Recall: top-6 of the store's hnsw path (exact_below=0) and of a bare
hnswlib index with the same settings, against exact search, for random queries and for queries near stored
vectors, per ef_search; with the read latency of the hnsw path and of the exact scan at each size.

    python benchmarks/bench_store.py                       # 1K and 10K, all modes (~1-2 min on 2 cores)
    python benchmarks/bench_store.py --threads 1            # steadier figures on a shared machine
    python benchmarks/bench_store.py --sizes 1000 --ops 500 --embed-ops 100 --modes vectors hash
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

# isort: off
import torch  # noqa: F401  (before hnswlib: see atom/memory/store.py)
import hnswlib

# isort: on
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing atom
from atom.memory.embedder import (  # noqa: E402
    HashEmbedder,
    MemoryConfig,  # noqa: E402
    build_embedder,
)
from atom.memory.store import MemoryStore  # noqa: E402

DIM = 384
TOP_K = 6
SYLLABLES = ["ka", "ro", "mi", "tan", "bel", "sor", "vi", "den", "lu", "gar", "pe", "nox", "tri", "ul", "zen"]
RELATIONS = ["was born in", "founded", "is the capital of", "married", "directed", "plays for", "wrote"]


class RandomVectors:
    """Embedder stand-in for the 'vectors' mode: the benchmark passes vectors, so it is never called."""

    dim = DIM

    def encode_documents(self, texts):
        raise RuntimeError("the 'vectors' mode passes precomputed vectors")

    encode_queries = encode_documents


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fact(rng: np.random.Generator) -> str:
    def name() -> str:
        return "".join(rng.choice(SYLLABLES, size=rng.integers(2, 4))).capitalize()

    return f"{name()} {name()} {rng.choice(RELATIONS)} {name()} in {rng.integers(1800, 2024)}."


def throughput(mode: str, size: int, n_ops: int, mix: list[float], seed: int, embedder=None) -> dict:
    """Prefill to ``size``, then time ``n_ops`` random operations (embedding included unless 'vectors')."""
    rng = np.random.default_rng(seed)
    store = MemoryStore(embedder if embedder is not None else RandomVectors(), MemoryConfig())
    texts = [fact(rng) for _ in range(size)]
    t0 = time.perf_counter()
    if mode == "hash":
        store.create_many(texts)
    else:  # "minilm" too: the prefill content does not matter for op cost, embedding 10K texts would dominate
        store.create_many(texts, unit_rows(rng, size))
    prefill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.read("warm-up query", TOP_K, vector=unit_rows(rng, 1)[0] if mode == "vectors" else None)
    first_read_s = time.perf_counter() - t0  # builds the hnsw index (lazy) above exact_below

    kinds = rng.choice(4, size=n_ops, p=mix)
    op_texts = [fact(rng) for _ in range(n_ops)]
    op_vecs = unit_rows(rng, n_ops) if mode == "vectors" else [None] * n_ops
    live = store.ids()
    spent = np.zeros(4)
    counts = np.zeros(4, dtype=int)
    t_all = time.perf_counter()
    for kind, text, vec, r in zip(kinds, op_texts, op_vecs, rng.random(n_ops)):
        if kind >= 2 and not live:
            kind = 0
        t0 = time.perf_counter()
        if kind == 0:
            live.append(store.create(text, vector=vec))
        elif kind == 1:
            store.read(text, TOP_K, vector=vec)
        else:
            j = int(r * len(live))
            if kind == 2:
                store.update(live[j], text, vector=vec)
            else:
                store.delete(live[j])
                live[j] = live[-1]
                live.pop()
        spent[kind] += time.perf_counter() - t0
        counts[kind] += 1
    total = time.perf_counter() - t_all
    names = ["create", "read", "update", "delete"]
    return {
        "mode": mode,
        "size": size,
        "ops": n_ops,
        "ops_per_s": n_ops / total,
        "us_per_op": {n: 1e6 * spent[i] / max(counts[i], 1) for i, n in enumerate(names)},
        "op_counts": {n: int(counts[i]) for i, n in enumerate(names)},
        "prefill_s": prefill_s,
        "first_read_s": first_read_s,
        "final_size": len(store),
        "search_counts": dict(store.search_counts),
    }


def exact_top(vecs: np.ndarray, q: np.ndarray) -> set[int]:
    return set(np.argsort(-(vecs.astype(np.float64) @ q.astype(np.float64)), kind="stable")[:TOP_K].tolist())


def recall(size: int, n_queries: int, efs: list[int], seed: int) -> dict:
    """Top-6 recall of the store's hnsw path (per ef_search) and of a bare hnswlib index; read latencies."""
    rng = np.random.default_rng(seed)
    vecs = unit_rows(rng, size)
    store = MemoryStore(RandomVectors(), MemoryConfig(exact_below=0))
    store.create_many([f"t{i}" for i in range(size)], vecs)
    store.read("q", TOP_K, vector=vecs[0])  # build the index outside the timings
    scan = MemoryStore(RandomVectors(), MemoryConfig(exact_below=size))
    scan.create_many([f"t{i}" for i in range(size)], vecs)
    bare = hnswlib.Index(space="ip", dim=DIM)
    bare.init_index(max_elements=size, M=store.cfg.hnsw_m, ef_construction=store.cfg.ef_construction)
    bare.add_items(vecs, np.arange(size), num_threads=1)
    near = vecs[rng.integers(0, size, n_queries)] + 0.5 * unit_rows(rng, n_queries)
    query_sets = {"random": unit_rows(rng, n_queries), "near": near / np.linalg.norm(near, axis=1)[:, None]}
    rows = []
    for name, queries in query_sets.items():
        truths = [exact_top(vecs, q) for q in queries]
        t0 = time.perf_counter()
        for q in queries:
            scan.read("q", TOP_K, vector=q)
        scan_us = 1e6 * (time.perf_counter() - t0) / n_queries
        for ef in efs:
            store.cfg = dataclasses.replace(store.cfg, ef_search=ef)  # read each query; no rebuild needed
            bare.set_ef(ef)
            before = dict(store.search_counts)
            hits_store = hits_bare = 0
            t0 = time.perf_counter()
            for q, truth in zip(queries, truths):
                hits_store += len(truth & {e.id for e in store.read("q", TOP_K, vector=q)})
            hnsw_us = 1e6 * (time.perf_counter() - t0) / n_queries
            for q, truth in zip(queries, truths):
                hits_bare += len(truth & set(bare.knn_query(q[None], k=TOP_K, num_threads=1)[0][0].tolist()))
            rows.append(
                {
                    "size": size,
                    "queries": name,
                    "ef_search": ef,
                    "recall_store": hits_store / (TOP_K * n_queries),
                    "recall_bare_hnsw": hits_bare / (TOP_K * n_queries),
                    "read_us_hnsw_path": hnsw_us,
                    "read_us_exact_scan": scan_us,
                    "fallbacks": store.search_counts["fallback"] - before["fallback"],
                }
            )
    return {"size": size, "n_queries": n_queries, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="store sizes after prefill")
    ap.add_argument("--ops", type=int, default=5000, help="timed operations per run (vectors, hash modes)")
    ap.add_argument("--embed-ops", type=int, default=300, help="timed operations per run in the minilm mode")
    modes = ["vectors", "hash", "minilm"]
    ap.add_argument("--modes", nargs="+", default=modes, choices=modes, help="throughput modes to run")
    mix = [0.4, 0.4, 0.1, 0.1]
    ap.add_argument("--mix", type=float, nargs=4, default=mix, help="shares of create, read, update, delete")
    ap.add_argument("--recall-queries", type=int, default=200, help="queries per recall set (0: skip recall)")
    ap.add_argument("--recall-ef", type=int, nargs="+", default=[64, 256], help="ef_search values for recall")
    ap.add_argument("--threads", type=int, default=0, help="BLAS and torch CPU threads (0: library defaults)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/bench_store.json")
    args = ap.parse_args()
    mix = list(np.asarray(args.mix) / sum(args.mix))

    if args.threads:
        # On a busy machine multi-threaded OpenBLAS/torch spin-wait: a 10K x 384 scan was measured 50x slower.
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    minilm = build_embedder(MemoryConfig(embedder="minilm", device="cpu")) if "minilm" in args.modes else None
    if minilm is not None:
        minilm.encode_queries(["warm up"])
    runs = []
    for size in args.sizes:
        for mode in args.modes:
            emb = {"vectors": None, "hash": HashEmbedder(256), "minilm": minilm}[mode]
            n_ops = args.embed_ops if mode == "minilm" else args.ops
            runs.append(throughput(mode, size, n_ops, mix, args.seed, emb))
            r = runs[-1]
            us = r["us_per_op"]
            print(
                f"{mode:>8} N={size:>6}: {r['ops_per_s']:>7.0f} ops/s  create {us['create']:>6.0f}us  "
                f"read {us['read']:>6.0f}us  update {us['update']:>6.0f}us  delete {us['delete']:>3.0f}us  "
                f"prefill {r['prefill_s']:.2f}s  first read {r['first_read_s']:.2f}s  "
                f"paths {r['search_counts']}",
                flush=True,
            )
    recalls = []
    for size in args.sizes if args.recall_queries else []:
        recalls.append(recall(size, args.recall_queries, args.recall_ef, args.seed))
        for x in recalls[-1]["rows"]:
            print(
                f"recall@{TOP_K} N={size:>6} {x['queries']:>6} queries ef={x['ef_search']:>4}: "
                f"store {x['recall_store']:.3f}  bare hnsw {x['recall_bare_hnsw']:.3f}  "
                f"read {x['read_us_hnsw_path']:>5.0f}us (hnsw path, {x['fallbacks']} fallbacks) "
                f"vs {x['read_us_exact_scan']:>5.0f}us (exact scan)",
                flush=True,
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"args": vars(args), "machine": platform.platform(), "python": platform.python_version()}
    out.write_text(json.dumps({"meta": meta, "throughput": runs, "recall": recalls}, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
