"""The root config: a typed dataclass tree, loaded from YAML then ``key=value`` overrides, merged strictly.

Each module owns the ``XxxConfig`` of the code that reads it; this file only composes them. Loading:

    cfg = load_config("experiments/quickstart.yaml", ["data.num_docs=50", "run.seed=1"])

An experiment YAML may name a ``base:`` YAML (a path relative to itself) that it overlays. Every key of the YAML and
of the overrides must exist in the dataclass tree, and every value must have the field's type: a typo is a
``ConfigError`` naming the key, the valid keys at that level and the closest match. ``__post_init__`` checks of
each dataclass run on the merged result, so invariants hold for every entry point.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from atom.data.loaders import DataConfig
from atom.env.episode import AgentConfig
from atom.errors import AtomError
from atom.eval.harness import EvalConfig
from atom.eval.sweep import SweepConfig
from atom.memory.embedder import MemoryConfig
from atom.policy.hf import SamplingConfig
from atom.policy.models import ModelConfig
from atom.train.grpo import GRPOConfig
from atom.train.sft import SFTConfig
from atom.train.trainer import TrainerConfig

STAGES = ("sft", "grpo", "eval")


class ConfigError(AtomError, ValueError):
    """A config file or override that does not fit the dataclass tree."""


@dataclass
class RunConfig:
    name: str = "atom"  # run name; the run directory is <out_dir>/<name>
    out_dir: str = "runs"  # parent folder of run directories
    seed: int = 0  # global seed (torch, numpy, python) for everything not seeded by its own config
    stages: list[str] = field(default_factory=lambda: ["eval"])  # atom.fit runs, in order: sft, grpo, eval (repeatable)

    def __post_init__(self) -> None:
        if not self.name.strip() or self.name.strip() in (".", ".."):
            raise ValueError(f"run.name must name a run directory under run.out_dir, got {self.name!r}")
        if not self.stages:
            raise ValueError("run.stages is empty: nothing to run; list stages, e.g. run.stages=[sft,grpo,eval]")
        bad = [s for s in self.stages if s not in STAGES]
        if bad:
            raise ValueError(f"run.stages: unknown stage(s) {bad}; valid stages are {list(STAGES)}")

    @property
    def dir(self) -> Path:
        return Path(self.out_dir) / self.name


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)  # run name, directory, seed, stages
    data: DataConfig = field(default_factory=DataConfig)  # dataset, long-context protocol, chunking
    memory: MemoryConfig = field(default_factory=MemoryConfig)  # embedder and vector store
    model: ModelConfig = field(default_factory=ModelConfig)  # the policy model and its tokenizer
    agent: AgentConfig = field(default_factory=AgentConfig)  # episode rules and ablation switches
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # rollout decoding (GRPO; eval overrides T)
    eval: EvalConfig = field(default_factory=EvalConfig)  # methods and settings of the evaluation table
    sweep: SweepConfig = field(default_factory=SweepConfig)  # datasets x document counts (python -m atom.sweep)
    sft: SFTConfig = field(default_factory=SFTConfig)  # supervised cold start on demonstrations
    grpo: GRPOConfig = field(default_factory=GRPOConfig)  # reinforcement learning stage
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # Lightning devices, strategy, precision, resume

    def __post_init__(self) -> None:
        # Invariants that span sections.
        if self.trainer.strategy.startswith("fsdp") and self.model.quantization != "none":
            raise ValueError(
                f"trainer.strategy={self.trainer.strategy} with model.quantization={self.model.quantization} is not "
                "supported: use trainer.strategy=ddp (QLoRA keeps one 4-bit copy per GPU)"
            )
        if self.grpo.rollout_engine == "vllm" and self.model.quantization != "none":
            raise ValueError(
                "grpo.rollout_engine=vllm streams the merged full-precision weights into the engine: "
                f"model.quantization must be none, got {self.model.quantization}"
            )
        if "grpo" in self.run.stages and self.model.lora.enabled and self.model.lora.dropout > 0:
            raise ValueError(
                f"model.lora.dropout must be 0 when run.stages has grpo, got {self.model.lora.dropout}: rollouts "
                "sample without dropout, so the PPO ratio of the training forward would not be 1 on-policy"
            )


def _check_keys(schema: type, values: Any, where: str, source: str) -> None:
    """Raise ConfigError for any key of ``values`` that the dataclass ``schema`` does not have (recursively)."""
    if not isinstance(values, (dict, DictConfig)):
        raise ConfigError(f"{source}: '{where or '<root>'}' must be a mapping of keys, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in values.items():
        full = f"{where}.{key}" if where else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"{source}: unknown config key '{full}'{hint or ';'} Valid keys under '{where or '<root>'}': "
                f"{', '.join(fields)}"
            )
        sub_type = _dataclass_of(fields[key])
        if sub_type is not None and value is not None:
            _check_keys(sub_type, value, full, source)


def _dataclass_of(default: dataclasses.Field) -> type | None:
    """The dataclass type of a field (None if it is not a nested dataclass)."""
    if default.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        made = default.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(made):
            return type(made)
    if dataclasses.is_dataclass(default.default):
        return type(default.default)
    return None


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """Read a YAML file, resolving its optional ``base:`` chain (relative paths, no cycles)."""
    if not path.is_file():
        what = "not a file" if path.exists() else "not found"
        if seen:
            raise ConfigError(f"{seen[-1]}: its base: file {path} is {what}; fix the 'base:' line (relative to it)")
        raise ConfigError(f"config file {path} is {what}; pass an experiment YAML, e.g. experiments/quickstart.yaml")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' cycle through {[str(p) for p in seen]}")
    try:
        raw = OmegaConf.load(path)
    except Exception as exc:  # YAML syntax errors come from several libraries
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if raw is None or (isinstance(raw, DictConfig) and len(raw) == 0):
        # An empty file is almost always a mistake (a wrong path, an unsaved editor buffer): all defaults would
        # run silently. A YAML that really wants the defaults says so with at least one key.
        raise ConfigError(f"{path}: the config file is empty; give at least one key (e.g. run.name: my_run)")
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: top level must be a mapping, got a list")
    base = raw.pop("base", None)
    if base is None:
        return raw
    parent = _read_yaml((path.parent / str(base)), seen + (path.resolve(),))
    return OmegaConf.merge(parent, raw)  # type: ignore[return-value]


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load ``path`` (optional) then ``overrides`` (``a.b=value``) onto the defaults, strictly.

    Raises:
        ConfigError: unknown key, wrong type, malformed override, or a failed invariant, naming the key and source.
    """
    merged = OmegaConf.structured(Config)
    layers: list[tuple[str, DictConfig]] = []
    if path is not None:
        layers.append((str(path), _read_yaml(Path(path))))
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. data.num_docs=50)")
        # `key=` sets the empty string (as `key=""` does); for a non-string field it is a bad value below.
        dotted = item + '""' if item.endswith("=") else item
        try:
            layers.append((f"override '{item}'", OmegaConf.from_dotlist([dotted])))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"override '{item}': {exc}") from exc
    for source, layer in layers:
        _check_keys(Config, layer, "", source)
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", None) or "?"
            raise ConfigError(f"{source}: bad value for '{key}': {_first_line(exc)}") from exc
    try:
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, ValueError) else exc
        raise ConfigError(f"invalid config ({path or 'defaults'} + overrides): {_first_line(cause)}") from exc
    except ValueError as exc:
        raise ConfigError(f"invalid config ({path or 'defaults'} + overrides): {exc}") from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (what ``save_config`` writes)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Config, run_dir: str | Path) -> Path:
    """Write the resolved config to ``<run_dir>/config.yaml``; loading that file reproduces ``cfg``."""
    out = Path(run_dir) / "config.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_yaml(cfg))
    return out


def reference(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, comment) for every leaf of the config tree, read from the dataclass sources."""
    import inspect
    import re

    comments = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+):[^=]+=.*?#\s*(.*)$", line)
        if m:
            comments[m.group(1)] = m.group(2).strip()
    rows = []
    default = cls()
    for f in dataclasses.fields(cls):
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            rows += reference(type(value), f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", repr(value), comments.get(f.name, "")))
    return rows


def reference_markdown() -> str:
    """The config reference table, docs/config.md (``python -m atom.config`` writes it)."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{k}` | `{d}` | {c.replace('|', '/')} |" for k, d, c in reference()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown())
