"""Evaluation metrics over n samples per problem: pass@k (unbiased) and maj@k (majority vote).

pass@k follows Chen et al. 2021 ("Evaluating Large Language Models Trained on Code", eq. 1): with
``n`` samples of which ``c`` are correct, the probability that at least one of ``k`` samples drawn
without replacement is correct is ``1 - C(n-c, k) / C(n, k)``, computed as a stable product.

maj@k takes the answer most of the first ``k`` samples agree on (answers grouped by a key in which
equivalent answers coincide, e.g. ``1/2`` and ``0.5``); ties go to the answer seen first; samples
with no answer do not vote, and neither do samples cut off by the token limit unless none of the ``k``
finished (a cut-off "answer: 10" may be the start of "answer: 1000"; search's self-consistency votes
the same way). It is correct when a sample carrying the winning answer is correct.
"""

from __future__ import annotations

from collections import Counter
from typing import Hashable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples, ``c`` correct (Chen et al. 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    # 1 - prod_{i=n-c+1}^{n} (1 - k / i), the numerically stable form of 1 - C(n-c,k)/C(n,k).
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def majority(keys: Sequence[Hashable | None]) -> tuple[Hashable | None, int]:
    """The most common non-None key and its count; ties go to the key seen first. ``(None, 0)`` if none."""
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None, 0
    best = max(counts.values())
    for k in keys:  # first occurrence among the tied
        if k is not None and counts[k] == best:
            return k, best
    raise AssertionError("unreachable")


def voting_keys(keys: Sequence[Hashable | None], finished: Sequence[bool] | None) -> list[Hashable | None]:
    """``keys`` with those of unfinished samples blanked out, unless no sample finished (then all vote)."""
    if finished is None or not any(finished) or all(finished):
        return list(keys)
    return [k if f else None for k, f in zip(keys, finished)]


def maj_at_k(keys: Sequence[Hashable | None], correct: Sequence[bool], k: int,
             finished: Sequence[bool] | None = None) -> bool:
    """Whether the majority answer of the first ``k`` samples is correct; ``finished[i]`` says whether
    sample ``i`` ended on its own (not cut off by the token limit), see the module docstring."""
    keys = voting_keys(keys[:k], None if finished is None else finished[:k])
    correct = list(correct[:k])
    winner, _ = majority(keys)
    if winner is None:
        return False
    return any(c for key, c in zip(keys, correct) if key == winner)


def ks_for(n: int) -> list[int]:
    """The k values reported for n samples: powers of two below n, and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]
