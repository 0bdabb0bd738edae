"""Reward combinators against hand-computed numbers (rewards/combinators.py)."""

import math

import pytest

from reasonlab.errors import UsageError
from reasonlab.rewards.combinators import (
    CosineLengthConfig,
    Level,
    RewardFunctionError,
    RunningMeanStd,
    batch_normalized,
    call_reward,
    cosine_length_reward,
    cosine_scaled,
    ensemble,
    hierarchical,
    hierarchical_of,
    mean_of,
    min_of,
    overlong_penalty,
    overlong_reward,
    potential_shaping,
    rank_normalize,
    rank_normalized,
    repetition_penalty,
    repetition_penalty_dense,
    repetition_rate,
    repetition_reward,
    running_normalized,
    shaped_step_rewards,
    vote_of,
    weighted_sum,
    weighted_sum_of,
    zscore,
)


# Reward functions in the TRL shape, reading a column so that the test controls the values.
def fmt(prompts, completions, fmt_v, **_):
    return list(fmt_v)


def acc(prompts, completions, acc_v, **_):
    return list(acc_v)


def eff(prompts, completions, eff_v, **_):
    return list(eff_v)


def approx(xs, ys, tol=1e-9):
    return len(xs) == len(ys) and all((x is None and y is None) or (x is not None and y is not None and abs(x - y) < tol)
                                      for x, y in zip(xs, ys))


# ---------------------------------------------------------------------------------------------- weighted sum

def test_weighted_sum_of_skips_none():
    assert weighted_sum_of([1.0, None, 0.5], [2.0, 3.0, 4.0]) == 4.0  # 2*1 + 4*0.5, the None adds nothing
    assert weighted_sum_of([None, None], [1.0, 1.0]) is None
    assert weighted_sum_of([0.0, -1.0], [1.0, 0.5]) == -0.5


def test_weighted_sum_wrapper_per_sample_and_name():
    f = weighted_sum([fmt, acc], [0.5, 2.0])
    out = f(["p"] * 3, ["a", "b", "c"], fmt_v=[1.0, None, None], acc_v=[1.0, 0.0, None])
    assert out == [2.5, 0.0, None]
    assert f.__name__ == "weighted_sum(fmt,acc)"
    named = weighted_sum({"format": fmt, "answer": acc})
    assert named(["p"], ["a"], fmt_v=[1.0], acc_v=[1.0]) == [2.0]


def test_weighted_sum_names_the_failing_function():
    def broken(prompts, completions, **_):
        raise KeyError("answer")

    f = weighted_sum([fmt, broken])
    with pytest.raises(RewardFunctionError, match="'broken' failed: KeyError"):
        f(["p"], ["a"], fmt_v=[1.0])
    with pytest.raises(UsageError, match="2 weights for 1"):
        weighted_sum([fmt], [1.0, 2.0])


def test_call_reward_rejects_wrong_length_and_nan():
    def short(prompts, completions, **_):
        return [1.0]

    def nan(prompts, completions, **_):
        return [float("nan"), 1.0]

    with pytest.raises(RewardFunctionError, match="'short' returned 1 values for 2 completions"):
        call_reward(short, ["p", "q"], ["a", "b"])
    with pytest.raises(RewardFunctionError, match="'nan' returned nan for completion 0"):
        call_reward(nan, ["p", "q"], ["a", "b"])


# ---------------------------------------------------------------------------------------------- ensembles

def test_ensemble_functions():
    assert mean_of([1.0, 0.0, None, 0.5]) == 0.5
    assert min_of([1.0, 0.0, None, 0.5]) == 0.0
    assert vote_of([0.6, 0.4, 0.9]) == 1.0      # 2 of 3 above 0.5
    assert vote_of([0.6, 0.4]) == 0.0           # a tie is no majority
    assert vote_of([0.5]) == 0.0                # strictly above the threshold
    assert vote_of([0.3, 0.35, 0.1], threshold=0.2) == 1.0
    assert mean_of([None]) is None and min_of([None]) is None and vote_of([None]) is None


def test_ensemble_wrapper():
    cols = dict(fmt_v=[1.0, 0.2, None], acc_v=[0.0, 0.4, None], eff_v=[1.0, 1.0, None])
    assert ensemble([fmt, acc, eff], "mean")(["p"] * 3, ["a"] * 3, **cols) == pytest.approx([2 / 3, 1.6 / 3, None])
    assert ensemble([fmt, acc, eff], "min")(["p"] * 3, ["a"] * 3, **cols) == [0.0, 0.2, None]
    assert ensemble([fmt, acc, eff], "vote")(["p"] * 3, ["a"] * 3, **cols) == [1.0, 0.0, None]
    with pytest.raises(UsageError, match="unknown ensemble 'max'"):
        ensemble([fmt], "max")


