"""Statistics of the long-context samples: ``python -m atom.data_stats CONFIG [key=value ...]``.

Usage: ``python -m atom.data_stats CONFIG [key=value ...] [--split both|train|val|all] [--out FILE]``.

Builds the long-context samples the config describes and prints, per split: samples, questions, documents,
tokens (policy tokenizer) and chunks per sample (mean/min/max), the share of samples whose context was
centre-truncated, and the share of samples whose supporting paragraphs all survived, first into the documents
and then also through the centre truncation at ``data.max_chunks``. ``--split all`` uses every record in file
order (no train/validation split). Each context is tokenized once. A top-level entry point, not
``atom/data/__main__.py``: it reads the experiment config (``atom.config``) and the policy tokenizer, which sit
above the data package.

Example (the paper's HotpotQA setting over the shipped sample):

    python -m atom.data_stats experiments/quickstart.yaml data.dataset=hotpotqa data.val_fraction=1.0 \\
        data.path=../shared/data/hotpotqa/hotpot_dev_distractor_v1.sample.json data.num_docs=200
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from atom.cli import entry_point
from atom.cli import parser as cli_parser
from atom.config import load_config
from atom.data.chunker import TokenChunker
from atom.data.datamodule import AtomDataModule
from atom.data.longcontext import LongContextSample, document_spans
from atom.data.records import SAMPLE_DATASETS, Paragraph, QARecord
from atom.policy.models import load_tokenizer


def _summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "min": 0.0, "max": 0.0}
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def _covered(span: tuple[int, int], kept: list[tuple[int, int]]) -> bool:
    return any(start <= span[0] and span[1] <= end for start, end in kept)


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def passage_spans(documents: Sequence[Paragraph]) -> list[tuple[int, int]]:
    """Character span of each passage of a long text (``raw_text``): they are its consecutive slices."""
    spans, pos = [], 0
    for paragraph in documents:
        spans.append((pos, pos + len(paragraph.text)))
        pos += len(paragraph.text)
    return spans


def split_stats(
    samples: Sequence[LongContextSample], records: dict[str, QARecord], chunker: TokenChunker
) -> dict[str, object]:
    """Statistics of one split's samples (see the module docstring)."""
    tokens, chunks, truncated, in_docs, survived = [], [], 0, 0, 0
    for sample in samples:
        stream = chunker.stream(sample.context)  # block by block: flat memory for million-token contexts
        windows = stream.windows
        tokens.append(stream.n_tokens)
        chunks.append(len(windows))
        truncated += len(windows) < chunker.total_windows(stream.n_tokens)
        # a sample dataset's samples come as they are (no record to compare with): their evidence is all in
        wanted = [
            len({records[r].paragraphs[j].key for j in records[r].supporting}) if r in records else len(set(docs))
            for r, docs in zip(sample.record_ids, sample.supporting_docs)
        ]
        all_in = all(len(set(docs)) == n for docs, n in zip(sample.supporting_docs, wanted))
        kept = _merge([(stream.bound(start), stream.bound(end)) for _, start, end in windows])
        spans = passage_spans(sample.documents) if sample.raw_text else document_spans(sample.documents)
        all_kept = all(_covered(spans[d], kept) for docs in sample.supporting_docs for d in docs)
        in_docs += all_in
        survived += all_in and all_kept
    n = max(1, len(samples))
    return {
        "samples": len(samples),
        "questions": sum(len(s.questions) for s in samples),
        "questions_per_sample": _summary([len(s.questions) for s in samples]),
        "documents_per_sample": _summary([len(s.documents) for s in samples]),
        "tokens_per_sample": _summary(tokens),
        "chunks_per_sample": _summary(chunks),
        "truncated_share": truncated / n,
        "support_in_documents_share": in_docs / n,
        "support_survived_share": survived / n,
        "questions_by_category": dict(sorted(Counter(c for s in samples for c in s.categories).items())),
    }


def _print(name: str, stats: dict) -> None:
    def fmt(key: str, digits: int = 1) -> str:
        s = stats[key]
        return f"{s['mean']:.{digits}f} (min {s['min']:g}, max {s['max']:g})"

    print(f"[{name}] {stats['samples']} samples, {stats['questions']} questions")
    if not stats["samples"]:
        return
    print(f"  questions/sample  {fmt('questions_per_sample', 2)}")
    print(f"  documents/sample  {fmt('documents_per_sample')}")
    print(f"  tokens/sample     {fmt('tokens_per_sample', 0)}")
    print(f"  chunks/sample     {fmt('chunks_per_sample', 2)}   truncated: {stats['truncated_share']:.1%}")
    print(
        f"  supporting paragraphs all kept: in documents {stats['support_in_documents_share']:.1%}, "
        f"after truncation {stats['support_survived_share']:.1%}"
    )
    if stats["questions_by_category"]:
        print("  questions by category: " + ", ".join(f"{k} {v}" for k, v in stats["questions_by_category"].items()))


@entry_point("atom.data_stats")
def main(argv: list[str] | None = None) -> dict:
    parser = cli_parser("python -m atom.data_stats", __doc__)
    parser.add_argument("config", help="experiment YAML (its data and model sections are used)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.num_docs=400")
    parser.add_argument(
        "--split",
        choices=("both", "train", "val", "all"),
        default="both",
        help="which samples: train and val (default), one of them, or all records unsplit",
    )
    parser.add_argument("--out", help="also write the statistics as JSON to this file")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    start = time.perf_counter()
    data = AtomDataModule(cfg.data)
    data.setup()
    if args.split == "all":
        splits = {"all": data.all_samples()}
    else:
        names = ("train", "val") if args.split == "both" else (args.split,)
        splits = {name: getattr(data, f"{name}_samples") for name in names}
    d = cfg.data
    chunker = TokenChunker(
        load_tokenizer(cfg.model), d.chunk_tokens, d.chunk_overlap, d.max_chunks, d.chunk_margin, d.max_context_tokens
    )
    records = {r.id: r for r in data.records}
    if d.dataset in SAMPLE_DATASETS:  # samples as the file has them: no records grouped, no num_docs
        print(f"{d.dataset}: {len(data.all_samples())} samples from {d.path}, tokenizer {cfg.model.name_or_path}")
    else:
        print(f"{d.dataset}: {len(data.records)} records, num_docs={d.num_docs}, tokenizer {cfg.model.name_or_path}")
    result = {"data": asdict(cfg.data), "tokenizer": cfg.model.name_or_path, "splits": {}}
    for name, samples in splits.items():
        result["splits"][name] = split_stats(samples, records, chunker)
        _print(name, result["splits"][name])
    result["seconds"] = time.perf_counter() - start
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
