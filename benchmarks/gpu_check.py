"""GPU checks of the scale path. Two modes:

``python benchmarks/gpu_check.py`` (``--model random``, the default): self-contained, for a GPU machine with no
network and only this checkout (``pip install -r benchmarks/gpu_requirements.txt`` first). It builds a
random-init model of the Qwen3-8B architecture itself (untied embeddings, the real vocabulary and head layout:
32 query heads, 8 KV heads of 128, hidden 4096, only ``--layers`` layers) with a byte-level ChatML tokenizer, and
runs ``python -m atom.fit`` on the synthetic task with hash embeddings, FSDP2 at world size 1 (NCCL), bf16-mixed
and gradient checkpointing:

- ``fsdp_sft_grpo``: SFT (oracle demonstrations), one GRPO step, evaluation, ``policy/`` saved;
- ``resume``: the same command again with ``grpo.max_steps=2``: SFT is not retrained, GRPO resumes at step 1;
- ``lora``: SFT then one GRPO step with LoRA adapters on a bf16 base, one GPU (``trainer.strategy=auto``);
- ``memory``: the FSDP run's peak GPU memory against docs/gpu.md's formula (22N bytes at world size 1: fp32
  policy, gradients and AdamW moments, fp32 KL reference, bf16 generation copy; plus the transients).

One PASS/FAIL/SKIP line per check, and ``gpu_check.json`` in ``$OUT`` (else ``benchmarks/results/``).
``--cpu`` runs the same checks on the CPU (gloo, tiny sizes): the dry run that proves the script before a GPU.

``python benchmarks/gpu_check.py --model Qwen/Qwen3-8B [--only lora,qlora,fsdp]``: one GRPO step of a real model
in each of the three GPU settings, with step time, rollout/update split and peak memory per GPU:

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
import os
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


# -- the self-contained checks (--model random) ---------------------------------------------------------------

# Qwen3-8B's layer shapes and head layout with a 65,536-token vocabulary instead of 151,936: the root unit, and
# with it each full checkpoint (12N bytes), then fits the GPU machine's 64 GiB disk (N = 0.92e9 at 2 layers: 11 GB)
QWEN3_8B = dict(vocab_size=65536, hidden_size=4096, intermediate_size=12288, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128)  # fmt: skip
TINY_QWEN3 = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=16)  # fmt: skip
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")  # fmt: skip
TASK = [
    "data.dataset=synthetic", "data.synthetic.num_records=16", "data.synthetic.num_entities=20",
    "data.synthetic.distractors=2", "data.num_docs=4", "data.max_questions=2", "data.chunk_tokens=512",
    "data.chunk_overlap=16", "data.val_fraction=0.25", "memory.embedder=hash", "memory.hash_dim=64",
    "agent.max_llm_calls=16", "sampling.batch_size=8", "sft.epochs=1", "sft.batch_size=2", "sft.max_tokens=1024",
    "grpo.group_size=2", "grpo.prompts_per_step=1", "grpo.micro_batch_size=2", "grpo.max_steps=1",
    "grpo.val_every=1", "grpo.val_samples=2", "eval.max_samples=2", "model.max_context_tokens=4096",
    "model.gradient_checkpointing=true", "trainer.precision=bf16-mixed", "trainer.keep_checkpoints=0",
]  # fmt: skip
FSDP = ["run.stages=[sft,grpo,eval]", "trainer.strategy=fsdp", "trainer.devices=1", "model.dtype=float32"]
LORA = ["run.stages=[sft,grpo]", "trainer.strategy=auto", "trainer.devices=1", "model.lora.enabled=true",
        "model.dtype=bfloat16"]  # fmt: skip


def byte_tokenizer():
    """A byte-level BPE tokenizer without merges (one token per byte) and Qwen's ChatML specials, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    fast.chat_template = CHATML
    return fast


