"""A policy behind an OpenAI-compatible server: evaluation, baselines and teacher collection without local weights.

Two modes (``ServerConfig.mode``):

- ``chat``: each prompt goes out as chat messages to ``POST /chat/completions``; the reply is text only (no token
  ids), which is all evaluation and SFT demonstrations need. Works with any endpoint.
- ``tokens``: the chat template and centre truncation are applied here, with the policy's own tokenizer, exactly
  as ``HFPolicy`` does; the prompt goes out as token ids to ``POST /completions`` with ``logprobs=0``,
  ``return_token_ids`` and ``return_tokens_as_token_ids`` (vLLM's extensions), and the Reply carries the prompt ids,
  the completion ids (EOS included when the server returns it) and one log-prob per completion token. vLLM's
  log-probs are those of the raw model (before temperature), so they equal ``HFPolicy``'s only at T = 1.

All prompts of one ``act`` call (one lockstep step) are sent concurrently. Replies that stopped at
``max_new_tokens`` (``finish_reason == "length"``) are counted in ``usage.length_cut``; the evaluation table shows
it. An optional ``strategy`` text is added to the system prompt of what is *sent* (the release gave its teacher its
own strategy text); the Turn keeps the student's prompt, so SFT demonstrations train on what the student will see.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from atom.env.prompts import Messages
from atom.env.rollout import Observation, Reply
from atom.errors import AtomError
from atom.policy.hf import SamplingConfig, centre_truncate, encode_prompt
from atom.policy.openai_client import MalformedReply, ServerConfig, ServerError, ServingClient, choice_of


@dataclass
class ServedUsage:
    requests: int = 0  # completed requests
    prompt_tokens: int = 0  # as the server reports them (usage.prompt_tokens)
    completion_tokens: int = 0  # as the server reports them (usage.completion_tokens)
    length_cut: int = 0  # replies cut by the max_new_tokens limit (finish_reason "length")
    truncated_prompts: int = 0  # tokens mode: prompts centre-truncated to max_prompt_tokens before sending


class UnsupportedServer(AtomError, RuntimeError):
    """The server answers, but not with what this mode needs (e.g. no log-probs in tokens mode): not retried."""


def with_strategy(messages: Messages, strategy: str) -> Messages:
    """``messages`` with ``strategy`` appended to the system message (or a new one in front)."""
    if not strategy:
        return messages
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + strategy}, *messages[1:]]
    return [{"role": "system", "content": strategy}, *messages]


class OpenAIPolicy:
    """The Policy role (``act``) over a served model; ``close()`` ends its connection pool."""

    def __init__(
        self,
        server: ServerConfig,
        sampling: SamplingConfig,
        tokenizer=None,
        max_prompt_tokens: int = 0,
        strategy: str = "",
        what: str = "model.server",
    ):
        if server.mode == "tokens" and tokenizer is None:
            raise ValueError(f"{what}.mode=tokens needs the policy's tokenizer (the chat template is applied here)")
        self.server, self.sampling, self.tokenizer = server, sampling, tokenizer
        self.max_prompt_tokens, self.strategy = max_prompt_tokens, strategy
        self.client = ServingClient(server, what)
        self.usage = ServedUsage()
        self.calls = 0
        self._lock = threading.Lock()
        self.eos_ids = [tokenizer.eos_token_id] if tokenizer is not None else []

    def act(self, observations: Sequence[Observation]) -> list[Reply]:
        """One request per observation's ``messages``, all sent concurrently; replies in order."""
        self.calls += 1
        messages = [o.messages for o in observations]
        seeds = [self.sampling.seed + 100_003 * self.calls + i for i in range(len(messages))]
        if self.server.mode == "chat":
            return self.client.map(self._chat, list(zip(messages, seeds)))
        encoded = [self.encode(m) for m in messages]
        replies = self.client.map(self._tokens, [(ids, seed) for (ids, _), seed in zip(encoded, seeds)])
        for reply, (_, cut) in zip(replies, encoded):
            reply.truncated = cut
        return replies

    def encode(self, messages: Messages) -> tuple[list[int], bool]:
        """Tokens mode: (prompt ids exactly as HFPolicy builds them: template, then centre truncation; whether
        they were cut)."""
        ids = encode_prompt(self.tokenizer, with_strategy(messages, self.strategy), self.sampling.thinking)
        if self.max_prompt_tokens and len(ids) > self.max_prompt_tokens:
            with self._lock:
                self.usage.truncated_prompts += 1
            return centre_truncate(ids, self.max_prompt_tokens), True
        return ids, False

    def _params(self, seed: int) -> dict:
        s = self.sampling
        params = {"model": self.client.model, "max_tokens": s.max_new_tokens, "temperature": s.temperature,
                  "seed": seed}  # fmt: skip
        if s.temperature > 0:
            params["top_p"] = s.top_p
        return params

    def _count(self, choice: dict) -> None:
        usage = choice["usage"]
        with self._lock:
            self.usage.requests += 1
            self.usage.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.usage.completion_tokens += int(usage.get("completion_tokens") or 0)
            self.usage.length_cut += choice.get("finish_reason") == "length"

    def _chat(self, item: tuple[Messages, int]) -> Reply:
        messages, seed = item
        kind = "POST /chat/completions"
        extra = (
            {"chat_template_kwargs": {"enable_thinking": self.sampling.thinking}}
            if self.server.template_kwargs
            else None
        )

        def request() -> dict:
            reply = self.client.client.chat.completions.create(
                messages=with_strategy(messages, self.strategy), extra_body=extra, **self._params(seed)
            )
            choice = choice_of(reply, kind)
            message = choice.get("message")
            if not isinstance(message, dict):
                raise MalformedReply(f"{kind}: the choice has no message")
            return choice

        choice = self.client.call(kind, request)
        self._count(choice)
        return Reply(choice["message"].get("content") or "", cut_off=choice.get("finish_reason") == "length")

    def _tokens(self, item: tuple[list[int], int]) -> Reply:
        prompt, seed = item
        kind = "POST /completions"
        # vLLM extensions: ids back instead of token strings; no special-token stripping decides the text.
        extra = {"return_token_ids": True, "return_tokens_as_token_ids": True, "top_k": 0}

        def request() -> dict:
            reply = self.client.client.completions.create(prompt=prompt, logprobs=0, extra_body=extra,
                                                          **self._params(seed))  # fmt: skip
            return parse_token_choice(choice_of(reply, kind), kind, self.client.cfg.base_url)

        choice = self.client.call(kind, request)
        self._count(choice)
        ids = torch.tensor(choice["ids"], dtype=torch.long)
        logprobs = torch.tensor(choice["logprobs"], dtype=torch.float)
        cut = choice.get("finish_reason") == "length"
        return Reply(choice.get("text") or "", torch.tensor(prompt, dtype=torch.long), ids, logprobs, cut_off=cut)

    def close(self) -> None:
        self.client.close()


