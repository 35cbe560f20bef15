"""``sampling.decode=fast`` (atom/policy/fast_decode.py) against transformers' ``generate`` (``decode=generate``).

The pseudo end-of-sequence tokens make the random tiny model's rows end at different steps, so finished rows
really leave the batch; the prompts share a long system prompt, so the shared prefix really runs once.
"""

from __future__ import annotations

import pytest
import torch

from atom.policy.fast_decode import common_prefix, decode, preallocated_cache, supports_fast_decode
from atom.policy.hf import HFPolicy, SamplingConfig, encode_prompt
from atom.policy.models import ModelConfig, load_model, load_tokenizer

SYSTEM = "You read long documents chunk by chunk and keep a memory of what matters. " * 4


@pytest.fixture(scope="module")
def tiny():
    cfg = ModelConfig(name_or_path="tiny")
    return load_model(cfg, seed=0).eval(), load_tokenizer(cfg)


@pytest.fixture(scope="module")
def prompts(tiny):
    _, tok = tiny
    users = [f"question {i}: " + "word " * (3 * i % 11) for i in range(6)]
    chats = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": u}] for u in users]
    prompts = [encode_prompt(tok, chat) for chat in chats]
    return sorted(prompts, key=len)  # the order HFPolicy.generate_ids batches them in


SETTINGS = [(0.0, 1.0), (1.0, 1.0), (0.7, 0.9)]  # (temperature, top_p): greedy, plain sampling, tempered nucleus


def _policy(tiny, temperature, top_p, eos=None, **kw):
    model, tok = tiny
    s = SamplingConfig(temperature=temperature, top_p=top_p, max_new_tokens=16, batch_size=16, seed=11, **kw)
    policy = HFPolicy(model, tok, s)
    if eos is not None:
        policy.eos_ids = eos
    return policy


def _pseudo_eos(tiny, prompts, temperature, top_p) -> list[int]:
    """Tokens that ``generate`` emits at different steps of different rows, used as end-of-sequence ids."""
    replies = _policy(tiny, temperature, top_p, decode="generate").generate_ids(prompts)
    picks = {int(r.completion_ids[k]) for r, k in zip(replies, [2, 5, 8, 11, 13, 3])}
    return sorted(picks)[:3]


@pytest.mark.parametrize("temperature,top_p", SETTINGS)
def test_same_shapes_give_bitwise_the_tokens_and_logprobs_of_generate(tiny, prompts, temperature, top_p):
    """No shared prefix and no row leaving: the same ops on the same shapes as ``generate`` (with the KV cache
    preallocated instead of concatenated, and the sampler's noise drawn as ``torch.multinomial`` draws it)."""
    eos = _pseudo_eos(tiny, prompts, temperature, top_p)
    ref = _policy(tiny, temperature, top_p, eos, decode="generate").generate_ids(prompts)
    if temperature > 0:  # (the random model's greedy rows all repeat one token: they end together)
        assert len({len(r.completion_ids) for r in ref}) > 1, "the rows should end at different steps"
    model, tok = tiny
    torch.manual_seed(11 + 1)  # HFPolicy seeds call n with seed + n
    out = decode(model, prompts, pad_id=tok.pad_token_id, eos_ids=eos, max_new_tokens=16,
                 temperature=temperature, top_p=top_p, share_prefix=False, drop_finished=False)  # fmt: skip
    for row, r in enumerate(ref):
        assert torch.equal(out.tokens[row], r.completion_ids)
        assert torch.equal(out.logprobs[row], r.logprobs)


@pytest.mark.parametrize("temperature,top_p", SETTINGS)
def test_fast_policy_gives_generates_replies(tiny, prompts, temperature, top_p):
    """The default fast path (shared prefix once, finished rows dropped): the same tokens, ends and cut-offs as
    ``generate``; log-probs equal to float32 rounding."""
    eos = _pseudo_eos(tiny, prompts, temperature, top_p)
    ref = _policy(tiny, temperature, top_p, eos, decode="generate").generate_ids(prompts)
    policy = _policy(tiny, temperature, top_p, eos)
    assert policy.fast
    new = policy.generate_ids(prompts)
    stats = policy.last_stats
    assert stats.prefix_tokens == common_prefix(prompts) > 50
    if temperature > 0:
        assert stats.compactions >= 1
        assert stats.decode_row_steps < stats.decode_steps * len(prompts)  # ended rows stopped costing
    for a, b in zip(ref, new):
        assert torch.equal(a.prompt_ids, b.prompt_ids)
        assert torch.equal(a.completion_ids, b.completion_ids)
        assert (a.text, a.cut_off) == (b.text, b.cut_off)
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)


def test_stop_strings_end_rows_where_generate_ends_them(tiny, prompts):
    model, tok = tiny
    free = _policy(tiny, 1.0, 1.0, decode="generate", stop_strings=["\x00never"]).generate_ids(prompts)
    # a stop string that a row's sampled continuation contains, a few tokens in (same seed: same samples)
    stop = tok.decode(free[0].completion_ids[4:6], skip_special_tokens=True)
    assert stop.strip()
    ref = _policy(tiny, 1.0, 1.0, decode="generate", stop_strings=[stop]).generate_ids(prompts)
    new = _policy(tiny, 1.0, 1.0, stop_strings=[stop]).generate_ids(prompts)
    assert stop in ref[0].text and len(ref[0].completion_ids) < 16
    for a, b in zip(ref, new):
        assert torch.equal(a.completion_ids, b.completion_ids) and a.cut_off == b.cut_off


def test_autocast_fast_decode_records_the_logprobs_it_samples_from(tiny, prompts):
    """bf16 autocast (trainer.precision=bf16-mixed): generation runs under the caller's autocast, as generate."""
    model, tok = tiny
    s = SamplingConfig(temperature=1.0, max_new_tokens=6, seed=2)
    for reply in HFPolicy(model, tok, s, autocast=torch.bfloat16).generate_ids(prompts[:3]):
        ids = torch.cat([reply.prompt_ids, reply.completion_ids])[None]
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=ids).logits[0, :-1].float()
        p = len(reply.prompt_ids)
        expected = torch.log_softmax(logits, -1)[p - 1 :].gather(-1, reply.completion_ids[:, None]).squeeze(-1)
        # bf16 rounding of a different batch shape: the same gap generate's log-probs have (docs: ~0.03 mean)
        assert (reply.logprobs - expected).abs().mean() < 0.1


def test_preallocated_cache_is_used_and_generate_is_the_fallback(tiny, monkeypatch):
    model, tok = tiny
    cache = preallocated_cache(model.config, 32)
    assert cache is not None and supports_fast_decode(model)
    assert not _policy(tiny, 0.0, 1.0, decode="generate").fast
    # a model whose own generation config adds a logits processor decodes with generate (which merges it in)
    monkeypatch.setattr(model.generation_config, "repetition_penalty", 1.3, raising=False)
    assert not _policy(tiny, 1.0, 1.0).fast


def test_decode_must_be_known():
    with pytest.raises(ValueError, match="sampling.decode"):
        SamplingConfig(decode="static")
