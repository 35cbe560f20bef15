"""The agent's memory: a vector store with CRUD by stable id, and the embedders that feed it."""

from atom.memory.embedder import Embedder, HashEmbedder, MemoryConfig, SentenceEmbedder, build_embedder
from atom.memory.store import Entry, MemoryStore

__all__ = [
    "Embedder",
    "Entry",
    "HashEmbedder",
    "MemoryConfig",
    "MemoryStore",
    "SentenceEmbedder",
    "build_embedder",
]
