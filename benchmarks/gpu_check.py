"""One GRPO step of a Qwen-class model in the three GPU settings, with step time, rollout/update split and peak
memory per GPU: ``python benchmarks/gpu_check.py [--model Qwen/Qwen3-8B] [--only lora,qlora,fsdp]``.

Settings (each one ``python -m atom.fit`` run of one rollout step on the synthetic task, so no dataset is needed):

- ``lora``: LoRA adapters on a bf16 base, one GPU (``trainer.strategy=auto``);
- ``qlora``: LoRA on an NF4 4-bit base (bitsandbytes), one GPU;
- ``fsdp``: full fine-tuning, fp32 master weights, bf16 compute, FSDP2 over every visible GPU.

Peak memory per GPU is the largest ``memory.used`` that ``nvidia-smi`` reported while the run was alive (the
whole process: weights, optimizer state, the generation copy, activations, allocator cache). Step time and its
split are the run's own ``time/rollout`` and ``time/update`` scalars. Prints a table and writes
``benchmarks/results/gpu_check.json``. Needs nothing but the README's install and the model files (hub id or
directory; set HF_HUB_OFFLINE=1 with a filled cache).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = [
    "run.stages=[grpo]", "data.dataset=synthetic", "data.synthetic.num_records=64", "data.num_docs=20",
    "data.chunk_tokens=1024", "data.chunk_overlap=32", "memory.embedder=minilm", "grpo.max_steps=1",
    "grpo.group_size=8", "grpo.micro_batch_size=2", "grpo.val_every=0", "sampling.max_new_tokens=256",
    "sampling.batch_size=64", "trainer.accelerator=gpu", "trainer.precision=bf16-mixed", "trainer.keep_checkpoints=0",
    "model.gradient_checkpointing=true",
]  # fmt: skip
SETTINGS = {
    "lora": ["model.lora.enabled=true", "model.dtype=bfloat16", "trainer.devices=1", "trainer.strategy=auto"],
    "qlora": [
        "model.lora.enabled=true", "model.quantization=4bit", "model.dtype=bfloat16", "trainer.devices=1",
        "trainer.strategy=auto",
    ],
    "fsdp": ["model.dtype=float32", "trainer.strategy=fsdp"],
}  # fmt: skip


def gpu_count() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True)
    return len(out.stdout.split()) if out.returncode == 0 else 0


def _poll(peaks: dict[int, float], stop: threading.Event) -> None:
    while not stop.is_set():
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
            capture_output=True, text=True,
        )  # fmt: skip
        for line in out.stdout.strip().splitlines():
            index, used = (int(x) for x in line.split(","))
            peaks[index] = max(peaks.get(index, 0.0), used / 1024)
        stop.wait(0.5)


def scalars(tb_dir: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb_dir)).Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}


def run(setting: str, model: str, gpus: int, out_dir: Path) -> dict:
    overrides = (
        COMMON + SETTINGS[setting] + [f"model.name_or_path={model}", f"run.out_dir={out_dir}", f"run.name={setting}"]
    )
    if setting == "fsdp":
        overrides += [f"trainer.devices={gpus}", f"grpo.prompts_per_step={max(gpus, 1)}"]
    else:
        overrides += ["grpo.prompts_per_step=1"]
    config = out_dir / "gpu_check.yaml"
    config.write_text("run: {name: gpu_check}\n")
    peaks: dict[int, float] = {}
    stop = threading.Event()
    poller = threading.Thread(target=_poll, args=(peaks, stop), daemon=True)
    poller.start()
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "atom.fit", str(config), *overrides], cwd=ROOT, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    stop.set()
    poller.join()
    row = {"setting": setting, "gpus": gpus if setting == "fsdp" else 1, "ok": proc.returncode == 0, "wall_s": wall,
           "peak_gib_per_gpu": {str(k): round(v, 1) for k, v in sorted(peaks.items())}}  # fmt: skip
    if proc.returncode != 0:
        row["error"] = proc.stderr.strip().splitlines()[-1:] if proc.stderr.strip() else ["(no stderr)"]
        return row
    s = scalars(out_dir / setting / "tb" / "grpo")
    row.update(rollout_s=s.get("time/rollout", float("nan")), update_s=s.get("time/update", float("nan")))
    row["step_s"] = row["rollout_s"] + row["update_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen/Qwen3-8B", help="hub id or directory of a Qwen-class causal LM")
    parser.add_argument("--only", default="lora,qlora,fsdp", help="comma-separated settings to run")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    args = parser.parse_args()
    gpus = gpu_count()
    if gpus == 0:
        sys.exit("gpu_check: no GPU visible (nvidia-smi found none); this check only runs on a GPU machine")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.only.split(","):
            rows.append(run(setting, args.model, gpus, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.model}, one GRPO step (G=8, 256 new tokens per turn)\n")
    print("| setting | GPUs | step s | rollout s | update s | peak GiB per GPU |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        peak = ", ".join(f"{v}" for v in r["peak_gib_per_gpu"].values())
        if r["ok"]:
            times = f"{r['step_s']:.1f} | {r['rollout_s']:.1f} | {r['update_s']:.1f}"
            print(f"| {r['setting']} | {r['gpus']} | {times} | {peak} |")
        else:
            print(f"| {r['setting']} | {r['gpus']} | failed: {r['error'][0][:80]} | | | {peak} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "rows": rows}, indent=2))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
