"""A transformers policy: chat template -> token ids -> batched ``generate`` -> ids, log-probs, text.

Sampling log-probabilities are recorded *while generating* by a logits processor that sits before the temperature
and top-p warpers: for each sampled token it keeps ``log_softmax(logits / T)[token]``, the behaviour policy's
log-probability that GRPO's ratio divides by (the un-truncated tempered distribution, which is also what the
trainer recomputes). Greedy decoding (T = 0) records log-probs at T = 1. Only one (batch, vocab) buffer is held.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from atom.env.prompts import Messages
from atom.env.rollout import Observation, Reply
from atom.policy.fast_decode import DecodeStats, decode, stop_string_check, supports_fast_decode

DECODERS = ("fast", "generate")


@dataclass
class SamplingConfig:
    temperature: float = 1.0  # 0 = greedy; the paper samples at 1.0 for RL and decodes greedily for validation
    top_p: float = 1.0  # nucleus sampling mass (the release used 0.99)
    max_new_tokens: int = 512  # completion length cap per turn
    batch_size: int = 16  # sequences per generate call (the step's prompts are split into such batches)
    seed: int = 0  # base seed; call n of a policy uses seed + n, so a seeded run repeats exactly
    thinking: bool = False  # pass enable_thinking to chat templates that know it (Qwen3)
    stop_strings: list[str] = field(default_factory=lambda: ["</answer>", "</final_answer>"])  # end replies (kept)
    decode: str = "fast"  # fast: own loop, preallocated KV cache, ended rows leave the batch | generate: transformers'
    share_prefix: bool = True  # decode=fast: the prompts' common prefix (system prompt) runs once for the batch

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens <= 0 or self.batch_size <= 0:
            raise ValueError("sampling.max_new_tokens and sampling.batch_size must be > 0")
        if self.decode not in DECODERS:
            raise ValueError(f"sampling.decode must be one of {list(DECODERS)}, got '{self.decode}'")
        if any(not isinstance(x, str) or not x for x in self.stop_strings):
            raise ValueError(f"sampling.stop_strings must be non-empty strings, got {self.stop_strings!r}")


def encode_prompt(tokenizer, messages: Messages, thinking: bool = False) -> list[int]:
    """Chat-template token ids of ``messages`` with the assistant generation prompt appended."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, enable_thinking=thinking)
    if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def centre_truncate(ids: list[int], limit: int) -> list[int]:
    """Keep the head (system prompt, questions) and the tail (latest instructions) of an over-long prompt."""
    if len(ids) <= limit:
        return ids
    head = limit // 2
    return ids[:head] + ids[len(ids) - (limit - head) :]


class _LogprobRecorder(LogitsProcessor):
    """Records the log-prob of each sampled token under softmax(logits / T) (see module docstring)."""

    def __init__(self, temperature: float):
        self.temperature = temperature if temperature > 0 else 1.0
        self.prev: torch.Tensor | None = None
        self.out: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prev is not None:  # input_ids now ends with the token sampled from self.prev
            self.out.append(self.prev.gather(1, input_ids[:, -1:]).squeeze(1))
        self.prev = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, sequences: torch.Tensor, new_tokens: int) -> torch.Tensor:
        if self.prev is not None and len(self.out) < new_tokens:
            self.out.append(self.prev.gather(1, sequences[:, -1:]).squeeze(1))
        return torch.stack(self.out, dim=1) if self.out else sequences.new_zeros((len(sequences), 0), dtype=torch.float)


class _StopAtStrings(StoppingCriteria):
    """Stops each row at the first generated token whose text completes one of ``stops``; records that length.

    Only the row's newly generated tokens are decoded (the last few, enough to hold the longest stop string), so a
    stop string in the prompt never ends a reply. transformers pads a stopped row from then on; the caller cuts
    the completion at ``lengths[row]``.
    """

    def __init__(self, tokenizer, stops: Sequence[str], prompt_width: int, batch: int):
        self.tokenizer, self.stops, self.width = tokenizer, list(stops), prompt_width
        self.window = max(len(x) for x in self.stops) + 2  # a token holds at least one character
        self.lengths: list[int | None] = [None] * batch

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        new = input_ids[:, self.width :]
        for row, length in enumerate(self.lengths):
            if length is None:
                tail = self.tokenizer.decode(new[row, -self.window :], skip_special_tokens=True)
                if any(x in tail for x in self.stops):
                    self.lengths[row] = new.shape[1]
        return torch.tensor([x is not None for x in self.lengths], device=input_ids.device)