# ---------------------------------------------------------------------------------------------- hierarchical

def test_hierarchical_of_hand_computed():
    w, t = [0.1, 0.2, 0.5, 0.2], [0.5] * 4
    assert hierarchical_of([1, 1, 1, 1], w, t) == pytest.approx(1.0)
    # The result level fails: it adds its own 0, and efficiency above it does not count.
    assert hierarchical_of([1, 1, 0, 1], w, t) == pytest.approx(0.3)
    # Format fails with a partial 0.4: only that counts.
    assert hierarchical_of([0.4, 1, 1, 1], [1, 1, 1, 1], t) == pytest.approx(0.4)
    # A level that does not apply (None) neither adds nor blocks; efficiency's partial value counts.
    assert hierarchical_of([1, None, 1, 0.3], [1, 2, 3, 4], t) == pytest.approx(5.2)
    assert hierarchical_of([None, None], [1, 1], [0.5, 0.5]) is None
    # Thresholds are inclusive.
    assert hierarchical_of([0.5, 1.0], [1, 1], [0.5, 0.5]) == pytest.approx(1.5)


def test_hierarchical_wrapper():
    f = hierarchical([Level("format", fmt, 0.5), Level("answer", acc, 1.0), Level("eff", eff, 0.25)])
    out = f(["p"] * 3, ["a"] * 3, fmt_v=[1.0, 0.0, 1.0], acc_v=[1.0, 1.0, 0.0], eff_v=[1.0, 1.0, 1.0])
    assert out == [1.75, 0.0, 0.5]
    assert f.__name__ == "hierarchical(format>answer>eff)"


# ---------------------------------------------------------------------------------------------- shaping

def test_potential_shaping_hand_computed_and_telescoping():
    phi, gamma = [0.5, 0.7, 0.2, 0.9], 0.9
    F = potential_shaping(phi, gamma, terminal_zero=False)
    assert F == pytest.approx([0.9 * 0.7 - 0.5, 0.9 * 0.2 - 0.7, 0.9 * 0.9 - 0.2])
    # sum_t gamma^t F_t = gamma^T Phi(s_T) - Phi(s_0)
    assert sum(gamma**t * f for t, f in enumerate(F)) == pytest.approx(gamma**3 * 0.9 - 0.5)
    F0 = potential_shaping(phi, gamma)  # terminal potential taken as 0
    assert F0[-1] == pytest.approx(-0.2)
    assert sum(gamma**t * f for t, f in enumerate(F0)) == pytest.approx(-0.5)
    assert potential_shaping([0.0, 1.0], 1.0, rewards=[2.0], terminal_zero=False) == [3.0]
    with pytest.raises(ValueError, match="2 rewards for 1 steps"):
        potential_shaping([0.0, 1.0], rewards=[1.0, 1.0])


def test_shaped_step_rewards_uses_phi():
    states = ["", "a", "ab"]
    assert shaped_step_rewards(states, lambda s: len(s) / 2, gamma=1.0, terminal_zero=False) == [0.5, 0.5]


# ---------------------------------------------------------------------------------------------- length

def test_overlong_penalty_dapo():
    # L_max = 100, L_cache = 20: free up to 80 tokens, linear to -1 at 100, -1 beyond.
    assert overlong_penalty(80, 100, 20) == 0.0
    assert overlong_penalty(90, 100, 20) == pytest.approx(-0.5)
    assert overlong_penalty(100, 100, 20) == pytest.approx(-1.0)
    assert overlong_penalty(5000, 100, 20) == -1.0
    with pytest.raises(UsageError):
        overlong_penalty(1, 10, 20)


def test_overlong_reward_reads_completion_ids_or_counter():
    f = overlong_reward(100, 20)
    assert f(["p", "p"], ["x", "y"], completion_ids=[[0] * 85, [0] * 10]) == [pytest.approx(-0.25), 0.0]
    with pytest.raises(UsageError, match="needs token lengths"):
        f(["p"], ["x"])
    with pytest.raises(UsageError, match="reward function 'overlong_reward': overlong_reward needs token lengths"):
        weighted_sum([f])(["p"], ["x"])  # inside a combinator it stays a UsageError, with the name
    g = overlong_reward(10, 5, count_tokens=lambda s: len(s.split()))
    assert g(["p"], ["w " * 8]) == [pytest.approx(-0.6)]


