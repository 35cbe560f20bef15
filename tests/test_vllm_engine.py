"""The vLLM rollout engine on the CPU with a fake engine: Reply contract, weight-name mapping, strict round trip,
sleep/wake around rollouts, and GRPO's pi_old rule for raw engine log-probs (grpo/logp_diff)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from atom.env.rollout import Observation
from atom.policy.hf import HFPolicy, SamplingConfig, encode_prompt
from atom.policy.models import LoraConfig, ModelConfig, _attach_lora, _tiny_model, load_tokenizer
from atom.policy.vllm_engine import VLLMPolicy, hf_name, hf_weights


class FakeEngineModel(torch.nn.Module):
    """vLLM's model role: ``load_weights`` takes checkpoint names; an unknown name is an error (strict)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.loaded: list[str] = []

    def load_weights(self, weights):
        params = dict(self.model.named_parameters())
        for name, tensor in weights:
            if name not in params:
                raise KeyError(f"engine has no weight {name}")
            params[name].data.copy_(tensor)
            self.loaded.append(name)


class FakeLLM:
    """``vllm.LLM``'s generate contract: token-id prompts, per-prompt seeded sampling from softmax(logits / T),
    raw (T = 1) log-probs of the sampled tokens as {token: Logprob}, EOS kept in ``token_ids``."""

    def __init__(self, model, eos_id: int):
        self.model, self.eos_id, self.events = FakeEngineModel(model), eos_id, []
        runner = SimpleNamespace(model=self.model)
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(driver_worker=SimpleNamespace(worker=SimpleNamespace(model_runner=runner)))
        )

    @torch.no_grad()
    def generate(self, prompts, params, use_tqdm=False):
        self.events.append("generate")
        outs = []
        for prompt, sp in zip(prompts, params):
            assert sp.logprobs == 0 and sp.top_k == 0 and sp.n == 1
            ids, lps = list(prompt["prompt_token_ids"]), []
            gen = torch.Generator().manual_seed(sp.seed)
            for _ in range(sp.max_tokens):
                logits = self.model.model(torch.tensor([ids])).logits[0, -1].float()
                if sp.temperature > 0:
                    tok = int(torch.multinomial(torch.softmax(logits / sp.temperature, -1), 1, generator=gen))
                else:
                    tok = int(logits.argmax())
                lps.append({tok: SimpleNamespace(logprob=float(torch.log_softmax(logits, -1)[tok]))})
                ids.append(tok)
                if tok == self.eos_id:
                    break
            new = ids[len(prompt["prompt_token_ids"]) :]
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=new, logprobs=lps, text="",
                                                                 finish_reason="stop")]))  # fmt: skip
        return outs

    def reset_prefix_cache(self):
        self.events.append("reset_prefix_cache")

    def sleep(self, level):
        self.events.append(f"sleep{level}")

    def wake_up(self):
        self.events.append("wake_up")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ModelConfig(name_or_path="tiny"))


def fake_policy(tokenizer, sampling, sleep_level=0, seed=5):
    llm = FakeLLM(_tiny_model(len(tokenizer), seed=seed), tokenizer.eos_token_id)
    return VLLMPolicy(llm, tokenizer, sampling, sleep_level=sleep_level, make_params=SimpleNamespace)


def obs(messages):
    return [Observation(m) for m in messages]


MSGS = [[{"role": "user", "content": "hello"}], [{"role": "user", "content": "a longer prompt " * 6}]]


def test_names_from_peft_fsdp_lightning_and_compile_wrappers_map_to_checkpoint_names():
    cases = {
        "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight": "model.layers.0.self_attn.q_proj.weight",
        "base_model.model.model.embed_tokens.weight": "model.embed_tokens.weight",
        "_forward_module.model.layers.1.mlp.up_proj.weight": "model.layers.1.mlp.up_proj.weight",
        "model.layers.0._checkpoint_wrapped_module.mlp.down_proj.weight": "model.layers.0.mlp.down_proj.weight",
        "_orig_mod.model.norm.weight": "model.norm.weight",
        "module.lm_head.weight": "lm_head.weight",
        "model.layers.2._fsdp_wrapped_module.input_layernorm.weight": "model.layers.2.input_layernorm.weight",
    }
    assert {k: hf_name(k) for k in cases} == cases


