"""GPU check of the vLLM rollout engine: one GRPO step with HF generate, then one with vLLM, side by side.

    pip install -e ".[vllm]"          # on the GPU machine (vLLM wheels are CUDA-only)
    python benchmarks/gpu_check_vllm.py [--model smollm2] [--group-size 8] [--prompts 2] [--max-new-tokens 256]

Each engine runs ``atom.fit``'s GRPO stage for one rollout step (``grpo.max_steps=1``) on the quickstart's
synthetic task, through the real wiring (``grpo.rollout_engine=hf|vllm``), on one GPU in bf16. Printed from the
run's TensorBoard scalars: the step's wall time, rollout and update time, rollout tokens/s, and for vLLM
``grpo/logp_diff``, the mean per-token |engine - trainer| log-prob gap at T = 1 (bf16 kernels put it around
1e-2; a value near 1 means the weights did not reach the engine). Saves benchmarks/results/gpu_check_vllm.json.
``--model`` takes ``smollm2`` (the embedded model, served from its de-quantized directory), a local directory or
a hub id already in the local cache.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atom import pipeline  # noqa: E402
from atom.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCALARS = ("time/rollout", "time/update", "time/rollout_tokens_per_s", "grpo/logp_diff", "grpo/ratio_mean",
           "grpo/completion_length_mean")  # fmt: skip


def scalars(run_dir: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb" / "grpo"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    return {k: events.Scalars(k)[-1].value for k in SCALARS if k in tags}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--gpu-memory", type=float, default=0.3, help="grpo.vllm.gpu_memory_utilization")
    parser.add_argument("--out", default="benchmarks/results/gpu_check_vllm.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check_vllm needs a CUDA GPU (vLLM is CUDA-only)")
    out_dir = Path(tempfile.mkdtemp(prefix="atom_gpu_check_vllm_"))
    common = [
        f"model.name_or_path={args.model}", "model.dtype=float32", "trainer.accelerator=gpu", "trainer.devices=1",
        "trainer.strategy=auto", "trainer.precision=bf16-mixed", "run.stages=[grpo]", "grpo.max_steps=1",
        f"grpo.group_size={args.group_size}", f"grpo.prompts_per_step={args.prompts}", "grpo.val_every=0",
        f"sampling.max_new_tokens={args.max_new_tokens}", f"sampling.batch_size={args.group_size * args.prompts}",
        f"grpo.vllm.gpu_memory_utilization={args.gpu_memory}", "grpo.vllm.dtype=bfloat16", f"run.out_dir={out_dir}",
    ]  # fmt: skip
    results = {}
    for engine in ("hf", "vllm"):
        cfg = load_config(ROOT / "experiments" / "quickstart.yaml", common + [f"grpo.rollout_engine={engine}",
                                                                              f"run.name={engine}"])  # fmt: skip
        p = pipeline.build(cfg)
        model = pipeline.load_policy(p)
        t0 = time.perf_counter()
        pipeline.grpo(model, p)
        results[engine] = {"step_s": time.perf_counter() - t0, **scalars(cfg.run.dir)}
        del p, model
        torch.cuda.empty_cache()
    print("| engine | GRPO step s | rollout s | update s | rollout tokens/s | logp_diff (engine vs trainer) |")
    print("|---|---|---|---|---|---|")
    for engine, r in results.items():
        gap = f"{r['grpo/logp_diff']:.4f}" if "grpo/logp_diff" in r else "-"
        print(f"| {engine} | {r['step_s']:.1f} | {r.get('time/rollout', 0):.1f} | {r.get('time/update', 0):.1f} "
              f"| {r.get('time/rollout_tokens_per_s', 0):.0f} | {gap} |")  # fmt: skip
    print(f"vLLM rollout speed-up: {results['hf']['time/rollout'] / results['vllm']['time/rollout']:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
