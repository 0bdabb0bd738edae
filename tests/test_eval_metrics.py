"""pass@k and maj@k against brute force and hand-computed values."""

import itertools
import random
from math import comb

import pytest

from reasonlab.evaluation.metrics import ks_for, maj_at_k, majority, pass_at_k, voting_keys


def brute_pass_at_k(outcomes: list[bool], k: int) -> float:
    subsets = list(itertools.combinations(range(len(outcomes)), k))
    return sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("seed", range(30))
def test_pass_at_k_matches_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 9)
    outcomes = [rng.random() < 0.4 for _ in range(n)]
    for k in range(1, n + 1):
        assert pass_at_k(n, sum(outcomes), k) == pytest.approx(brute_pass_at_k(outcomes, k), abs=1e-12)


def test_pass_at_k_closed_form_and_edges():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - comb(7, 5) / comb(10, 5))
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(200, 1, 200) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_majority_ties_go_to_first_and_none_never_votes():
    assert majority([None, "2", "3", "3", "2"]) == ("2", 2)
    assert majority([None, None]) == (None, 0)
    assert majority(["a"]) == ("a", 1)


def test_maj_at_k_uses_first_k_samples():
    keys = ["5", "7", "7", "5", "5"]
    correct = [True, False, False, True, True]
    assert maj_at_k(keys, correct, 1) is True
    assert maj_at_k(keys, correct, 3) is False   # 7 wins among the first three
    assert maj_at_k(keys, correct, 5) is True
    assert maj_at_k([None, None], [False, False], 2) is False


def test_cut_off_samples_vote_only_when_none_finished():
    # Two samples cut off at "answer: 10" (of 1000) outvote one finished 1000 unless cut-off samples stand aside.
    keys, correct = ["10", "10", "1000"], [False, False, True]
    assert maj_at_k(keys, correct, 3) is False                              # every sample votes
    assert maj_at_k(keys, correct, 3, [False, False, True]) is True         # only the finished one votes
    assert maj_at_k(keys, correct, 2, [False, False, True]) is False        # none of the first 2 finished: all vote
    assert voting_keys(keys, [False, False, True]) == [None, None, "1000"]
    assert voting_keys(keys, [False, False, False]) == keys
    assert voting_keys(keys, None) == keys


def test_ks_for():
    assert ks_for(1) == [1]
    assert ks_for(8) == [1, 2, 4, 8]
    assert ks_for(6) == [1, 2, 4, 6]


def test_summary_maj_at_k_leaves_out_cut_off_samples():
    from reasonlab.evaluation.harness import summarize

    def comp(status, finish):
        return {"status": status, "finish_reason": finish, "completion_tokens": 4, "prompt_tokens": 3}

    # Two cut-off samples agree on a wrong "10"; the one finished sample says the right "1000".
    rec = {"answer_keys": ["10", "10", "1000"],
           "completions": [comp("wrong", "length"), comp("wrong", "length"), comp("ok", "stop")]}
    summary = summarize([rec], 3, 1.0, 1.0)
    assert summary["maj@3"] == 1.0
    assert summary["maj@2"] == 0.0  # neither of the first two finished, so both vote
    assert summary["truncated_fraction"] == 2 / 3
