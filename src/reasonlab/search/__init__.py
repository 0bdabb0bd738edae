"""Search: spending inference compute to pick better answers, with the compute counted.

Strategies (one file each) share one interface, :class:`Strategy`::

    from reasonlab.search import make_strategy, make_scorer
    strategy = make_strategy("rebase", width=8, separator="\\n")
    result = strategy.search(example, policy, task, make_scorer("mc-rollout", k=4), budget=4096)
    result.text, result.extracted, result.compute.generated_tokens, result.tree.to_json()

==========  ===========================================================================  ======
name        strategy                                                                     scorer
==========  ===========================================================================  ======
greedy      greedy decoding, one solution (``greedy.py``)                                 no
sc          self-consistency: n samples, majority vote (``self_consistency.py``)         no
bon         best-of-N by the scorer, optional speculative rejection (``best_of_n.py``)   yes
wmv         weighted majority vote: scores summed per answer (``best_of_n.py``)          yes
beam        step-level beam search, N beams of width M (``beam.py``)                     yes
rebase      REBASE reward-balanced tree search (``rebase.py``)                           yes
mcts        Monte-Carlo tree search over steps, UCT/PUCT (``mcts.py``)                   yes
revise      sequential revision with the reflection prompt (``revision.py``)             if pick needs it
==========  ===========================================================================  ======

Scorers are in :mod:`reasonlab.search.scorers` (``SCORERS``, ``make_scorer``). Compute accounting,
the token budget, trees and results are in :mod:`reasonlab.search.base`. After a search,
:func:`annotate` marks which tree nodes are correct (for reports; strategies never see that).
"""

from __future__ import annotations

from typing import Any

from reasonlab.errors import UsageError
from reasonlab.search.base import (
    Candidate,
    Compute,
    Node,
    SearchContext,
    SearchResult,
    Strategy,
    Tree,
    annotate,
)
from reasonlab.search.beam import BeamConfig, BeamSearch
from reasonlab.search.best_of_n import (
    BestOfN,
    BestOfNConfig,
    WeightedMajorityVote,
    WeightedVoteConfig,
)
from reasonlab.search.greedy import Greedy, GreedyConfig
from reasonlab.search.mcts import MCTS, MCTSConfig
from reasonlab.search.rebase import Rebase, RebaseConfig, rebase_allocation
from reasonlab.search.revision import REFLECTION, Revision, RevisionConfig
from reasonlab.search.scorers import (
    SCORERS,
    OutcomeScorer,
    PRMScorer,
    ProcessScorer,
    ProcessRewardModel,
    Scorer,
    aggregate,
    as_scorer,
    make_scorer,
)
from reasonlab.search.self_consistency import SelfConsistency, SelfConsistencyConfig

STRATEGIES: dict[str, type[Strategy]] = {
    "greedy": Greedy,
    "sc": SelfConsistency,
    "bon": BestOfN,
    "wmv": WeightedMajorityVote,
    "beam": BeamSearch,
    "rebase": Rebase,
    "mcts": MCTS,
    "revise": Revision,
}


def make_strategy(name: str, **options: Any) -> Strategy:
    """A strategy by name with its config's fields as options (strings are converted to the field's type).

    Unknown names and options raise :class:`UsageError` naming what is known.
    """
    if name not in STRATEGIES:
        raise UsageError(f"unknown search strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name](**options)


__all__ = [
    "MCTS",
    "REFLECTION",
    "SCORERS",
    "STRATEGIES",
    "BeamConfig",
    "BeamSearch",
    "BestOfN",
    "BestOfNConfig",
    "Candidate",
    "Compute",
    "Greedy",
    "GreedyConfig",
    "MCTSConfig",
    "Node",
    "OutcomeScorer",
    "PRMScorer",
    "ProcessScorer",
    "ProcessRewardModel",
    "Rebase",
    "RebaseConfig",
    "Revision",
    "RevisionConfig",
    "Scorer",
    "SearchContext",
    "SearchResult",
    "SelfConsistency",
    "SelfConsistencyConfig",
    "Strategy",
    "Tree",
    "WeightedMajorityVote",
    "WeightedVoteConfig",
    "aggregate",
    "annotate",
    "as_scorer",
    "make_scorer",
    "make_strategy",
    "rebase_allocation",
]
