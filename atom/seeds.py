"""``python -m atom.seeds SPEC.yaml [--out DIR]``: arms of an experiment over training seeds, paired per seed.

The spec (``atom.eval.seeds``) names a baseline and arms, each with one evaluation directory per seed. Prints a
table per seed (EM, exact McNemar against the baseline, invalid actions and cut-off turns per episode, gold facts
stored and retrieved, EM when every gold fact was stored and when not, whether the junk is not above the
baseline's) and the summary over seeds (EM mean and sd, seeds with a significant gain, a pooled Wilcoxon test on
the per-question gains averaged over seeds) and each arm's GRPO curves per seed (every reward term, first steps
-> last); ``--out`` also writes ``seeds.md`` and ``seeds.json`` (with the curves step by step) there.
"""

from __future__ import annotations

import json
from pathlib import Path

from atom.cli import entry_point
from atom.cli import parser as cli_parser
from atom.eval import seeds


@entry_point("atom.seeds")
def main(argv: list[str] | None = None) -> str:
    parser = cli_parser("python -m atom.seeds", __doc__)
    parser.add_argument("spec", help="YAML: method, baseline, arms (arm -> an eval directory per seed), seeds")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level per seed (default 0.05)")
    parser.add_argument("--out", help="folder for seeds.md and seeds.json")
    args = parser.parse_args(argv)
    spec = seeds.load_spec(args.spec)
    rows, summaries = seeds.compare(spec, alpha=args.alpha)
    table = seeds.curves(spec)
    text = seeds.markdown(spec, rows, summaries) + "\n" + seeds.curves_markdown(table)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "seeds.md").write_text(text)
        (out / "seeds.json").write_text(
            json.dumps({**seeds.as_json(rows, summaries), "curves": table}, indent=1) + "\n"
        )
        print(f"written to {out / 'seeds.md'} and {out / 'seeds.json'}")
    return text


if __name__ == "__main__":
    main()