def parse_token_choice(choice: dict, kind: str, url: str) -> dict:
    """Completion ids and log-probs of a /completions choice (vLLM shape); adds ``ids`` and ``logprobs``.

    Ids come from ``token_ids`` (``return_token_ids``) or else from ``logprobs.tokens`` written as
    ``token_id:N`` (``return_tokens_as_token_ids``); log-probs from ``logprobs.token_logprobs``. A server that
    returns neither (``transformers serve``, most hosted APIs) cannot serve tokens mode: UnsupportedServer.
    """
    lp = choice.get("logprobs")
    if not isinstance(lp, dict) or lp.get("token_logprobs") is None:
        raise UnsupportedServer(
            f"{url}: {kind} returned no per-token log-probs; tokens mode needs a server that does (vLLM, SGLang). "
            "Use server.mode=chat for this server."
        )
    ids = choice.get("token_ids")
    if ids is None:
        tokens = lp.get("tokens") or []
        if not all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
            raise UnsupportedServer(f"{url}: {kind} returned token strings, not ids ('token_id:N' or token_ids)")
        ids = [int(t.split(":", 1)[1]) for t in tokens]
    logprobs = lp["token_logprobs"]
    if len(ids) != len(logprobs) or any(not isinstance(x, (int, float)) for x in logprobs):
        raise MalformedReply(f"{kind}: {len(ids)} completion ids but {len(logprobs)} log-probs")
    if any(not isinstance(i, int) or i < 0 for i in ids):
        raise MalformedReply(f"{kind}: completion ids are not non-negative integers")
    return {**choice, "ids": [int(i) for i in ids], "logprobs": [float(x) for x in logprobs]}


__all__ = ["OpenAIPolicy", "ServedUsage", "ServerConfig", "ServerError", "UnsupportedServer", "with_strategy"]
