"""A decode loop for ``HFPolicy`` that does on CPU what transformers' ``generate`` does, with less work per token.

``generate`` (greedy or multinomial sampling, a logits recorder, stop strings) spends a lockstep rollout's time in
three places this loop cuts (``benchmarks/bench_rollout.py`` measures both side by side):

- **the shared prompt prefix runs once.** Every turn of every episode starts with the same system prompt (~420 of
  ~650 tokens in the benchmark), and ``generate`` prefills it once per row. Here the batch's common prefix runs
  once, its keys and values are copied into every row, and each row's own tokens follow it, left-padded (masked
  pads between the prefix and a shorter row's tokens; positions count on from the prefix). The same trick as the
  GRPO update's ``grpo.share_prefix``; ``sampling.share_prefix=false`` prefills every row whole, as ``generate``.
- **a preallocated KV cache.** transformers' ``DynamicCache`` grows by ``torch.cat``, copying every layer's whole
  cache at every token (a third to a half of a CPU decode step, ``bench_decode.py``). ``_PreallocLayer`` writes
  each new key/value into a buffer sized for prompt + ``max_new_tokens`` and hands attention a view of the filled
  part: the same values and shapes as the dynamic cache (so the same attention masks and results), no copy.
- **finished rows leave the batch.** ``generate`` keeps decoding a row that ended (EOS or a stop string), feeding
  it pad tokens until the last row ends. Here rows that ended are dropped from the batch (their cache rows too),
  so a step costs what its live rows cost.

What stays as in ``generate``: the chat-template prompts, left padding, position ids (``cumsum(mask) - 1``), the
attention mask (dropped when all ones, as ``generate`` drops it), ``logits_to_keep=1``, float32 logits, the
temperature and top-p warpers (transformers' own classes, top-k off), and the sampler: ``torch.multinomial(probs,
1)`` is ``argmax(probs / Exp(1) noise)`` with one (rows, vocab) noise draw per step, so drawing the noise for the
*whole* original batch and keeping the live rows' part consumes the generator exactly as ``generate`` does, and a
row samples the same token from the same distribution whether or not other rows already left. The stop-string
test is ``generate``'s (``_StopAtStrings``: the row's last new tokens decoded), run for live rows only.

Equality with ``generate``: without prefix sharing and with no row leaving early the computation is the same
sequence of ops on the same shapes, and the tokens and log-probs are bitwise equal (tests/test_fast_decode.py).
A row leaving changes the batch size of the other rows' matmuls, and a shared prefix changes the shapes of the
prefix's attention: the logits then differ by float rounding (float32: ~1e-6), so greedy tokens are the same
except at an exact near-tie of the top two logits (none in the benchmark's SmolLM2 rollouts, float32). Under
bf16 autocast rounding differences are ~1e-2, and any change of batch composition (this loop's, or simply a
different ``batch_size``) flips some near-tied greedy tokens, as it does for ``generate`` itself.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, TemperatureLogitsWarper, TopPLogitsWarper
from transformers.cache_utils import DynamicLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

# the KV-cache argument of a model's forward: ``cache`` from transformers 5, ``past_key_values`` before
_CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class _PreallocLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys/values live in a buffer of ``capacity`` positions, filled in place.

    ``keys``/``values`` are views of the filled part, so everything that reads a dynamic layer (mask sizes,
    attention) sees the same shapes and values; ``update`` copies only the new positions."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0
        self.kbuf: torch.Tensor | None = None
        self.vbuf: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        self.device = key_states.device
        self.kbuf = key_states.new_empty((b, h, self.capacity, d))
        self.vbuf = value_states.new_empty((b, value_states.shape[1], self.capacity, value_states.shape[3]))
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if self.length + n > self.capacity:
            raise RuntimeError(f"preallocated KV cache full ({self.capacity} positions)")
        self.kbuf[:, :, self.length : self.length + n].copy_(key_states)
        self.vbuf[:, :, self.length : self.length + n].copy_(value_states)
        self.length += n
        self._views()
        return self.keys, self.values

    def _views(self) -> None:
        self.keys, self.values = self.kbuf[:, :, : self.length], self.vbuf[:, :, : self.length]

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices`` (a new, smaller buffer: one copy of the filled part)."""
        if self.is_initialized:
            for name in ("kbuf", "vbuf"):
                old = getattr(self, name)
                new = old.new_empty((len(indices), *old.shape[1:]))
                new[:, :, : self.length].copy_(old[indices, :, : self.length])
                setattr(self, name, new)
            self._views()

    def batch_repeat_interleave(self, repeats: int) -> None:
        """One row (a shared prefix) into ``repeats`` rows."""
        if self.is_initialized:
            for name in ("kbuf", "vbuf"):
                old = getattr(self, name)
                new = old.new_empty((old.shape[0] * repeats, *old.shape[1:]))
                new[:, :, : self.length].copy_(old[:, :, : self.length].repeat_interleave(repeats, dim=0))
                setattr(self, name, new)
            self._views()

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("the preallocated decode cache is never cropped")

    def reset(self) -> None:
        self.kbuf = self.vbuf = self.keys = self.values = None
        self.length, self.is_initialized = 0, False


