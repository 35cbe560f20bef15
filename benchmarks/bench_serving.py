"""The same episodes evaluated in-process (HFPolicy) and through a served backend (OpenAIPolicy), on the CPU.

    python benchmarks/bench_serving.py [--episodes 4] [--max-new-tokens 32] [--threads 1] [--url URL --served NAME]

Without ``--url`` the script starts ``transformers serve`` on the embedded SmolLM2 directory (the de-quantized
GGUF cache) on a free port and stops it at the end; with ``--url`` it uses that server (e.g. ``vllm serve``).
Both sides decode greedily from the same weights with the same chat template and run with ``--threads`` intra-op
threads, so the texts should agree and the ratio is the cost (or gain) of going through HTTP and the server's
own generation loop. Prints wall time, completion tokens/s and the ratio, the share of identical replies and both
EMs; saves ``benchmarks/results/bench_serving.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atom.data.chunker import TokenChunker  # noqa: E402
from atom.data.datamodule import DataConfig  # noqa: E402
from atom.data.longcontext import build_samples  # noqa: E402
from atom.data.synthetic import SyntheticConfig, generate  # noqa: E402
from atom.env.episode import AgentConfig  # noqa: E402
from atom.env.rollout import RolloutEngine, atommem_episode  # noqa: E402
from atom.eval.report import summarize  # noqa: E402
from atom.memory.embedder import build_embedder  # noqa: E402
from atom.memory.store import MemoryConfig  # noqa: E402
from atom.policy.hf import HFPolicy, SamplingConfig  # noqa: E402
from atom.policy.models import ModelConfig, load_model, load_tokenizer, pretrained_dir  # noqa: E402
from atom.policy.openai_client import ServerConfig  # noqa: E402
from atom.policy.openai_policy import OpenAIPolicy  # noqa: E402


def start_server(model_dir: str, threads: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-c", "from transformers.cli.transformers import main; main()", "serve", model_dir,
           "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(360):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"transformers serve exited with {proc.returncode}") from None
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("transformers serve did not become healthy in 180 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads, in-process and in the server")
    parser.add_argument("--url", default="", help="an OpenAI-compatible server to use instead of starting one")
    parser.add_argument("--served", default="", help="its served model name (default: the embedded directory)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/bench_serving.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model_cfg = ModelConfig()
    model_dir = str(pretrained_dir(model_cfg))
    tok, model = load_tokenizer(model_cfg), load_model(model_cfg)
    mem = MemoryConfig(embedder="hash", hash_dim=64)  # the embedder is not what is measured
    embedder = build_embedder(mem)
    records = generate(SyntheticConfig(num_records=4 * args.episodes, hops=2, num_entities=40, distractors=3))
    samples = build_samples(records, DataConfig(num_docs=4, max_questions=2, chunk_tokens=128))[: args.episodes]
    chunker = TokenChunker(tok, 128, 16)
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=args.max_new_tokens, batch_size=args.episodes)
    agent = AgentConfig(answer_reads=1)

    def run(policy) -> tuple[list, float]:
        engine = RolloutEngine(policy, embedder, chunker, mem, atommem_episode(agent))
        t0 = time.perf_counter()
        trajectories = engine.run(samples)
        return trajectories, time.perf_counter() - t0

    local_trajs, local_s = run(HFPolicy(model, tok, sampling))
    local_tokens = sum(len(t.reply.completion_ids) for tr in local_trajs for t in tr.turns)

    proc = None
    url, served = args.url, args.served or model_dir
    if not url:
        proc, url = start_server(model_dir, args.threads)
    try:
        server = ServerConfig(base_url=url, model=served, max_concurrency=args.concurrency, timeout_s=900)
        policy = OpenAIPolicy(server, sampling)
        served_trajs, served_s = run(policy)
        served_tokens = policy.usage.completion_tokens
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)

    pairs = [(a.reply.text, b.reply.text) for x, y in zip(local_trajs, served_trajs) for a, b in zip(x.turns, y.turns)]
    same = sum(a == b for a, b in pairs) / max(len(pairs), 1)
    out = {
        "episodes": len(samples), "max_new_tokens": args.max_new_tokens, "threads": args.threads, "url": url,
        "in_process": {"wall_s": local_s, "completion_tokens": local_tokens, "tokens_per_s": local_tokens / local_s,
                       "em": summarize(local_trajs, local_s)["em"]},
        "served": {"wall_s": served_s, "completion_tokens": served_tokens, "tokens_per_s": served_tokens / served_s,
                   "em": summarize(served_trajs, served_s)["em"], "length_cut": policy.usage.length_cut,
                   "requests": policy.usage.requests},
        "served_over_in_process_wall": served_s / local_s,
        "identical_replies": same,
    }  # fmt: skip
    print("| backend | wall s | completion tokens | tokens/s | EM |\n|---|---|---|---|---|")
    for name in ("in_process", "served"):
        r = out[name]
        print(f"| {name} | {r['wall_s']:.1f} | {r['completion_tokens']} | {r['tokens_per_s']:.1f} | {r['em']:.1f} |")
    print(f"served / in-process wall time: {out['served_over_in_process_wall']:.2f}x; identical replies: {same:.0%} "
          f"of {len(pairs)}; served replies cut at the length limit: {policy.usage.length_cut}")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