class HFPolicy:
    """Any causal LM with a chat template. ``act`` returns one Reply per prompt, in order."""

    def __init__(
        self,
        model,
        tokenizer,
        sampling: SamplingConfig,
        max_prompt_tokens: int = 0,
        autocast: torch.dtype | None = None,
    ):
        self.model, self.tokenizer, self.sampling = model, tokenizer, sampling
        self.autocast = autocast  # generate under torch.autocast(dtype) (trainer.precision=bf16-mixed), else as is
        self.max_prompt_tokens = max_prompt_tokens  # 0 = no limit; longer prompts are centre-truncated
        self.calls = 0
        self.last_stats: DecodeStats | None = None  # work counters of the last fast batch
        self.total_stats = DecodeStats()  # summed over this policy's fast batches (benchmarks)
        eos = {tokenizer.eos_token_id}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        self.eos_ids = sorted(i for i in eos if i is not None)

    def encode(self, messages: Messages) -> list[int]:
        """Prompt token ids with the generation prompt appended, centre-truncated to ``max_prompt_tokens``."""
        ids = encode_prompt(self.tokenizer, messages, self.sampling.thinking)
        return centre_truncate(ids, self.max_prompt_tokens) if self.max_prompt_tokens else ids

    def act(self, observations: Sequence[Observation]) -> list[Reply]:
        """Generate from each observation's ``messages`` (all a model reads). ``Reply.truncated`` marks prompts
        centre-cut to ``max_prompt_tokens``."""
        return act_on_token_ids(self, observations)

    @torch.no_grad()
    def generate_ids(self, prompts: list[list[int]]) -> list[Reply]:
        """Generate from token-id prompts in batches (sorted by length to limit padding), results in input order."""
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        replies: list[Reply | None] = [None] * len(prompts)
        bs = self.sampling.batch_size
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            for i, reply in zip(idx, self._generate_batch([prompts[i] for i in idx])):
                replies[i] = reply
        return replies  # type: ignore[return-value]

    def _generate_batch(self, prompts: list[list[int]]) -> list[Reply]:
        s = self.sampling
        device = next(self.model.parameters()).device
        self.calls += 1
        was_training = self.model.training
        self.model.eval()
        # No context when unset: autocast(enabled=False) would switch off an enclosing one (Lightning's bf16-mixed).
        cast = torch.autocast(device.type, dtype=self.autocast) if self.autocast is not None else nullcontext()
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), cast:
                torch.manual_seed(s.seed + self.calls)
                if self.fast:
                    return self._decode_fast(prompts)
                return self._generate(prompts, device)
        finally:
            self.model.train(was_training)

    @property
    def fast(self) -> bool:
        """Whether ``_decode_fast`` runs (``sampling.decode=fast`` and a model/generation config it reproduces)."""
        return (
            self.sampling.decode == "fast"
            and supports_fast_decode(self.model)
            and _neutral_config(getattr(self.model, "generation_config", None), self.sampling.temperature > 0)
        )

    def _decode_fast(self, prompts: list[list[int]]) -> list[Reply]:
        s = self.sampling
        stop = stop_string_check(self.tokenizer, s.stop_strings) if s.stop_strings else None
        out = decode(
            self.model, prompts, pad_id=self.tokenizer.pad_token_id, eos_ids=self.eos_ids,
            max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, stop=stop,
            share_prefix=s.share_prefix,
        )  # fmt: skip
        self.last_stats = out.stats
        self.total_stats.add(out.stats)
        replies = []
        for row, p in enumerate(prompts):
            ids = out.tokens[row].cpu()
            cut = not out.stopped[row] and not out.eos[row] and len(ids) >= s.max_new_tokens
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            replies.append(Reply(text, torch.tensor(p), ids, out.logprobs[row].cpu(), cut_off=cut))
        return replies

    def _generate(self, prompts: list[list[int]], device: torch.device) -> list[Reply]:
        """transformers' ``generate`` (``sampling.decode=generate``): the reference ``_decode_fast`` reproduces."""
        s = self.sampling
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):  # left padding
            input_ids[row, width - len(p) :] = torch.tensor(p)
            attention[row, width - len(p) :] = 1
        config = GenerationConfig(
            do_sample=s.temperature > 0,
            temperature=s.temperature if s.temperature > 0 else None,
            top_p=s.top_p if s.temperature > 0 else None,
            # transformers' default top-k of 50 would silently change the sampling distribution; greedy has none
            top_k=0 if s.temperature > 0 else None,
            max_new_tokens=s.max_new_tokens,
            pad_token_id=pad,
            eos_token_id=self.eos_ids,
            repetition_penalty=1.0,
        )
        recorder = _LogprobRecorder(s.temperature)
        stopper = _StopAtStrings(self.tokenizer, s.stop_strings, width, len(prompts)) if s.stop_strings else None
        out = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            generation_config=config,
            logits_processor=LogitsProcessorList([recorder]),
            stopping_criteria=StoppingCriteriaList([stopper] if stopper else []),
        )
        new = out[:, width:].cpu()
        logprobs = recorder.finish(out, new.shape[1]).cpu()
        replies = []
        eos = torch.tensor(self.eos_ids)
        for row, p in enumerate(prompts):
            ends = torch.isin(new[row], eos).nonzero()
            length = int(ends[0]) + 1 if len(ends) else new.shape[1]
            stopped = stopper is not None and stopper.lengths[row] is not None and stopper.lengths[row] <= length
            length = stopper.lengths[row] if stopped else length
            cut = not stopped and not len(ends) and length >= s.max_new_tokens
            ids = new[row, :length]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            reply = Reply(text, torch.tensor(p), ids.clone(), logprobs[row, :length].clone(), cut_off=cut)
            replies.append(reply)
        return replies