def preallocated_cache(config, capacity: int) -> DynamicCache | None:
    """A ``DynamicCache`` for ``config`` whose layers are ``_PreallocLayer(capacity)``, or None when the model
    needs other layer kinds (sliding windows, linear attention): then ``generate`` is used."""
    cache = DynamicCache(config=config)
    if cache.layers:
        if any(type(layer) is not DynamicLayer for layer in cache.layers):
            return None
        cache.layers = [_PreallocLayer(capacity) for _ in cache.layers]
    else:  # layers made on first use
        cache.layer_class_to_replicate = lambda: _PreallocLayer(capacity)
    return cache


def supports_fast_decode(model) -> bool:
    """Whether ``decode`` can run ``model`` (a plain full-attention decoder; else ``generate`` runs)."""
    try:
        config = model.config
        return not config.is_encoder_decoder and preallocated_cache(config, 1) is not None
    except Exception:  # an exotic config: leave it to generate
        return False


def common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix all ``prompts`` share."""
    first, n = prompts[0], min(len(p) for p in prompts)
    for p in prompts[1:]:
        k = 0
        limit = min(n, len(p))
        while k < limit and p[k] == first[k]:
            k += 1
        n = k
        if n == 0:
            break
    return n


@dataclass
class DecodeStats:
    """Work counters of one ``decode`` call (what the benchmark reports)."""

    rows: int = 0
    prefix_tokens: int = 0  # tokens of the shared prefix, run once
    prefill_tokens: int = 0  # positions the prefill forwards computed (padding included)
    decode_steps: int = 0  # forwards after the prefill
    decode_row_steps: int = 0  # sum over those forwards of the rows they carried
    compactions: int = 0  # times finished rows were dropped
    prefill_s: float = 0.0  # seconds in the prefill forwards (shared prefix included)
    decode_s: float = 0.0  # seconds in the decode loop after the prefill (forwards, sampling, bookkeeping)
    stop_s: float = 0.0  # of which in the stop-string test

    def add(self, other: DecodeStats) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class Decoded:
    """Per row, in input order: generated tokens up to and including the one that ended the row, their
    sampling log-probs, and how the row ended."""

    tokens: list[torch.Tensor]  # (C,) int64
    logprobs: list[torch.Tensor]  # (C,) float32
    eos: list[bool]  # ended on an end-of-sequence token
    stopped: list[bool]  # ended on a stop string (its last token included)
    stats: DecodeStats = field(default_factory=DecodeStats)


def stop_string_check(tokenizer, stops: Sequence[str]) -> Callable[[list[int]], bool]:
    """``_StopAtStrings``' test for one row: do the last new tokens, decoded, contain a stop string?"""
    stops = list(stops)
    window = max(len(x) for x in stops) + 2  # a token holds at least one character

    def check(new: list[int]) -> bool:
        tail = tokenizer.decode(new[-window:], skip_special_tokens=True)
        return any(x in tail for x in stops)

    return check


