"""``python -m atom.collect CONFIG --out FILE [key=value ...]``: collect trajectories for SFT with any policy.

The paper's cold start distils a stronger policy: run it over the training samples, keep the trajectories whose
reward is at least ``sft.min_reward``, train on their turns. ``--policy oracle`` uses the gold-fact teacher;
``--policy model`` uses ``model.name_or_path`` (e.g. a large hub model, on the GPU when one exists) with
``sampling.*``.
The JSONL written here is what ``sft.demos`` reads (filtering happens when reading, so one file serves several
thresholds).
"""

from __future__ import annotations

import logging

from atom import pipeline
from atom.agent.hf_policy import HFPolicy
from atom.agent.oracle import OraclePolicy
from atom.cli import entry_point
from atom.cli import parser as cli_parser
from atom.config import load_config
from atom.train.sft import write_trajectories


@entry_point("atom.collect")
def main(argv: list[str] | None = None) -> None:
    parser = cli_parser("python -m atom.collect", __doc__)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--out", required=True, help="trajectories JSONL to write")
    parser.add_argument("--policy", choices=("oracle", "model"), default="oracle")
    parser.add_argument("--split", choices=("train", "val"), default="train")
    parser.add_argument("--repeats", type=int, default=1, help="rollouts per sample (sampling with a model)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.overrides)
    p = pipeline.build(cfg)
    samples = p.data.require(args.split, "atom.collect")
    if args.policy == "oracle":
        policy = OraclePolicy()
    else:
        model = pipeline.load_policy(p)
        if cfg.model.quantization == "none":
            model.to(p.device)  # this process's GPU when there is one; a quantized model stays as loaded
        policy = HFPolicy(model, p.tokenizer, cfg.sampling, max_prompt_tokens=p.max_prompt_tokens(model))
    trajectories = p.engine(policy).run(samples, repeats=args.repeats)
    n = write_trajectories(args.out, trajectories)
    kept = sum(t.reward >= cfg.sft.min_reward for t in trajectories)
    mean = sum(t.reward for t in trajectories) / max(n, 1)
    print(f"wrote {n} trajectories to {args.out}: mean reward {mean:.3f}, {kept} with reward >= {cfg.sft.min_reward}")


if __name__ == "__main__":
    main()