# generation-config fields that add logits processors or change the search; ``_decode_fast`` reproduces none of
# them, so a model whose own generation_config sets one (generate merges it in) decodes with ``generate``
_NEUTRAL = {
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "bad_words_ids": (None,),
    "sequence_bias": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "exponential_decay_length_penalty": (None,),
    "renormalize_logits": (None, False),
    "guidance_scale": (None, 1.0),
    "watermarking_config": (None,),
    "num_beams": (None, 1),
    "penalty_alpha": (None,),
    "prompt_lookup_num_tokens": (None,),
    "dola_layers": (None,),
    "num_return_sequences": (None, 1),
    "remove_invalid_values": (None, False),
    "prefill_chunk_size": (None,),
    "cache_implementation": (None, "dynamic"),
}
_NEUTRAL_SAMPLING = {
    "min_p": (None,), "typical_p": (None, 1.0), "epsilon_cutoff": (None, 0.0), "eta_cutoff": (None, 0.0),
    "top_h": (None,),
}  # fmt: skip


def _neutral_config(generation_config, sampling: bool) -> bool:
    """Whether ``generate`` under this model's own generation_config runs only what ``_decode_fast`` reproduces."""
    if generation_config is None:
        return True
    fields = {**_NEUTRAL, **(_NEUTRAL_SAMPLING if sampling else {})}
    return all(getattr(generation_config, k, None) in ok for k, ok in fields.items())


def act_on_token_ids(policy, observations: Sequence[Observation]) -> list[Reply]:
    """The Policy role of a token-id engine (``HFPolicy``, the vLLM engine): chat template, centre truncation to
    ``policy.max_prompt_tokens``, ``policy.generate_ids``; ``Reply.truncated`` marks the cut prompts."""
    full = [encode_prompt(policy.tokenizer, o.messages, policy.sampling.thinking) for o in observations]
    limit = policy.max_prompt_tokens
    replies = policy.generate_ids([centre_truncate(ids, limit) if limit else ids for ids in full])
    for reply, ids in zip(replies, full):
        reply.truncated = bool(limit) and len(ids) > limit
    return replies