@torch.no_grad()
def decode(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    pad_id: int,
    eos_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    stop: Callable[[list[int]], bool] | None = None,
    share_prefix: bool = True,
    min_prefix: int = 16,
    drop_finished: bool = True,
) -> Decoded:
    """Greedy (``temperature`` 0) or sampled decoding of ``prompts`` as one batch, as ``HFPolicy``'s ``generate``
    call does it (see the module docstring). Seed the global generator before calling, as for ``generate``.

    ``stop(new_ids)`` says whether a row's generated ids so far end it (stop strings). ``share_prefix``: run the
    prompts' common prefix once when it has at least ``min_prefix`` tokens (and each prompt has a token after
    it). ``drop_finished``: drop rows that ended from the batch (else they decode pads, as in ``generate``).
    """
    device = next(model.parameters()).device
    rows = len(prompts)
    stats = DecodeStats(rows=rows)
    t0 = time.perf_counter()
    sample = temperature > 0
    warpers = []
    if sample and temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if sample and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    record_t = temperature if sample else 1.0
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=device)

    prefix = common_prefix(prompts) if share_prefix and rows > 1 else 0
    prefix = min(prefix, min(len(p) for p in prompts) - 1)
    if prefix < max(min_prefix, 1):
        prefix = 0
    stats.prefix_tokens = prefix
    tails = [list(p[prefix:]) for p in prompts]
    width = max(len(t) for t in tails)
    cache = preallocated_cache(model.config, prefix + width + max_new_tokens)
    if cache is None:
        raise ValueError("decode needs a model whose layers all use full attention (see supports_fast_decode)")

    if prefix:  # the shared prefix once, its keys/values copied into every row
        ids = torch.tensor(prompts[0][:prefix], dtype=torch.long, device=device)[None]
        model(input_ids=ids, position_ids=torch.arange(prefix, device=device)[None], use_cache=True,
              logits_to_keep=1, **{_CACHE: cache})  # fmt: skip
        stats.prefill_tokens += prefix
        cache.batch_repeat_interleave(rows)

    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, prefix + width), dtype=torch.long)
    mask[:, :prefix] = 1
    for row, t in enumerate(tails):  # left padding (between the prefix and the row's own tokens)
        ids[row, width - len(t) :] = torch.tensor(t, dtype=torch.long)
        mask[row, prefix + width - len(t) :] = 1
    positions = mask[:, prefix:].cumsum(-1) - 1  # generate's position ids, counted on from the prefix
    positions = positions.masked_fill(mask[:, prefix:] == 0, 0) + prefix * mask[:, prefix:]
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    # generate drops an all-ones mask (no padding): the same attention then runs without one
    attention = None if bool(mask.all()) else mask
    out = model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True, logits_to_keep=1,
                **{_CACHE: cache})  # fmt: skip
    stats.prefill_tokens += rows * width
    logits = out.logits[:, -1].to(copy=True, dtype=torch.float32)
    del out
    t1 = time.perf_counter()
    stats.prefill_s = t1 - t0
    next_pos = torch.tensor([len(p) for p in prompts], dtype=torch.long, device=device)

    tokens: list[list[int]] = [[] for _ in range(rows)]
    logps: list[list[torch.Tensor]] = [[] for _ in range(rows)]
    ended_eos, ended_stop = [False] * rows, [False] * rows
    live = list(range(rows))  # original index of each row in the batch
    done = [False] * rows  # per original row
    for step in range(max_new_tokens):
        scores = logits
        logprob = torch.log_softmax(scores / record_t, dim=-1)
        if sample:
            for w in warpers:
                scores = w(None, scores)
            probs = torch.softmax(scores, dim=-1)
            noise = torch.empty((rows, probs.shape[1]), dtype=probs.dtype, device=device).exponential_(1)
            idx = torch.tensor(live, device=device)
            nxt = (probs / (noise if len(live) == rows else noise[idx])).argmax(-1)
        else:
            nxt = scores.argmax(-1)
        chosen = logprob.gather(1, nxt[:, None]).squeeze(1).cpu()
        is_eos = torch.isin(nxt, eos).tolist()
        nxt_list = nxt.tolist()
        for b, row in enumerate(live):
            if done[row]:
                continue
            tokens[row].append(nxt_list[b])
            logps[row].append(chosen[b])
            if is_eos[b]:
                done[row] = ended_eos[row] = True
            elif stop is not None:
                ts = time.perf_counter()
                if stop(tokens[row]):
                    done[row] = ended_stop[row] = True
                stats.stop_s += time.perf_counter() - ts
        finished = [done[row] for row in live]
        if all(finished) or step == max_new_tokens - 1:
            break
        feed = nxt.masked_fill(torch.tensor(finished, device=device), pad_id)
        if drop_finished and any(finished):  # finished rows leave the batch (cache rows included)
            keep = torch.tensor([b for b, f in enumerate(finished) if not f], device=device)
            cache.batch_select_indices(keep)
            live = [live[b] for b in keep.tolist()]
            feed, next_pos, mask = feed[keep], next_pos[keep], mask[keep]
            stats.compactions += 1
        mask = torch.cat([mask, mask.new_ones((len(mask), 1))], dim=1)
        attention = None if attention is None else mask
        out = model(input_ids=feed[:, None], attention_mask=attention, position_ids=next_pos[:, None],
                    use_cache=True, logits_to_keep=1, **{_CACHE: cache})  # fmt: skip
        stats.decode_steps += 1
        stats.decode_row_steps += len(live)
        next_pos = next_pos + 1
        logits = out.logits[:, -1].to(copy=True, dtype=torch.float32)
        del out

    stats.decode_s = time.perf_counter() - t1
    return Decoded(
        tokens=[torch.tensor(t, dtype=torch.long) for t in tokens],
        logprobs=[torch.stack(x).float() if x else torch.zeros(0) for x in logps],
        eos=ended_eos,
        stopped=ended_stop,
        stats=stats,
    )
