"""REINFORCE++ (Hu 2025): critic-free policy gradient with batch-normalised advantages.

The advantage of a completion is its reward minus a baseline, normalised by the mean and std of the
whole batch (``losses.reinforce_pp_advantages``): ``reinforce_pp`` uses no per-prompt baseline,
``reinforce_pp_baseline`` subtracts each prompt's mean first (REINFORCE++-baseline), and
``reinforce`` is plain REINFORCE with the batch-mean baseline. The loop is GRPO's (``grpo.py``),
with PPO clipping; REINFORCE++ puts its KL penalty in the loss here (``beta``, ``kl_estimator``).

Run::

    reasonlab train reinforce --model tiny --task arith --max-steps 100
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from reasonlab.learn.grpo import GRPOConfig, main as _main


@dataclass(frozen=True)
class ReinforceConfig(GRPOConfig):
    """REINFORCE++: policy gradient with a baseline and batch-normalised advantages."""

    advantage: str = "reinforce_pp_baseline"
    """Advantage estimator: reinforce_pp, reinforce_pp_baseline (group mean first) or reinforce (batch mean)."""
    out: str = "runs/reinforce"
    """Run directory."""


def main(argv: list[str] | None = None) -> int:
    return _main(argv, ReinforceConfig, "reasonlab train reinforce")


if __name__ == "__main__":
    sys.exit(main())
