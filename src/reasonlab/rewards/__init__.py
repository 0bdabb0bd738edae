"""Rewards: turning a completion into a number (DESIGN.md, layer ``rewards``).

Verifiers here: math answer equivalence (:class:`MathVerifier`, math-verify behind a killable
worker pool) and code tests run in a sandbox (:class:`CodeVerifier`, :func:`run_python`). Every
scorer returns a :class:`~reasonlab.types.RewardResult` whose status says whether the check itself
worked; a failed check is never a silent 0.

Beyond verifiers:

- ``functions``: TRL-shaped reward functions (``f(prompts, completions, **columns)``), the format
  reward, the task verifier as a reward, and the weighted :class:`RewardSet` RL trainers score with;
- ``combinators``: weighted sums, ensembles, hierarchical levels, potential-based shaping, overlong
  and cosine length rewards, repetition penalties, reward normalisation;
- ``judges``: generative judges (pointwise 1-10, additive rubric, pairwise, yes/no probability,
  chain-of-thought judging) over any policy;
- ``probes``: the red-team completions no verifier may reward (``benchmarks/hacking_probes.py``).
"""

from reasonlab.rewards.code import CodeVerifier, extract_code
from reasonlab.rewards.combinators import ensemble, hierarchical, overlong_reward, weighted_sum
from reasonlab.rewards.extract import extract_answer, extract_boxed, find_all_boxed, gsm8k_gold
from reasonlab.rewards.math import MathVerifier, MathVerifierConfig, answer_key
from reasonlab.rewards.functions import RewardSet, TaskReward, format_reward
from reasonlab.rewards.sandbox import SandboxLimits, SandboxResult, run_python
from reasonlab.rewards.workers import Outcome, WorkerPool

__all__ = [
    "CodeVerifier",
    "MathVerifier",
    "MathVerifierConfig",
    "Outcome",
    "RewardSet",
    "TaskReward",
    "SandboxLimits",
    "SandboxResult",
    "WorkerPool",
    "answer_key",
    "ensemble",
    "format_reward",
    "hierarchical",
    "overlong_reward",
    "weighted_sum",
    "extract_answer",
    "extract_boxed",
    "extract_code",
    "find_all_boxed",
    "gsm8k_gold",
    "run_python",
]