def test_cosine_scaled_hand_computed():
    cfg = CosineLengthConfig(max_length=100)
    assert cosine_scaled(0, True, cfg) == pytest.approx(2.0)
    assert cosine_scaled(50, True, cfg) == pytest.approx(1.5)
    assert cosine_scaled(25, True, cfg) == pytest.approx(1 + (1 + math.cos(math.pi / 4)) / 2)
    assert cosine_scaled(0, False, cfg) == pytest.approx(-10.0)
    assert cosine_scaled(50, False, cfg) == pytest.approx(-5.0)
    assert cosine_scaled(100, True, cfg) == -10.0 and cosine_scaled(150, False, cfg) == -10.0


def test_cosine_length_reward_wraps_correctness():
    cfg = CosineLengthConfig(max_length=10, correct_short=1.0, correct_long=0.5, wrong_short=-1.0, wrong_long=0.0,
                             exceed=-2.0)
    f = cosine_length_reward(acc, cfg)
    out = f(["p"] * 4, ["a"] * 4, acc_v=[1.0, 0.0, None, 1.0], completion_ids=[[0] * 5, [0] * 5, [0] * 5, [0] * 12])
    assert out == [pytest.approx(0.75), pytest.approx(-0.5), None, -2.0]
    assert f.__name__ == "cosine_length(acc)"


# ---------------------------------------------------------------------------------------------- repetition

def test_repetition_rate_and_penalty():
    words = "a b a b a b".split()
    assert repetition_rate(words, 2) == pytest.approx(1 - 2 / 5)  # ab ba ab ba ab: 2 unique of 5
    assert repetition_penalty(words, 2, -1.0) == pytest.approx(-0.6)
    assert repetition_rate(["a"], 2) == 0.0
    assert repetition_penalty_dense([1, 2, 1, 2, 3], 2, -0.05) == [0.0, 0.0, -0.05, -0.05, 0.0]
    with pytest.raises(UsageError):
        repetition_penalty(words, 2, 0.5)


def test_repetition_reward_words_and_tokens():
    f = repetition_reward(ngram_size=2, max_penalty=-1.0)
    assert f(["p", "p"], ["A b a B a b", "one two three"]) == [pytest.approx(-0.6), 0.0]
    g = repetition_reward(ngram_size=1, max_penalty=-0.5, on="tokens")
    assert g(["p"], ["x"], completion_ids=[[7, 7, 7, 8]]) == [pytest.approx(-0.5 * 0.5)]


# ---------------------------------------------------------------------------------------------- normalization

def test_zscore():
    s = math.sqrt(2 / 3)
    assert approx(zscore([1.0, 2.0, 3.0, None], eps=0.0), [-1 / s, 0.0, 1 / s, None])
    assert zscore([5.0, 5.0]) == [0.0, 0.0]
    assert zscore([None]) == [None]


def test_running_mean_std_welford_and_state():
    rms = RunningMeanStd(eps=0.0)
    rms.update([1.0, 2.0, None, 3.0, 4.0])
    assert rms.count == 4 and rms.mean == pytest.approx(2.5) and rms.var == pytest.approx(1.25)
    restored = RunningMeanStd()
    restored.load_state_dict(rms.state_dict())
    restored.update([5.0])
    assert restored.mean == pytest.approx(3.0) and restored.var == pytest.approx(2.0)  # same as [1..5] at once
    assert restored.normalize([3.0, 5.0], update=False) == [pytest.approx(0.0), pytest.approx(2 / math.sqrt(2.0))]
    with pytest.raises(UsageError, match="lacks"):
        RunningMeanStd().load_state_dict({"count": 1})


def test_rank_normalize_ties_and_centered():
    assert rank_normalize([10.0, 30.0, 20.0, 20.0, None]) == [0.0, 1.0, 0.5, 0.5, None]
    assert rank_normalize([10.0, 30.0, 20.0, 20.0, None], centered=True) == [-0.5, 0.5, 0.0, 0.0, None]
    assert rank_normalize([7.0]) == [0.5]


def test_normalizing_wrappers():
    assert batch_normalized(acc, eps=0.0)(["p"] * 2, ["a"] * 2, acc_v=[0.0, 2.0]) == [-1.0, 1.0]
    assert rank_normalized(acc)(["p"] * 3, ["a"] * 3, acc_v=[3.0, 1.0, 2.0]) == [1.0, 0.0, 0.5]
    f = running_normalized(acc)
    f(["p"] * 2, ["a"] * 2, acc_v=[0.0, 2.0])
    out = f(["p"], ["a"], acc_v=[1.0])  # running stats now over 0, 2, 1: mean 1
    assert out == [pytest.approx(0.0)] and f.stats.count == 3
