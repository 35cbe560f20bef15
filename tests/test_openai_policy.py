"""The served policy, the judge and resumable collection against a scripted fake server (no model, no network)."""

from __future__ import annotations

import json
import socket

import pytest
import torch

from atom.env.rollout import Observation
from atom.eval.judge import Judge, JudgeConfig, judge_summary, judged_reward, parse_verdict
from atom.policy.hf import SamplingConfig, centre_truncate, encode_prompt
from atom.policy.openai_client import ServerConfig, ServerError
from atom.policy.openai_policy import OpenAIPolicy, UnsupportedServer, with_strategy
from atom.train.collection import collect, done_counts
from tests.openai_fakes import FakeServer, chat_reply, vllm_completion


def obs(messages):
    return [Observation(m) for m in messages]


MSG = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
SAMPLING = SamplingConfig(temperature=0.0, max_new_tokens=8, seed=1)


def server(url: str, **kw) -> ServerConfig:
    return ServerConfig(base_url=url, model="fake", retries=kw.pop("retries", 2), backoff_s=0.0, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_chat_mode_sends_every_prompt_of_a_step_at_once_and_counts_length_cut_replies():
    def handler(path, body):
        text = body["messages"][-1]["content"]
        return 200, ("sleep", 0.3, chat_reply(f"re:{text}", finish="length" if text.endswith("1") else "stop"))

    with FakeServer(handler) as fake:
        policy = OpenAIPolicy(server(fake.url, max_concurrency=8), SAMPLING)
        msgs = [[{"role": "user", "content": f"q{i}"}] for i in range(6)]
        replies = policy.act(obs(msgs))
        assert [r.text for r in replies] == [f"re:q{i}" for i in range(6)]  # input order kept
        assert fake.max_in_flight == 6  # one lockstep step: all requests in flight together
        assert policy.usage.requests == 6 and policy.usage.length_cut == 1
        assert policy.usage.prompt_tokens == 60 and policy.usage.completion_tokens == 30
        path, body = fake.requests[0]
        assert path == "/v1/chat/completions" and body["model"] == "fake" and body["max_tokens"] == 8
        assert body["temperature"] == 0.0 and "top_p" not in body
        assert body["chat_template_kwargs"] == {"enable_thinking": False}
        assert len({b["seed"] for _, b in fake.requests}) == 6  # every request its own seed
        policy.close()


def test_concurrency_is_capped_by_max_concurrency():
    with FakeServer(lambda p, b: (200, ("sleep", 0.2, chat_reply("x")))) as fake:
        policy = OpenAIPolicy(server(fake.url, max_concurrency=2), SAMPLING)
        policy.act(obs([MSG] * 5))
        assert fake.max_in_flight == 2


def test_teacher_strategy_reaches_the_server_but_not_the_stored_turn():
    assert with_strategy(MSG, "")[0]["content"] == "be brief"
    assert with_strategy(MSG, "plan")[0]["content"] == "be brief\n\nplan"
    assert with_strategy(MSG[1:], "plan") == [{"role": "system", "content": "plan"}, MSG[1]]
    with FakeServer(lambda p, b: (200, chat_reply("ok"))) as fake:
        policy = OpenAIPolicy(server(fake.url), SAMPLING, strategy="plan")
        messages = [list(MSG)]
        policy.act(obs(messages))
        assert fake.requests[0][1]["messages"][0]["content"] == "be brief\n\nplan"
        assert messages[0][0]["content"] == "be brief"


def test_served_model_name_is_asked_once_when_the_config_leaves_it_empty():
    def handler(path, body):
        if path == "/v1/models":
            return 200, {"object": "list", "data": [{"id": "served-7b", "object": "model", "created": 0,
                                                     "owned_by": "x"}]}  # fmt: skip
        return 200, chat_reply(body["model"])

    with FakeServer(handler) as fake:
        policy = OpenAIPolicy(ServerConfig(base_url=fake.url, backoff_s=0), SAMPLING)
        assert [r.text for r in policy.act(obs([MSG] * 3))] == ["served-7b"] * 3
        assert sum(p == "/v1/models" for p, _ in fake.requests) == 1


@pytest.fixture(scope="module")
def tokenizer():
    from atom.policy.models import ModelConfig, load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path="tiny"))