def test_a_quantized_policy_with_the_vllm_engine_is_refused_naming_the_fields():
    from atom.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"grpo\.rollout_engine=vllm.*model\.quantization must be none"):
        load_config(None, ["grpo.rollout_engine=vllm", "model.quantization=4bit"])


def test_lora_weights_stream_merged_and_load_strictly_into_a_plain_llama(tokenizer):
    peft = _attach_lora(_tiny_model(len(tokenizer), seed=1), LoraConfig(r=4, alpha=8))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)  # B = 0 at init would hide a missing merge
    streamed = dict(hf_weights(peft))
    assert not any("lora" in n or "base_layer" in n for n in streamed)
    plain = _tiny_model(len(tokenizer), seed=2)
    result = plain.load_state_dict(streamed, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= {"lm_head.weight"}  # tied to the embeddings
    ids = torch.tensor([encode_prompt(tokenizer, MSGS[1])])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, peft(ids).logits, atol=1e-5, rtol=1e-4)
        before = peft(ids).logits
    assert torch.equal(before, peft(ids).logits)  # streaming left the trained model as it was


def test_reply_contract_matches_hf_policy_and_seeds_repeat(tokenizer):
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=6, seed=3)
    policy = fake_policy(tokenizer, sampling)
    trainer = _tiny_model(len(tokenizer), seed=0)
    assert policy.sync_weights(trainer, step=0) == len(list(trainer.parameters()))
    assert policy.sync_weights(trainer, step=0) == 0  # the engine already holds this step's weights
    assert sorted(policy.llm.model.loaded) == sorted(n for n, _ in trainer.named_parameters())  # strict, each once
    replies = policy.act(obs(MSGS))
    hf = HFPolicy(trainer, tokenizer, sampling).act(obs(MSGS))
    for r, h, m in zip(replies, hf, MSGS):
        assert r.prompt_ids.tolist() == encode_prompt(tokenizer, m) == h.prompt_ids.tolist()
        assert r.completion_ids.tolist() == h.completion_ids.tolist()  # same weights, greedy: same tokens
        assert r.completion_ids.dtype == torch.long and r.logprobs.dtype == torch.float and not r.truncated
        assert len(r.logprobs) == len(r.completion_ids) and (r.logprobs <= 0).all()
        torch.testing.assert_close(r.logprobs, h.logprobs, atol=1e-4, rtol=1e-4)  # T = 1 (greedy): raw == HF
    sampled = SamplingConfig(temperature=1.0, max_new_tokens=6, seed=9)
    a = fake_policy(tokenizer, sampled).act(obs(MSGS[:1]))[0].completion_ids.tolist()
    b = fake_policy(tokenizer, sampled).act(obs(MSGS[:1]))[0].completion_ids.tolist()
    assert a == b  # a seeded rollout repeats


def test_sleep_mode_wraps_rollouts_and_level_2_resends_the_weights(tokenizer):
    policy = fake_policy(tokenizer, SamplingConfig(max_new_tokens=2), sleep_level=2)
    trainer = _tiny_model(len(tokenizer), seed=0)
    policy.sync_weights(trainer, step=0)
    policy.act(obs(MSGS[:1]))
    policy.sleep()
    policy.sync_weights(trainer, step=0)  # level 2 dropped the weights: same step, sent again after waking
    policy.act(obs(MSGS[:1]))
    assert policy.llm.events == ["reset_prefix_cache", "generate", "sleep2", "wake_up", "reset_prefix_cache",
                                 "generate"]  # fmt: skip