def random_qwen3(directory: Path, layers: int, sizes: dict) -> int:
    """Save a random-init Qwen3 causal LM (``sizes``, ``layers`` layers, untied embeddings, bf16 on disk) and the
    byte tokenizer to ``directory``; return its parameter count N."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = byte_tokenizer()
    config = Qwen3Config(
        **sizes, num_hidden_layers=layers, max_position_embeddings=40960, rope_theta=1e6, rms_norm_eps=1e-6,
        tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def fit(name: str, overrides: list[str], out_dir: Path, gpu: bool, timeout: float | None) -> dict:
    """``python -m atom.fit`` with ``overrides`` into run ``out_dir/name``: return code, wall time, peak GiB."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = out_dir / "gpu_check.yaml"
    config.write_text("run: {name: gpu_check}\n")
    peaks: dict[int, float] = {}
    stop = threading.Event()
    poller = threading.Thread(target=_poll, args=(peaks, stop), daemon=True) if gpu else None
    if poller is not None:
        poller.start()
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "atom.fit", str(config), *overrides, f"run.out_dir={out_dir}", f"run.name={name}"]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        rc, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, err = 124, f"timed out after {timeout} s\n{exc.stderr or ''}"
    wall = time.perf_counter() - start
    stop.set()
    if poller is not None:
        poller.join()
    tail = [ln for ln in (err or "").strip().splitlines() if ln.strip()][-3:]
    return {"rc": rc, "wall_s": round(wall, 1), "peak_gib": max(peaks.values(), default=0.0), "stderr_tail": tail}


def _count(tb_dir: Path, tag: str) -> int:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb_dir)).Reload()
    return len(events.Scalars(tag)) if tag in events.Tags()["scalars"] else 0


def _global_step(ckpt: Path) -> int:
    import torch

    return int(torch.load(ckpt / "meta.pt" if ckpt.is_dir() else ckpt, map_location="cpu", weights_only=False)[
        "global_step"])  # fmt: skip


def memory_budget(n: int, sizes: dict, micro_batch: int, tokens: int) -> dict[str, float]:
    """docs/gpu.md's formula at world size 1 (GiB): the static 22N (fp32 policy 4N, gradients 4N, AdamW moments 8N,
    fp32 KL reference 4N, bf16 generation copy 2N) and the transients on top (the root unit, 2VH parameters,
    gathered in bf16 with its bf16 gradients and their fp32 copy: 16VH bytes; logits, log-softmax and their
    gradient in fp32: 3 x 4 x b T V bytes; the CUDA context and allocator: 2 GiB)."""
    gib = 2**30
    vh = sizes["vocab_size"] * sizes["hidden_size"]
    static = 22 * n / gib
    transient = (16 * vh + 12 * micro_batch * tokens * sizes["vocab_size"]) / gib + 2
    return {"static_gib": round(static, 2), "upper_gib": round(static + transient, 2)}