@pytest.mark.parametrize("ids_inside_logprobs", [False, True])
def test_tokens_mode_request_and_reply_contract_on_a_vllm_shaped_reply(tokenizer, ids_inside_logprobs):
    eos = tokenizer.eos_token_id

    def handler(path, body):
        return 200, vllm_completion(body["prompt"], [11, 12, eos], [-0.5, -1.25, -0.125],
                                    as_token_ids_only=ids_inside_logprobs)  # fmt: skip

    with FakeServer(handler) as fake:
        long = [{"role": "user", "content": "word " * 400}]
        policy = OpenAIPolicy(server(fake.url, mode="tokens"), SAMPLING, tokenizer, max_prompt_tokens=64)
        short, cut = policy.act(obs([MSG, long]))
        path, body = min(fake.requests, key=lambda r: len(r[1]["prompt"]))  # the short prompt's request
        assert path == "/v1/completions"
        assert body["prompt"] == encode_prompt(tokenizer, MSG)  # token ids, templated here
        assert body["logprobs"] == 0 and body["return_token_ids"] and body["return_tokens_as_token_ids"]
        assert body["top_k"] == 0
        assert short.prompt_ids.tolist() == encode_prompt(tokenizer, MSG)
        assert cut.prompt_ids.tolist() == centre_truncate(encode_prompt(tokenizer, long), 64)
        assert policy.usage.truncated_prompts == 1 and cut.truncated and not short.truncated
        assert short.completion_ids.tolist() == [11, 12, eos]  # EOS kept, as HFPolicy keeps it
        assert torch.allclose(short.logprobs, torch.tensor([-0.5, -1.25, -0.125]))
        assert short.completion_ids.dtype == torch.long and short.logprobs.dtype == torch.float


def test_tokens_mode_against_a_server_without_logprobs_fails_at_once_with_advice(tokenizer):
    with FakeServer(lambda p, b: (200, {"choices": [{"index": 0, "text": "hi", "finish_reason": "stop"}]})) as fake:
        policy = OpenAIPolicy(server(fake.url, mode="tokens"), SAMPLING, tokenizer)
        with pytest.raises(ServerError, match="server.mode=chat") as err:
            policy.act(obs([MSG]))
        assert isinstance(err.value.__cause__, UnsupportedServer)
        assert len(fake.requests) == 1  # not retried: the server cannot do it


