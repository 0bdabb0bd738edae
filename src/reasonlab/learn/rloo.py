"""RLOO: REINFORCE with the leave-one-out baseline (Ahmadian et al. 2024, "Back to Basics").

Each completion's baseline is the mean reward of the *other* completions of its prompt,
``A_i = r_i - mean_{j != i} r_j`` (``losses.rloo_advantages``): unbiased, no critic, no std scaling.
The paper's setting is on-policy with one update per batch, so the ratio is 1 and clipping never
binds; the loop is GRPO's (``grpo.py``), with this estimator and these defaults.

Run::

    reasonlab train rloo --config recipes/rloo-tiny-arith.yaml
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from reasonlab.learn.grpo import GRPOConfig, main as _main


@dataclass(frozen=True)
class RLOOConfig(GRPOConfig):
    """RLOO: policy gradient with the leave-one-out baseline over each prompt's completions."""

    advantage: str = "rloo"
    """Advantage estimator (rloo: reward minus the mean reward of the prompt's other completions)."""
    out: str = "runs/rloo"
    """Run directory."""


def main(argv: list[str] | None = None) -> int:
    return _main(argv, RLOOConfig, "reasonlab train rloo")


if __name__ == "__main__":
    sys.exit(main())
