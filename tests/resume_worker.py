"""SFT interrupted and resumed at another world size, for tests/test_fsdp.py:
``python tests/resume_worker.py OUT PHASE key=value ...``.

PHASE ``kill``: every rank signals itself SIGTERM during the first batch, so the stage saves ``last.ckpt`` after
one optimizer step and stops (as a scheduler's pre-emption does). PHASE ``resume``: the same command at the new
world size. Each rank writes the demonstrations it trained on (``seen_<phase>_rank<r>.json``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

from atom import pipeline
from atom.config import load_config
from atom.errors import Interrupted
from atom.train.sft import SFTModule


def main(out: Path, phase: str, overrides: list[str]) -> None:
    p = pipeline.build(load_config(None, [*overrides, f"run.out_dir={out}"]))
    seen: list[int] = []
    step = SFTModule.training_step

    def recorded(self, batch, batch_idx):
        for row in batch["input_ids"]:
            seen.append(int(re.search(r"fact number (\d+) is", p.tokenizer.decode(row)).group(1)))
        if phase == "kill":
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, batch, batch_idx)

    SFTModule.training_step = recorded
    try:
        pipeline.sft(pipeline.load_policy(p), p)
    except Interrupted:
        assert phase == "kill"
    (out / f"seen_{phase}_rank{p.rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