BAD = {
    "http 500": lambda p, b: (500, {"error": "boom"}),
    "malformed json": lambda p, b: (200, b"{not json"),
    "no choices": lambda p, b: (
        200,
        {"id": "x", "object": "chat.completion", "created": 0, "model": "f", "choices": []},
    ),  # fmt: skip
    "timeout": lambda p, b: (200, ("sleep", 2.0, chat_reply("late"))),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_server_gives_a_clear_error_naming_the_url_after_the_retries(case):
    with FakeServer(BAD[case]) as fake:
        policy = OpenAIPolicy(server(fake.url, retries=2, timeout_s=0.5), SAMPLING)
        with pytest.raises(ServerError) as err:
            policy.act(obs([MSG]))
        assert fake.url in str(err.value) and "failed 3 times" in str(err.value)
        assert len(fake.requests) == 3


def test_after_a_failed_request_the_unsent_ones_are_cancelled():
    with FakeServer(lambda p, b: (500, {"error": "down"})) as fake:
        policy = OpenAIPolicy(server(fake.url, retries=0, max_concurrency=1), SAMPLING)
        with pytest.raises(ServerError, match="failed 1 times"):
            policy.act(obs([MSG] * 5))
        assert len(fake.requests) <= 2  # not one failing request per prompt


def test_a_refused_connection_is_retried_then_named():
    url = f"http://127.0.0.1:{free_port()}/v1"
    policy = OpenAIPolicy(server(url, retries=1), SAMPLING)
    with pytest.raises(ServerError, match=r"127\.0\.0\.1.*failed 2 times.*APIConnectionError"):
        policy.act(obs([MSG]))


def test_a_client_error_is_not_retried_and_a_passing_glitch_is():
    with FakeServer(lambda p, b: (400, {"detail": "unknown model 'fake'"})) as fake:
        with pytest.raises(ServerError, match="retrying cannot help.*unknown model"):
            OpenAIPolicy(server(fake.url), SAMPLING).act(obs([MSG]))
        assert len(fake.requests) == 1
    answers = iter([(503, {"error": "loading"}), (200, chat_reply("fine"))])
    with FakeServer(lambda p, b: next(answers)) as fake:
        assert OpenAIPolicy(server(fake.url), SAMPLING).act(obs([MSG]))[0].text == "fine"


# -- the judge ----------------------------------------------------------------------------------------------------


def test_verdict_parsing_follows_the_fenced_json_rule():
    assert parse_verdict('Same person.\n```json{"pass": true}```') is True
    assert parse_verdict('```json\n{"pass": false}\n```') is False
    assert parse_verdict('reasoning... {"pass": true}') is True  # no fence: the last JSON object
    assert parse_verdict('```json{"pass": true}``` on reflection ```json{"pass": false}```') is False
    for bad in ["yes", '```json{"pass": "yes"}```', '{"verdict": true}', ""]:
        with pytest.raises(ValueError):
            parse_verdict(bad)


def test_judge_scores_once_per_question_retries_malformed_verdicts_and_counts_failures():
    def handler(path, body):
        prompt = body["messages"][0]["content"]
        if "Q-bad" in prompt:
            return 200, chat_reply("I think it is fine")  # never a verdict
        good = "Paris" in prompt.split("[MODEL ANSWER]")[1].split("[GOLD ANSWER]")[0]
        return 200, chat_reply(f'```json{{"pass": {"true" if good else "false"}}}```')

    with FakeServer(handler) as fake:
        judge = Judge(JudgeConfig(server=server(fake.url, retries=1)))
        items = [("Q1", "Paris, France", ["Paris", "City of Paris"]), ("Q2", "Lyon", ["Paris"]),
                 ("Q3", None, ["Paris"]), ("Q-bad", "Paris", ["Paris"])]  # fmt: skip
        verdicts = judge.verdicts(items)
        assert verdicts == [1.0, 0.0, 0.0, None]
        assert judge.failed == 1 and judge.calls == 3  # the unanswered question costs no call
        q_bad = [b for _, b in fake.requests if "Q-bad" in b["messages"][0]["content"]]
        assert len(q_bad) == 2  # a malformed verdict is re-asked (retries=1), then counted
        both = next(b["messages"][0]["content"] for _, b in fake.requests if "Q1" in b["messages"][0]["content"])
        assert "- Paris\n- City of Paris" in both  # every alias in one prompt: one verdict per question
    assert judge_summary([verdicts]) == {"judge": 100 / 3, "judge_failed": 1}
    assert judged_reward([1.0, 0.0]) == 0.5 and judged_reward([1.0, None]) is None


# -- resumable collection ---------------------------------------------------------------------------------------


class _Result:
    def __init__(self, sample_id):
        self.sample_id, self.predictions, self.em = sample_id, ["a"], [1.0]


class _Traj:
    def __init__(self, sample_id):
        self.sample_id, self.turns, self.result, self.reward = sample_id, [], _Result(sample_id), 1.0


class _Sample:
    def __init__(self, i):
        self.id, self.questions, self.answers = f"s{i}", ("q",), (("a",),)


def test_collection_appends_per_batch_keeps_finished_batches_when_the_server_fails_and_resumes(tmp_path):
    out = tmp_path / "t.jsonl"
    samples = [_Sample(i) for i in range(5)]
    calls = []

    def flaky(batch, repeats):  # the server goes away during the third batch
        calls.append([s.id for s in batch])
        if len(calls) == 3:
            raise ServerError("model.server at http://x/v1: POST /chat/completions failed 4 times")
        return [_Traj(s.id) for s in batch for _ in range(repeats)]

    with pytest.raises(ServerError, match="http://x/v1"):
        collect(flaky, samples, out, repeats=2, batch=2)
    assert done_counts(out) == {"s0": 2, "s1": 2, "s2": 2, "s3": 2}  # nothing finished was lost
    out.write_text(out.read_text() + '{"sample_id": "s4", "rew')  # a kill in the middle of a write
    calls.clear()
    counts = collect(flaky, samples, out, repeats=2, batch=2)
    assert calls == [["s4"]] and counts == {"written": 2, "skipped_samples": 4, "total": 10}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["sample_id"] for r in rows].count("s4") == 2 and "judge" not in rows[0]
    assert collect(flaky, samples, out, repeats=2, batch=2)["written"] == 0  # complete: nothing to do


def test_judged_lines_are_kept_on_their_judged_reward_and_unjudged_ones_are_not(tmp_path):
    from atom.train.sft import read_demos

    turn = {"messages": MSG, "completion": "<answer>Paris</answer>"}
    rows = [
        {"sample_id": "exact", "reward": 1.0, "judge": [0.0], "judge_reward": 0.0, "turns": [turn]},  # EM only
        {"sample_id": "paraphrase", "reward": 0.0, "judge": [1.0], "judge_reward": 1.0, "turns": [turn]},
        {"sample_id": "judge-failed", "reward": 1.0, "judge": [None], "judge_reward": None, "turns": [turn]},
        {"sample_id": "no-judge", "reward": 1.0, "turns": [turn]},
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [d["reward"] for d in read_demos(path, min_reward=0.5)] == [1.0, 1.0]  # paraphrase and no-judge
