"""``python -m atom.collect CONFIG --out FILE [key=value ...]``: collect trajectories for SFT with any policy.

The paper's cold start distils a stronger policy: run it over the training samples, keep the trajectories whose
reward is at least ``sft.min_reward``, train on their turns. ``--policy oracle`` uses the gold-fact teacher;
``--policy model`` uses ``model.name_or_path`` (e.g. a large hub model, on the GPU when one exists; or the server of
``model.backend=openai``) with ``sampling.*``; ``--policy openai`` uses the served teacher of ``sft.teacher``
(T = 0.6, its own max tokens and strategy text, as the paper's teacher). With ``eval.judge`` set every trajectory
is also judged. The JSONL is appended batch by batch and a second run resumes it (``atom.train.collection``); it is
what ``sft.demos`` reads (filtering happens when reading, so one file serves several thresholds).
"""

from __future__ import annotations

import dataclasses
import logging

from atom import jsonl, pipeline
from atom.cli import entry_point
from atom.cli import parser as cli_parser
from atom.config import ConfigError, load_config
from atom.eval.judge import build_judge
from atom.policy.factory import make_policy
from atom.train.collection import collect


@entry_point("atom.collect")
def main(argv: list[str] | None = None) -> None:
    parser = cli_parser("python -m atom.collect", __doc__)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--out", required=True, help="trajectories JSONL to append to (a rerun resumes it)")
    parser.add_argument("--policy", choices=("oracle", "model", "openai"), default="oracle")
    parser.add_argument("--split", choices=("train", "val"), default="train")
    parser.add_argument("--repeats", type=int, default=1, help="rollouts per sample (sampling with a model)")
    parser.add_argument("--batch", type=int, default=8, help="samples rolled out between two appends to --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.overrides)
    served = args.policy == "openai" or (args.policy == "model" and cfg.model.backend == "openai")
    p = pipeline.build(cfg)
    samples = p.data.require(args.split, "atom.collect")
    if args.policy == "oracle":
        policy = make_policy("oracle")
    elif args.policy == "openai":
        t = cfg.sft.teacher
        if not t.server.base_url:
            raise ConfigError("--policy openai needs sft.teacher.server.base_url (the teacher's .../v1 endpoint)")
        sampling = dataclasses.replace(cfg.sampling, temperature=t.temperature, top_p=t.top_p,
                                       max_new_tokens=t.max_new_tokens)  # fmt: skip
        policy = make_policy("served", sampling, p.tokenizer, server=t.server, strategy=t.strategy,
                             what="sft.teacher.server")  # fmt: skip
    elif served:
        policy = make_policy("served", cfg.sampling, p.tokenizer, p.max_prompt_tokens(None), server=cfg.model.server)
    else:
        model = pipeline.load_policy(p)
        if cfg.model.quantization == "none":
            model.to(p.device)  # this process's GPU when there is one; a quantized model stays as loaded
        policy = make_policy("hf", cfg.sampling, p.tokenizer, p.max_prompt_tokens(model), model=model,
                             autocast=p.autocast)  # fmt: skip
    judge = build_judge(cfg.eval.judge)
    engine = p.engine(policy)
    counts = collect(lambda s, r: engine.run(s, repeats=r), samples, args.out, args.repeats, args.batch, judge)
    rows = list(jsonl.read(args.out, what="a trajectory record"))
    key = "judge_reward" if judge is not None else "reward"
    kept = sum((r.get(key) if r.get(key) is not None else -1) >= cfg.sft.min_reward for r in rows)
    mean = sum(r["reward"] for r in rows) / max(len(rows), 1)
    print(
        f"wrote {counts['written']} trajectories to {args.out} ({counts['skipped_samples']} samples already there, "
        f"{len(rows)} in the file): mean reward {mean:.3f}, {kept} with {key} >= {cfg.sft.min_reward}"
    )
    if hasattr(policy, "usage"):
        print(f"served policy: {dataclasses.asdict(policy.usage)}")
        policy.close()
    if judge is not None:
        print(f"judge: {judge.calls} questions judged, {judge.failed} failed after retries (kept out of the filter)")
        judge.close()


if __name__ == "__main__":
    main()
