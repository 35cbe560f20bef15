"""``make_policy``: the one place a policy is chosen, for evaluation, collection and GRPO alike.

The kinds (``POLICIES``): ``oracle`` (the gold-fact teacher, ``atom.policy.oracle``), ``served`` (a model behind an
OpenAI-compatible endpoint, ``atom.policy.openai_policy``, given its ``ServerConfig``), ``vllm`` (a colocated vLLM
engine, ``atom.policy.vllm_engine``, given the engine: the policy is the engine at ``sampling``) and ``hf`` (a
transformers model, ``atom.policy.hf``). Each kind's module is imported only when it is chosen.
"""

from __future__ import annotations

import torch

from atom.policy.hf import HFPolicy, SamplingConfig
from atom.policy.openai_client import ServerConfig

POLICIES = ("oracle", "served", "vllm", "hf")


def make_policy(
    kind: str,
    sampling: SamplingConfig | None = None,
    tokenizer=None,
    max_prompt_tokens: int = 0,
    *,
    model=None,
    server: ServerConfig | None = None,
    engine=None,
    autocast: torch.dtype | None = None,
    strategy: str = "",
    what: str = "model.server",
):
    """The policy of ``kind`` (``POLICIES``), replying at ``sampling`` to prompts cut to ``max_prompt_tokens``.

    ``model``: the transformers model of ``hf`` (generating under ``torch.autocast(autocast)`` when given).
    ``server``: the endpoint of ``served``; ``strategy`` and ``what`` are its system-prompt addition and the config
    key named in its errors. ``engine``: the ``VLLMPolicy`` of ``vllm``. The oracle takes none of them.
    """
    if kind == "oracle":
        from atom.policy.oracle import OraclePolicy

        return OraclePolicy()
    if sampling is None:
        raise ValueError(f"a {kind} policy needs its sampling config")
    if kind == "served":
        from atom.policy.openai_policy import OpenAIPolicy

        if server is None:
            raise ValueError("a served policy needs its ServerConfig")
        return OpenAIPolicy(server, sampling, tokenizer, max_prompt_tokens, strategy, what=what)
    if kind == "vllm":
        if engine is None:
            raise ValueError("a vllm policy needs its engine (atom.policy.vllm_engine.build_vllm_policy)")
        return engine.with_sampling(sampling)
    if kind == "hf":
        if model is None:
            raise ValueError("an hf policy needs a model")
        return HFPolicy(model, tokenizer, sampling, max_prompt_tokens, autocast=autocast)
    raise ValueError(f"unknown policy kind '{kind}'; valid kinds: {list(POLICIES)}")


__all__ = ["POLICIES", "make_policy"]
