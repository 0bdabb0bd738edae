"""Rewards: turning a completion into a number (DESIGN.md, layer ``rewards``).

Verifiers here: math answer equivalence (:class:`MathVerifier`, math-verify behind a killable
worker pool) and code tests run in a sandbox (:class:`CodeVerifier`, :func:`run_python`). Every
scorer returns a :class:`~reasonlab.types.RewardResult` whose status says whether the check itself
worked; a failed check is never a silent 0.
"""

from reasonlab.rewards.code import CodeVerifier, extract_code
from reasonlab.rewards.extract import extract_answer, extract_boxed, find_all_boxed, gsm8k_gold
from reasonlab.rewards.math import MathVerifier, MathVerifierConfig, answer_key
from reasonlab.rewards.sandbox import SandboxLimits, SandboxResult, run_python
from reasonlab.rewards.workers import Outcome, WorkerPool

__all__ = [
    "CodeVerifier",
    "MathVerifier",
    "MathVerifierConfig",
    "Outcome",
    "SandboxLimits",
    "SandboxResult",
    "WorkerPool",
    "answer_key",
    "extract_answer",
    "extract_boxed",
    "extract_code",
    "find_all_boxed",
    "gsm8k_gold",
    "run_python",
]
