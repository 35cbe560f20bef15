"""The environment: AtomMem episodes (the agent's POMDP over a chunk stream), their rules per protocol, the action
grammar, prompts, scoring and shaped rewards, the baselines as episodes, and the lockstep rollout engine that runs
any of them for any policy. Nothing here loads a model: a policy is anything with ``act(observations)``."""
