"""DataConfig checks and the Lightning data module on the synthetic task (small num_docs, fast)."""

from __future__ import annotations

import dataclasses
import json

import lightning
import pytest
import torch
from omegaconf import OmegaConf

from atom.data.datamodule import AtomDataModule, EpochShuffler, split_records
from atom.data.loaders import DataConfig
from atom.data.longcontext import LongContextSample
from atom.data.synthetic import SyntheticConfig
from atom.data_stats import main as stats_main


def small(**kw) -> DataConfig:
    base = dict(num_docs=12, max_questions=3, synthetic=SyntheticConfig(num_records=40, hops=2, seed=5))
    return DataConfig(**{**base, **kw})


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"dataset": "squad"}, "data.dataset"),
        ({"val_fraction": 1.5}, "data.val_fraction"),
        ({"num_docs": 0}, "data.num_docs"),
        ({"chunk_tokens": 100, "chunk_overlap": 100}, "data.chunk_overlap"),
        ({"max_questions": 0}, "data.max_questions"),
        ({"single_question_prob": -0.1}, "data.single_question_prob"),
    ],
)
def test_config_invariants_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        DataConfig(**kw)


def test_config_is_an_omegaconf_structured_config():
    merged = OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.from_dotlist(["synthetic.hops=3"]))
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, DataConfig) and cfg.synthetic.hops == 3


def test_split_is_seeded_disjoint_and_keeps_file_order():
    records = list(range(50))
    train, val = split_records(records, 0.2, seed=1)
    assert len(val) == 10 and sorted(train + val) == records
    assert train == sorted(train) and val == sorted(val)
    assert split_records(records, 0.2, seed=1) == (train, val)
    assert split_records(records, 0.2, seed=2)[1] != val
    assert split_records(records, 1.0, seed=1) == ([], records)
    assert split_records(records, 0.0, seed=1) == (records, [])


def test_setup_builds_both_splits_once():
    dm = AtomDataModule(small())
    dm.setup("fit")
    train_ids = {rid for s in dm.train_samples for rid in s.record_ids}
    val_ids = {rid for s in dm.val_samples for rid in s.record_ids}
    assert len(val_ids) == 8 and len(train_ids) == 32 and not train_ids & val_ids
    assert all(len(s.documents) == 12 for s in dm.train_samples + dm.val_samples)
    sample_ids = [s.id for s in dm.train_samples + dm.val_samples]
    assert len(set(sample_ids)) == len(sample_ids)
    # the distractor pool is every loaded record: validation samples also draw training paragraphs
    train_titles = {p.title for r in dm.train_records for p in r.paragraphs}
    val_titles = {p.title for r in dm.val_records for p in r.paragraphs}
    assert any(p.title in train_titles - val_titles for s in dm.val_samples for p in s.documents)
    before = dm.train_samples
    dm.setup("validate")
    assert dm.train_samples is before


def _rollout_batches(dm: AtomDataModule, steps: int) -> list[list[str]]:
    loader = dm.train_dataloader()
    out = []
    for step in range(steps):  # Lightning calls set_epoch at every epoch (= rollout step)
        loader.sampler.set_epoch(step)
        out += [[s.id for s in batch] for batch in loader]
    return out