def self_contained(args) -> int:
    """The checks of ``--model random``; returns the process exit status (1 if any check failed)."""
    gpu = not args.cpu
    if gpu and gpu_count() == 0:
        sys.exit("gpu_check: no GPU visible (nvidia-smi found none); run with --cpu for the dry run")
    sizes, layers = (QWEN3_8B, args.layers) if gpu else (TINY_QWEN3, 2)
    gpu_sizes = ["trainer.accelerator=gpu", "sampling.max_new_tokens=32"]
    # the dry run on shared CPU cores: fewer and shorter demonstrations and episodes
    cpu_sizes = ["trainer.accelerator=cpu", "sampling.max_new_tokens=8", "data.synthetic.num_records=8",
                 "data.num_docs=2", "sft.max_tokens=512"]  # fmt: skip
    device = gpu_sizes if gpu else cpu_sizes
    timeout = args.timeout or (240 if gpu else None)  # shared CPU cores: no bound on the dry run's wall time
    if gpu:
        import torch

        print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, NCCL {torch.cuda.nccl.version()}")
    out = Path(args.out or os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    checks: dict[str, dict] = {}

    def report(name: str, status: str, detail: str, **extra) -> None:
        checks[name] = {"status": status, "detail": detail, **extra}
        print(f"{status} {name}: {detail}", flush=True)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = random_qwen3(tmp / "model", layers, sizes)
        free = shutil.disk_usage(tmp).free / 2**30
        built = time.perf_counter() - t0
        print(f"random Qwen3: {layers} layers, N = {n / 1e6:.2f}M parameters ({built:.0f} s); {free:.0f} GiB free")
        common = TASK + device + [f"model.name_or_path={tmp / 'model'}"]
        run = tmp / "runs" / "fsdp"
        first = fit("fsdp", common + FSDP, tmp / "runs", gpu, timeout)
        ok = first["rc"] == 0 and (run / "policy" / "config.json").is_file()
        ok = ok and _count(run / "tb" / "grpo", "grpo/optimizer_steps") == 1 and (run / "results.json").is_file()
        report("fsdp_sft_grpo", "PASS" if ok else "FAIL", f"rc {first['rc']}, {first['wall_s']} s", **first)
        if ok:
            sft_events = _count(run / "tb" / "sft", "sft/loss")
            again = fit("fsdp", common + FSDP + ["grpo.max_steps=2"], tmp / "runs", gpu, timeout)
            step = _global_step(run / "checkpoints" / "grpo" / "last.ckpt") if again["rc"] == 0 else -1
            resumed = again["rc"] == 0 and step == 2 and _count(run / "tb" / "sft", "sft/loss") == sft_events
            detail = f"rc {again['rc']}, {again['wall_s']} s, GRPO at optimizer step {step} (want 2), SFT not retrained"
            detail += "" if resumed else f": {_count(run / 'tb' / 'sft', 'sft/loss') == sft_events}"
            report("resume", "PASS" if resumed else "FAIL", detail, **again)
        else:
            report("resume", "SKIP", "needs fsdp_sft_grpo")
        shutil.rmtree(run, ignore_errors=True)  # the FSDP run's checkpoints: disk for the next run
        lora = fit("lora", common + LORA, tmp / "runs", gpu, timeout)
        ok = lora["rc"] == 0 and (tmp / "runs" / "lora" / "policy" / "config.json").is_file()
        report("lora", "PASS" if ok else "FAIL", f"rc {lora['rc']}, {lora['wall_s']} s", **lora)
        if not gpu:
            report("memory", "SKIP", "no GPU (--cpu)")
        elif first["rc"] != 0:
            report("memory", "SKIP", "needs fsdp_sft_grpo")
        else:
            budget = memory_budget(n, sizes, micro_batch=2, tokens=4096)
            peak = first["peak_gib"]
            ok = 0.95 * budget["static_gib"] <= peak <= budget["upper_gib"]
            detail = f"peak {peak:.1f} GiB vs 22N = {budget['static_gib']} GiB (upper {budget['upper_gib']} GiB)"
            report("memory", "PASS" if ok else "FAIL", detail, peak_gib=peak, **budget)
    result = {"mode": "cpu" if args.cpu else "gpu", "layers": layers, "parameters": n, "sizes": sizes,
              "wall_s": round(time.perf_counter() - t0, 1), "checks": checks}  # fmt: skip
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    print(f"written to {out / 'gpu_check.json'} ({result['wall_s']} s)")
    return int(any(c["status"] == "FAIL" for c in checks.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random", help="random (self-contained checks) or a hub id / directory")
    parser.add_argument("--only", default="lora,qlora,fsdp", help="comma-separated settings to run (--model given)")
    parser.add_argument("--out", default="", help="output: a folder (random; default $OUT) or a .json file")
    parser.add_argument("--cpu", action="store_true", help="random: the dry run on the CPU (gloo, tiny sizes)")
    parser.add_argument("--layers", type=int, default=2, help="random: decoder layers of the Qwen3-8B-shaped model")
    parser.add_argument("--timeout", type=float, default=0, help="random: seconds per atom.fit run (GPU default 240)")
    args = parser.parse_args()
    if args.model == "random":
        sys.exit(self_contained(args))
    args.out = args.out or str(ROOT / "benchmarks" / "results" / "gpu_check.json")
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
