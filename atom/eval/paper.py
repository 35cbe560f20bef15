"""The AtomMem paper's published figures that atom's report puts beside its own, each with where it comes from.

Only figures known here are listed (from summaries of the paper and the figures of its released code). Per-cell
EM of the main table is not among them, so the report shows the paper's averages only. Reward curves are known by
their endpoints over about 100 GRPO steps; the report draws them as straight dashed segments, labelled as such.
"""

from __future__ import annotations

SOURCE = "AtomMem paper (Huo et al., arXiv 2601.08323), Qwen3-8B, as quoted by summaries of the paper"
SCORER = "exact match of the \\boxed{} answer (the release's rule scorer)"
GRID = "HotpotQA, 2WikiMultihopQA, MuSiQue x {200, 400, 800} documents"

# Average EM (%) over GRID, by paper row; keyed by (method, stage) of atom's rows that correspond.
AVERAGE_EM = {
    ("atommem", "rl"): ("AtomMem-RL", 64.0),
    ("memagent", ""): ("MemAgent", 61.7),
}

# Training reward (start, end, steps) by ablation variant: full agent, scratchpad only, storage only.
REWARD_CURVES = {
    "full": ("AtomMem (full)", 0.60, 0.68, 100),
    "no_storage": ("scratchpad only", 0.56, 0.65, 100),
    "no_scratchpad": ("storage only", 0.58, 0.62, 100),
}

# Operations per turn during RL (start, end), read off the release's figure.
OPS_PER_TURN = {"create": (3.0, 4.5), "read": (0.4, 0.2), "update": (0.2, 0.35), "delete": (0.02, 0.03)}