def test_dataloaders_yield_one_rollout_batch_per_epoch_in_reproducible_order():
    dm = AtomDataModule(small(), prompts_per_step=2, val_samples=3)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, list) and len(batch) == 2 and all(isinstance(s, LongContextSample) for s in batch)
    n = len(dm.train_samples)
    order = [i for b in _rollout_batches(dm, (n + 1) // 2) for i in b][:n]
    assert sorted(order) == sorted(s.id for s in dm.train_samples)  # every sample once per pass
    assert order != [s.id for s in dm.train_samples]  # shuffled
    again = AtomDataModule(small(), prompts_per_step=2)
    assert _rollout_batches(again, 3) == _rollout_batches(dm, 3)  # a fresh module (a resumed run) agrees
    assert [s.id for b in dm.val_dataloader() for s in b] == [s.id for s in dm.val_samples[:3]]


def test_epoch_shuffler_orders_depend_on_epoch_only():
    a, b = EpochShuffler(30, seed=3), EpochShuffler(30, seed=3)
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    assert first != second and sorted(second) == list(range(30))
    b.set_epoch(1)
    assert list(b) == second


def test_epoch_shuffler_gives_each_rank_its_slice_of_every_global_batch():
    single = list(EpochShuffler(10, seed=3))
    ranks = [list(EpochShuffler(10, seed=3, batch_size=2, rank=r, world=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 6  # 10 items -> 3 global batches of 4, wrapped around
    for g in range(3):
        assert ranks[0][2 * g : 2 * g + 2] + ranks[1][2 * g : 2 * g + 2] == (single + single)[4 * g : 4 * g + 4]


def test_val_fraction_one_evaluates_every_record():
    dm = AtomDataModule(small(val_fraction=1.0))
    dm.setup()
    assert dm.train_samples == []
    assert [s.context for s in dm.val_samples] == [s.context for s in dm.all_samples()]


class _Recorder(lightning.LightningModule):
    """Records the sample ids of every training batch, per epoch."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list[str]] = {}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).extend(s.id for s in batch)
        return (self.weight**2).sum() + 1.0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path, epochs: int, ckpt: str | None = None) -> _Recorder:
    model = _Recorder()
    trainer = lightning.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        enable_checkpointing=False,
    )
    trainer.fit(model, datamodule=AtomDataModule(small()), ckpt_path=ckpt)
    if ckpt is None:
        trainer.save_checkpoint(tmp_path / f"epoch{epochs}.ckpt")
    return model


def test_lightning_epochs_reshuffle_and_resume_reproduces_the_order(tmp_path):
    straight = _fit(tmp_path / "a", epochs=3)
    assert straight.seen[0] != straight.seen[1]
    _fit(tmp_path / "b", epochs=1)
    resumed = _fit(tmp_path / "b", epochs=3, ckpt=str(tmp_path / "b" / "epoch1.ckpt"))
    assert resumed.seen[1] == straight.seen[1] and resumed.seen[2] == straight.seen[2]


def test_stats_command_on_the_synthetic_task(tmp_path, capsys, monkeypatch):
    import atom.data_stats as cli

    class _Tiny:
        # a stand-in policy tokenizer: the statistics logic is under test here, not the tokenizer
        is_fast = True

        def __call__(self, text, **_):
            import re

            spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
            return {"input_ids": list(range(len(spans))), "offset_mapping": spans}

    monkeypatch.setattr(cli, "load_tokenizer", lambda _cfg: _Tiny())
    yaml = tmp_path / "c.yaml"
    yaml.write_text(
        "data:\n  num_docs: 30\n  max_questions: 2\n  chunk_tokens: 50\n  chunk_overlap: 10\n  max_chunks: 2\n"
    )
    out = tmp_path / "stats.json"
    result = stats_main([str(yaml), "data.synthetic.num_records=30", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "[train]" in printed and "[val]" in printed
    saved = json.loads(out.read_text())
    assert saved["splits"] == json.loads(json.dumps(result["splits"]))
    val = saved["splits"]["val"]
    assert val["questions"] == 6 and val["documents_per_sample"]["max"] == 30
    assert val["chunks_per_sample"]["max"] == 2 and val["tokens_per_sample"]["min"] > 300
    assert val["truncated_share"] == 1.0  # 30 documents are > 300 words: truncation at 2 chunks of 50 bites
    assert val["support_in_documents_share"] == 1.0
    assert val["support_survived_share"] < 1.0  # and drops gold paragraphs from the middle


def test_synthetic_validation_can_come_from_a_world_of_its_own():
    from atom.data.synthetic import SyntheticConfig

    cfg = DataConfig(
        dataset="synthetic", num_docs=6, max_questions=2, val_fraction=0.25,
        synthetic=SyntheticConfig(num_records=24, num_entities=12, distractors=2, seed=3, val_seed=4),
    )  # fmt: skip
    data = AtomDataModule(cfg)
    data.setup()
    assert len(data.train_records) == 24 and len(data.val_records) == 6
    assert all(r.id.startswith("synthetic-3-") for r in data.train_records)
    assert all(r.id.startswith("synthetic-4-") for r in data.val_records)
    train_titles = {p.title for r in data.train_records for p in r.paragraphs}
    assert data.val_samples and not any(t in s.context for t in train_titles for s in data.val_samples)
    with pytest.raises(ValueError, match="val_seed must differ"):
        SyntheticConfig(seed=3, val_seed=3)
    larger = dataclasses.replace(cfg, synthetic=dataclasses.replace(cfg.synthetic, val_records=40))
    data = AtomDataModule(larger)
    data.setup()
    assert len(data.train_records) == 24 and len(data.val_records) == 40  # more held-out than training questions
    with pytest.raises(ValueError, match="val_records"):
        SyntheticConfig(val_records=-1)


def test_eval_path_keeps_training_and_evaluation_data_apart(tmp_path):
    from pathlib import Path

    source = (
        Path(__file__).resolve().parents[2] / "shared" / "data" / "hotpotqa" / "hotpot_dev_distractor_v1.sample.json"
    )
    if not source.is_file():
        pytest.skip(f"real data sample {source} absent (see ../shared/data)")
    rows = json.loads(source.read_text())
    train_file, eval_file = tmp_path / "train.json", tmp_path / "dev.json"
    train_file.write_text(json.dumps(rows[:60]))
    eval_file.write_text(json.dumps(rows[60:]))
    cfg = DataConfig(
        dataset="hotpotqa", path=str(train_file), eval_path=str(eval_file), max_records=30, eval_max_records=10,
        num_docs=40, val_fraction=0.5,
    )  # fmt: skip
    dm = AtomDataModule(cfg)
    dm.setup()
    train_ids, eval_ids = {r["_id"] for r in rows[:30]}, {r["_id"] for r in rows[60:70]}
    assert {r.id for r in dm.train_records} == train_ids and {r.id for r in dm.val_records} == eval_ids
    titles = lambda part: {p[0] for r in part for p in r["context"]}  # noqa: E731
    train_titles, eval_titles = titles(rows[:60]), titles(rows[60:])
    # Each side's distractors come from the whole of its own file (beyond its first N records), never the other.
    val_docs = {d.title for s in dm.val_samples for d in s.documents}
    assert val_docs <= eval_titles and val_docs - titles(rows[60:70])
    assert {d.title for s in dm.train_samples for d in s.documents} <= train_titles
    assert sum(len(s.questions) for s in dm.val_samples) == 10
