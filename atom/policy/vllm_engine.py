"""A colocated vLLM rollout engine for GRPO (``grpo.rollout_engine=vllm``; optional extra ``atom[vllm]``, CUDA).

One ``vllm.LLM`` per training rank, in the trainer's process (``distributed_executor_backend="external_launcher"``,
tensor parallel 1, as TRL's colocate mode), plays the Policy role with the same Reply contract as ``HFPolicy``:
prompts go in as token ids (the chat template and centre truncation are applied here, with the trainer's
tokenizer), completions come back as token ids with EOS kept, one log-prob per token, sampled with
``SamplingParams(logprobs=0, top_k=0, seed=...)`` (one seed per prompt: a seeded rollout repeats).

Weights: after each optimizer step ``sync_weights(model)`` streams the trainer's parameters into the engine one
tensor at a time (``load_weights``, then ``reset_prefix_cache`` so no KV block computed by the old weights is
reused). ``hf_weights`` maps trainer names to the checkpoint names vLLM's loader expects: PEFT wrappers
(``base_model.model.``, ``.base_layer``), Lightning/FSDP/compile/checkpoint wrappers are stripped; LoRA is sent
merged (W + scale * B A, computed per layer, the model is not modified); FSDP2 DTensors are gathered with
``full_tensor()`` one parameter at a time (a collective: every rank calls ``sync_weights`` at the same point).
With ``sleep_level`` > 0 the engine sleeps between rollouts (level 1 offloads its weights to the CPU, level 2
drops them: they are re-sent by the next sync anyway) and wakes before the next one, freeing GPU memory for the
update.

Log-probs: vLLM returns those of the *raw* model (before temperature and top-p; ``logprobs_mode`` raw_logprobs),
so they equal the trainer's ``log_softmax(logits / T)`` only at T = 1, and even then differ by kernel numerics.
``raw_logprobs = True`` tells GRPO to take pi_old from its own forward and log the gap as ``grpo/logp_diff``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from atom.env.rollout import Observation, Reply
from atom.policy.hf import SamplingConfig, act_on_token_ids

log = logging.getLogger(__name__)

# Wrapper segments that training adds to parameter names and a checkpoint does not have.
_WRAPPERS = ("_forward_module.", "_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "module.")


@dataclass
class VLLMConfig:
    gpu_memory_utilization: float = 0.3  # share of the GPU vLLM may take (weights + KV cache); the rest trains
    max_model_len: int = 0  # engine context length in tokens; 0 = model.max_context_tokens or the model's own
    dtype: str = "auto"  # engine weights dtype (auto = the checkpoint's, bf16 for Qwen3)
    sleep_level: int = 0  # 0 = always awake | 1 = weights to CPU between rollouts | 2 = weights dropped (re-sent)
    enforce_eager: bool = False  # skip CUDA graph capture (faster start, slower decode)
    max_num_seqs: int = 256  # sequences one engine step may batch

    def __post_init__(self) -> None:
        if not 0 < self.gpu_memory_utilization < 1:
            raise ValueError(f"grpo.vllm.gpu_memory_utilization must be in (0, 1), got {self.gpu_memory_utilization}")
        if self.sleep_level not in (0, 1, 2) or self.max_model_len < 0 or self.max_num_seqs <= 0:
            raise ValueError("grpo.vllm: sleep_level in {0, 1, 2}, max_model_len >= 0, max_num_seqs > 0")


def hf_name(name: str) -> str:
    """The checkpoint name of a trainer parameter name (wrappers stripped, PEFT's base layer unwrapped)."""
    if name.startswith("base_model.model."):
        name = name[len("base_model.model.") :]
    for w in _WRAPPERS:
        name = name.replace(w, "") if w != "module." else (name[len(w) :] if name.startswith(w) else name)
    return name.replace(".base_layer.", ".")


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t  # FSDP2 shards are DTensors


@torch.no_grad()
def hf_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, full tensor) for every weight of ``model``, LoRA merged, one tensor at a time."""
    lora_layers = {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")}
    for name, param in model.named_parameters():
        if "lora_" in name:
            continue  # folded into the base weight below
        tensor = _full(param.detach())
        owner = name.rsplit(".base_layer.", 1)[0] if ".base_layer." in name else None
        if owner in lora_layers and name.endswith("base_layer.weight"):
            layer = lora_layers[owner]
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    a, b = _full(layer.lora_A[adapter].weight), _full(layer.lora_B[adapter].weight)
                    delta = (b.float() @ a.float()) * layer.scaling[adapter]
                    tensor = (tensor.float() + (delta.T if getattr(layer, "fan_in_fan_out", False) else delta)).to(
                        tensor.dtype
                    )
        yield hf_name(name), tensor


class VLLMPolicy:
    """The Policy role over a colocated ``vllm.LLM`` (or any object with its ``generate`` contract)."""

    raw_logprobs = True  # the engine's log-probs are pre-temperature: GRPO relabels pi_old (module docstring)

    def __init__(
        self,
        llm,
        tokenizer,
        sampling: SamplingConfig,
        max_prompt_tokens: int = 0,
        sleep_level: int = 0,
        make_params: Callable[..., object] | None = None,
    ):
        self.llm, self.tokenizer, self.sampling = llm, tokenizer, sampling
        self.max_prompt_tokens, self.sleep_level = max_prompt_tokens, sleep_level
        if make_params is None:
            from vllm import SamplingParams as make_params  # noqa: N813 - the engine's own class
        self.make_params = make_params
        self.eos_ids = sorted({tokenizer.eos_token_id} - {None})
        self.calls = 0
        self.synced_step = -1  # optimizer step whose weights the engine holds
        self.sync_s = 0.0  # seconds spent streaming weights (last sync)
        self.asleep = False

    def with_sampling(self, sampling: SamplingConfig) -> VLLMPolicy:
        """The same engine with other decoding settings (GRPO's per-step seed, greedy validation)."""
        self.sampling = sampling
        return self

    # -- weights -------------------------------------------------------------------------------------------------

    def _engine_model(self):
        """The engine's torch model (in this process under the external launcher)."""
        engine = self.llm.llm_engine
        for path in ("model_executor.driver_worker.worker.model_runner.model",
                     "model_executor.driver_worker.model_runner.model"):  # fmt: skip
            obj = engine
            try:
                for attr in path.split("."):
                    obj = getattr(obj, attr)
                return obj
            except AttributeError:
                continue
        raise RuntimeError("vLLM engine model not found: atom needs the in-process external_launcher executor")

    def sync_weights(self, model: torch.nn.Module, step: int | None = None) -> int:
        """Stream ``model``'s weights into the engine (skipped when ``step`` is the one already held)."""
        if step is not None and step == self.synced_step:
            return 0
        self.wake()
        t0 = time.perf_counter()
        target = self._engine_model()
        n = 0
        for name, tensor in hf_weights(model):
            target.load_weights([(name, tensor)])
            n += 1
        self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights
        self.sync_s = time.perf_counter() - t0
        self.synced_step = step if step is not None else self.synced_step + 1
        return n

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def sleep(self) -> None:
        if self.sleep_level and not self.asleep:
            self.llm.sleep(level=self.sleep_level)
            self.asleep = True
            if self.sleep_level == 2:
                self.synced_step = -1  # the weights are gone: the next rollout re-sends them

    # -- the Policy role -----------------------------------------------------------------------------------------

    def act(self, observations: Sequence[Observation]) -> list[Reply]:
        """As ``HFPolicy.act``: template and centre truncation here, ``Reply.truncated`` marks cut prompts."""
        return act_on_token_ids(self, observations)

    def generate_ids(self, prompts: list[list[int]]) -> list[Reply]:
        s = self.sampling
        self.calls += 1
        self.wake()
        params = [
            self.make_params(
                n=1,
                temperature=s.temperature,
                top_p=s.top_p if s.temperature > 0 else 1.0,
                top_k=0,
                max_tokens=s.max_new_tokens,
                logprobs=0,
                stop=list(s.stop_strings) or None,
                include_stop_str_in_output=True,  # the parser needs the closing tag, as HFPolicy keeps it
                seed=s.seed + 100_003 * self.calls + i,
            )  # fmt: skip
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [self._reply(p, out.outputs[0]) for p, out in zip(prompts, outputs)]

    def _reply(self, prompt: list[int], out) -> Reply:
        ids = list(out.token_ids)
        if out.logprobs is None or len(out.logprobs) != len(ids):
            raise RuntimeError(f"vLLM returned {len(ids)} tokens but no matching log-probs (logprobs=0 requested)")
        logprobs = [step[t].logprob for t, step in zip(ids, out.logprobs)]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return Reply(text, torch.tensor(prompt, dtype=torch.long), torch.tensor(ids, dtype=torch.long),
                     torch.tensor(logprobs, dtype=torch.float),
                     cut_off=getattr(out, "finish_reason", None) == "length")  # fmt: skip


def launcher_env(local_rank: int) -> dict[str, str]:
    """The torchrun variables vLLM's external launcher reads (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``): those of
    the live process group when training runs one (Lightning's launcher never sets ``RANK``, SLURM names ranks
    otherwise), else a one-process group on this machine."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return {"RANK": str(dist.get_rank()), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(dist.get_world_size())}
    return {"RANK": "0", "LOCAL_RANK": str(local_rank), "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29513"}  # fmt: skip


def build_vllm_policy(
    model_dir: str,
    tokenizer,
    sampling: SamplingConfig,
    cfg: VLLMConfig,
    max_prompt_tokens: int,
    seed: int = 0,
    local_rank: int = 0,
    context_tokens: int = 0,
) -> VLLMPolicy:
    """A colocated engine on this rank's GPU (``local_rank``) for the transformers-layout weights in ``model_dir``.
    Its context is ``cfg.max_model_len``, else ``context_tokens`` (``model.max_context_tokens``), else the
    model's own."""
    import os

    import vllm

    env = launcher_env(local_rank)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        os.environ.update(env)  # this process's place in the group that trains, whatever the launcher set
    else:
        for key, value in env.items():
            os.environ.setdefault(key, value)
    kwargs = dict(
        model=model_dir, tokenizer=model_dir, tensor_parallel_size=1, distributed_executor_backend="external_launcher",
        gpu_memory_utilization=cfg.gpu_memory_utilization, dtype=cfg.dtype, enable_sleep_mode=cfg.sleep_level > 0,
        enforce_eager=cfg.enforce_eager, max_num_seqs=cfg.max_num_seqs, seed=seed, enable_prefix_caching=True,
    )  # fmt: skip
    if cfg.max_model_len or context_tokens:
        kwargs["max_model_len"] = cfg.max_model_len or context_tokens
    llm = vllm.LLM(**kwargs)
    return VLLMPolicy(llm, tokenizer, sampling, max_prompt_tokens, cfg.sleep_level)
