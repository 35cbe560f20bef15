"""atom.evaluate, atom.collect (with resume after a kill) and the judge through a real ``transformers serve``.

The server (transformers' ``serving`` extra) serves the embedded SmolLM2 directory on the CPU; it is started once
for this module on a free port and stopped at the end. Episodes are tiny (one or two samples, 8 new tokens) so
the module stays within about a minute on 2 busy cores (the server runs one intra-op thread).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from atom.config import load_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None,
        reason="transformers serve needs the serving extra: pip install 'transformers[serving]'",
    ),
]

ROOT = Path(__file__).resolve().parents[1]
TINY_DATA = [
    "memory.embedder=hash",
    "memory.hash_dim=64",
    "data.synthetic.num_records=4",
    "data.num_docs=3",
    "data.max_questions=1",
    "data.val_fraction=0.5",
    "data.chunk_tokens=96",
    "data.chunk_overlap=8",
    "agent.answer_reads=0",
    "sampling.max_new_tokens=8",
    "model.max_context_tokens=2048",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, served model name) of a ``transformers serve`` process serving the embedded SmolLM2."""
    from atom.policy.models import ModelConfig, pretrained_dir

    model_dir = str(pretrained_dir(ModelConfig()))
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    log = open(log_path, "w")
    cmd = [sys.executable, "-c", "from transformers.cli.transformers import main; main()", "serve", model_dir,
           "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--default-seed", "0"]  # fmt: skip
    # One intra-op thread: on a shared 2-core machine more threads make every forward ~10x slower.
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve not healthy after 180 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1", model_dir
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _server(prefix: str, url: str, model: str, **extra) -> list[str]:
    kv = {"base_url": url, "model": model, "max_concurrency": 4, "timeout_s": 300, "retries": 1, "backoff_s": 0.5}
    kv.update(extra)
    return [f"{prefix}.{k}={v}" for k, v in kv.items()]


def test_evaluate_through_the_served_backend_with_the_judge_column(served, tmp_path):
    from atom.evaluate import run

    url, model = served
    cfg = load_config(None, TINY_DATA + [
        f"run.out_dir={tmp_path}", "run.name=served", "model.backend=openai", "eval.methods=[atommem,rag]",
        "eval.max_samples=1", *_server("model.server", url, model),
        *_server("eval.judge.server", url, model, retries=0), "eval.judge.max_tokens=16",
    ])  # fmt: skip
    rows = run(cfg, progress=False)
    for method in ("atommem", "rag"):
        r = rows[method]
        calls = r["llm_calls_per_episode"] * r["episodes"]
        assert r["served"]["requests"] == calls > 0  # every LLM call of the episode went to the server
        assert r["served"]["completion_tokens"] <= 8 * calls  # sampling.max_new_tokens reached the server
        assert 1 <= r["served"]["length_cut"] <= calls  # an 8-token cap cuts the reasoning replies
        assert r["completion_tokens_per_episode"] == r["served"]["completion_tokens"] / r["episodes"] > 0
        assert r["judge_failed"] + (0 if r["judge"] is None else 1) >= 1  # one question: judged or counted
    results = json.loads((tmp_path / "served" / "eval" / "evaluate-1" / "results.json").read_text())
    assert "judge" in results["methods"]["atommem"]
    assert "| judge (failed) |" in (tmp_path / "served" / "eval" / "evaluate-1" / "results.md").read_text()


def test_teacher_collection_through_the_server_resumes_after_a_kill(served, tmp_path):
    from atom.collect import main

    url, model = served
    out, config = tmp_path / "teacher.jsonl", tmp_path / "collect.yaml"
    config.write_text("run: {name: teacher}\n")
    args = [str(config), *TINY_DATA, f"run.out_dir={tmp_path}", *_server("sft.teacher.server", url, model),
            "sft.teacher.max_new_tokens=8", "sft.teacher.strategy=Store every name you read.",
            "--out", str(out), "--policy", "openai", "--split", "val", "--batch", "1"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "atom.collect", *args], cwd=ROOT, env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (out.is_file() and out.read_text().count("\n") >= 1) and proc.poll() is None:
            assert time.monotonic() < deadline, "the first batch of the collection never arrived"
            time.sleep(0.2)
    finally:
        proc.kill()  # a kill at any point, usually in the middle of the next batch
        proc.wait()
    first = [json.loads(x) for x in out.read_text().splitlines() if x.endswith("}")]
    assert len(first) == 1  # killed after the first of two batches (each batch is >= 2 requests of > 1 s)
    main(args)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    from atom import pipeline

    val = pipeline.build(load_config(None, TINY_DATA)).data.val_samples
    assert sorted(r["sample_id"] for r in rows) == sorted(s.id for s in val)  # each sample exactly once
    assert rows[: len(first)] == first  # what the killed run wrote is kept as it was
    turn = rows[0]["turns"][0]
    assert "Store every name you read." not in json.dumps(turn["messages"])  # the demo keeps the student prompt
    assert all(t["completion"] is not None for r in rows for t in r["turns"])
