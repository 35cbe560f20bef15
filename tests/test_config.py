"""Strict config loading: typos and wrong types are errors naming the key; docs/config.md's reference stays true."""

from __future__ import annotations

from pathlib import Path

import pytest

from atom.config import ConfigError, load_config, reference_markdown, save_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_and_overrides_merge_with_types():
    cfg = load_config(None, ["data.num_docs=50", "grpo.lr=3e-6", "eval.methods=[rag,oracle]", "run.stages=[sft]"])
    assert cfg.data.num_docs == 50 and cfg.grpo.lr == 3e-6
    assert cfg.eval.methods == ["rag", "oracle"] and cfg.run.stages == ["sft"]


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("data.num_doc=5", "'data.num_doc'; did you mean 'num_docs'?"),
        ("dta.num_docs=5", "Valid keys under '<root>'"),
        ("grpo.group_size=many", "grpo.group_size"),
        ("data.num_docs", "key=value"),
        ("eval.methods=[nope]", "valid methods"),
        ("grpo.std_scale=batchy", "grpo.std_scale must be one of"),
        ("run.stages=[train]", "unknown stage"),
        ("agent.top_k=0", "agent.top_k must be > 0"),
        ("trainer.precision=bf16", "trainer.precision must be one of ['auto', '32-true', 'bf16-mixed'"),
    ],
)
def test_bad_overrides_name_the_key_and_the_valid_choices(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)


def test_unknown_key_in_a_yaml_lists_valid_keys(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("data:\n  num_docs: 10\n  chunk_size: 512\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and "data.chunk_size" in message and "chunk_tokens" in message


def test_base_chain_overlays_and_cycles_are_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("data: {num_docs: 10, seed: 3}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ndata: {num_docs: 20}\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert (cfg.data.num_docs, cfg.data.seed) == (20, 3)
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "c.yaml")


def test_saved_config_reloads_to_the_same_config(tmp_path):
    cfg = load_config(ROOT / "experiments" / "quickstart.yaml", ["grpo.max_steps=7"])
    path = save_config(cfg, tmp_path)
    assert load_config(path) == cfg


def test_docs_config_reference_is_current():
    reference = (ROOT / "docs" / "config.md").read_text()
    assert reference_markdown() in reference, "regenerate the table in docs/config.md with: python -m atom.config"


def test_lora_dropout_with_grpo_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"model\.lora\.dropout must be 0 when run\.stages has grpo"):
        load_config(None, ["run.stages=[grpo]", "model.lora.enabled=true", "model.lora.dropout=0.1"])
    assert load_config(None, ["run.stages=[sft]", "model.lora.enabled=true", "model.lora.dropout=0.1"])


def test_auto_precision_picks_bf16_only_where_it_is_native(monkeypatch):
    from atom.train import trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "cpu_has_native_bf16", lambda: False)
    assert trainer_mod.TrainerConfig(accelerator="cpu", precision="auto").precision == "32-true"
    monkeypatch.setattr(trainer_mod, "cpu_has_native_bf16", lambda: True)
    assert trainer_mod.TrainerConfig(accelerator="cpu", precision="auto").precision == "bf16-mixed"
    monkeypatch.setattr(trainer_mod.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(trainer_mod.torch.cuda, "is_bf16_supported", lambda: False)  # e.g. a V100
    assert trainer_mod.TrainerConfig(accelerator="gpu", precision="auto").precision == "32-true"
    monkeypatch.setattr(trainer_mod.torch.cuda, "is_bf16_supported", lambda: True)
    assert trainer_mod.TrainerConfig(accelerator="auto", precision="auto").precision == "bf16-mixed"


def test_bf16_on_a_cpu_without_native_bf16_warns_to_use_float32(tmp_path, monkeypatch, caplog):
    from atom.train import trainer as trainer_mod

    cfg = trainer_mod.TrainerConfig(accelerator="cpu", precision="bf16-mixed")
    monkeypatch.setattr(trainer_mod, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="atom.train.trainer"):
        trainer_mod.build_trainer(cfg, tmp_path, "sft", every_n_epochs=1)
    assert any("trainer.precision=32-true" in r.getMessage() for r in caplog.records)
    caplog.clear()
    monkeypatch.setattr(trainer_mod, "cpu_has_native_bf16", lambda: True)
    with caplog.at_level("WARNING", logger="atom.train.trainer"):
        trainer_mod.build_trainer(cfg, tmp_path, "sft", every_n_epochs=1)
    assert not any("emulated" in r.getMessage() for r in caplog.records)


def test_native_bf16_is_read_from_the_cpu_flags_not_from_avx512_alone(tmp_path):
    from atom.train.trainer import cpu_has_native_bf16

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl\n")
    assert not cpu_has_native_bf16(cpuinfo)  # Skylake/Cascade Lake: AVX512 but bfloat16 emulated
    for flag in ("avx512_bf16", "amx_bf16"):
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu avx512f {flag}\n")
        assert cpu_has_native_bf16(cpuinfo)
    assert isinstance(cpu_has_native_bf16(tmp_path / "absent"), bool)  # not Linux: oneDNN's own check