@pytest.mark.slow
def test_grpo_with_the_engine_takes_pi_old_from_the_trainer_and_logs_the_gap(tmp_path, monkeypatch, tokenizer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from atom import pipeline
    from atom.config import load_config
    from tests.test_grpo import TINY

    engines = []

    def factory(p, model):
        def make():
            engines.append(fake_policy(p.tokenizer, p.cfg.sampling, sleep_level=1, seed=11))
            return engines[-1]

        return make

    monkeypatch.setattr(pipeline, "vllm_engine_factory", factory)
    overrides = ["grpo.max_steps=1", "grpo.group_size=2", "grpo.prompts_per_step=1", "grpo.rollout_engine=vllm",
                 "grpo.vllm.sleep_level=1",
                 "sampling.temperature=0.7", f"run.out_dir={tmp_path}"]  # fmt: skip
    p = pipeline.build(load_config(None, TINY + overrides))
    pipeline.grpo(pipeline.load_policy(p), p)
    assert len(engines) == 1 and engines[0].llm.events[0] == "reset_prefix_cache"  # weights in before rollout
    assert "sleep1" in engines[0].llm.events
    events = EventAccumulator(str(next((tmp_path / "atom" / "tb" / "grpo").glob("events.*")).parent))
    events.Reload()
    gap = events.Scalars("grpo/logp_diff")[0].value
    assert 0 <= gap < 1e-3  # same weights: the raw engine log-probs match the trainer's at T = 1
    # pi_old relabelled by the trainer at T = 0.7 (the engine's raw T = 1 log-probs would give a ratio far from 1)
    assert abs(events.Scalars("grpo/ratio_mean")[0].value - 1) < 1e-3


class RecordingVLLM:
    """A stand-in for the ``vllm`` module: ``LLM(**kwargs)`` records its arguments and reads the torchrun variables
    as vLLM's external launcher does (``int(os.environ["RANK"])``: a KeyError when they are missing)."""

    SamplingParams = SimpleNamespace

    def __init__(self):
        self.built: list[dict] = []

    def LLM(self, **kwargs):  # noqa: N802 - vllm's class name
        import os

        env = {k: int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
        self.built.append({"env": env, **kwargs})
        return FakeLLM(torch.nn.Linear(1, 1), 0)


def test_under_a_process_group_the_engine_gets_the_trainers_rank_whatever_the_launcher_set(monkeypatch, tokenizer):
    import sys

    from atom.policy.vllm_engine import VLLMConfig, build_vllm_policy

    fake = RecordingVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):  # Lightning's launcher sets LOCAL_RANK and WORLD_SIZE, not RANK
        monkeypatch.setenv(key, "0")
        monkeypatch.delenv(key)
    monkeypatch.setenv("LOCAL_RANK", "3")
    # rank 11 of 16 (second node, fourth GPU), process group up as Lightning leaves it at the first rollout
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 11)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 16)
    sampling = SamplingConfig()
    build_vllm_policy("dir", tokenizer, sampling, VLLMConfig(), 100, local_rank=3, context_tokens=4096)
    assert fake.built[-1]["env"] == {"RANK": 11, "LOCAL_RANK": 3, "WORLD_SIZE": 16}
    monkeypatch.setenv("RANK", "0")  # a stale RANK (an outer launcher's task id) is replaced too
    build_vllm_policy("dir", tokenizer, sampling, VLLMConfig(max_model_len=2048), 100, local_rank=3)
    assert fake.built[-1]["env"]["RANK"] == 11
    # the documented context: grpo.vllm.max_model_len, else model.max_context_tokens, else the model's own
    assert fake.built[0]["max_model_len"] == 4096 and fake.built[1]["max_model_len"] == 2048
    build_vllm_policy("dir", tokenizer, sampling, VLLMConfig(), 100)
    assert "max_model_len" not in fake.built[-1]
