"""Data: dataset loaders (original formats), the synthetic task, long-context samples, token chunks.

``atom.data.datamodule`` (``DataConfig``, ``AtomDataModule``) imports Lightning and is not re-exported here,
so the record types can be imported cheaply.
"""

from atom.data.chunker import Chunk, TokenChunker, TokenizedText
from atom.data.loaders import load_2wiki, load_hotpotqa, load_musique, load_records, records_from_rows
from atom.data.longcontext import LongContextSample, build_samples, document_spans, paragraph_pool, render
from atom.data.records import DATASETS, DataError, Paragraph, QARecord
from atom.data.synthetic import SyntheticConfig, generate

__all__ = [
    "DATASETS",
    "Chunk",
    "DataError",
    "LongContextSample",
    "Paragraph",
    "QARecord",
    "SyntheticConfig",
    "TokenChunker",
    "TokenizedText",
    "build_samples",
    "document_spans",
    "generate",
    "load_2wiki",
    "load_hotpotqa",
    "load_musique",
    "load_records",
    "paragraph_pool",
    "records_from_rows",
    "render",
]
