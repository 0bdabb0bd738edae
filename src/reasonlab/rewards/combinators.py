"""Reward combinators: small functions that turn reward functions into new reward functions.

Every reward function here has the TRL shape shared with the RL trainers::

    f(prompts: list, completions: list, **columns) -> list[float | None]

``columns`` carry per-sample lists (``answer=[...]``, ``example=[Example, ...]``, TRL's
``completion_ids=[[...], ...]``); ``None`` means "this function does not apply to this sample". Each
combinator is a pure numeric function on one sample's values (tested against hand-computed numbers)
plus a wrapper that lifts it to the TRL shape:

==========================  ===============================================  =========================
combinator                  formula (per sample)                             TRL-shaped wrapper
==========================  ===============================================  =========================
weighted sum                ``sum_i w_i v_i`` over the ``v_i`` not None      :func:`weighted_sum`
ensemble                    mean / min / majority vote of ``v_i > t``        :func:`ensemble`
hierarchical levels (AHRO)  ``sum_k w_k v_k [every level j < k passed]``     :func:`hierarchical`
potential-based shaping     ``F_t = gamma Phi(s_{t+1}) - Phi(s_t)``          :func:`shaped_step_rewards`
overlong punishment (DAPO)  0 / linear to -1 over the cache window / -1      :func:`overlong_reward`
cosine length (Yeo et al.)  cosine from ``r_0`` to ``r_L`` by correctness    :func:`cosine_length_reward`
repetition penalty          ``max_penalty * (1 - unique/total n-grams)``     :func:`repetition_reward`
normalization               z-score per batch, running (Welford), rank       :func:`batch_normalized`, ...
==========================  ===============================================  =========================

A function that raises is reported with its name (:class:`RewardFunctionError`), and so is one
that returns the wrong number of values or a NaN: a broken reward is never a silent 0.

References: DAPO (Yu et al. 2025, eq. 13) for the overlong punishment; Yeo et al. 2025,
"Demystifying Long Chain-of-Thought Reasoning in LLMs" (eq. 1 and Sec. 4) for the cosine length
reward and the n-gram repetition penalty; Ng, Harada & Russell 1999 for potential-based shaping;
Welford 1962 for the running variance.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

from reasonlab.errors import ReasonlabError, UsageError

__all__ = [
    "RewardFn", "RewardFunctionError", "reward_name", "call_reward", "completion_text",
    "weighted_sum_of", "weighted_sum",
    "mean_of", "min_of", "vote_of", "ENSEMBLES", "ensemble",
    "Level", "hierarchical_of", "hierarchical",
    "potential_shaping", "shaped_step_rewards",
    "overlong_penalty", "overlong_reward",
    "CosineLengthConfig", "cosine_scaled", "cosine_length_reward",
    "ngrams", "repetition_rate", "repetition_penalty", "repetition_penalty_dense", "repetition_reward",
    "zscore", "RunningMeanStd", "rank_normalize", "batch_normalized", "running_normalized", "rank_normalized",
]

#: A reward function in the TRL shape (see the module docstring).
RewardFn = Callable[..., list[Union[float, None]]]


class RewardFunctionError(ReasonlabError):
    """A reward function raised, or returned something that is not one reward per completion."""


# ----------------------------------------------------------------------------------------------
# Calling reward functions safely
# ----------------------------------------------------------------------------------------------

def reward_name(fn: Callable) -> str:
    """The name a reward function is reported under: its ``__name__``, as TRL logs it."""
    return getattr(fn, "__name__", None) or type(fn).__name__


def completion_text(completion: Any) -> str:
    """The text of a completion as TRL passes it: a string, or chat messages (the last one's content)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise UsageError(f"a completion must be text or chat messages, got {type(completion).__name__}")


def call_reward(fn: RewardFn, prompts: Sequence, completions: Sequence, **columns: Any) -> list[float | None]:
    """Call ``fn`` and check what it returns; any failure is raised naming ``fn``.

    Returns one ``float`` or ``None`` per completion. Raises :class:`RewardFunctionError` when
    ``fn`` raises, returns the wrong number of values, or returns something that is not a finite
    number or ``None``.
    """
    name = reward_name(fn)
    try:
        out = fn(prompts, completions, **columns)
    except RewardFunctionError:
        raise  # already names the innermost failing function
    except UsageError as e:  # a setup problem the user can fix: keep its category, add the name
        raise UsageError(f"reward function {name!r}: {e}") from e
    except Exception as e:
        raise RewardFunctionError(f"reward function {name!r} failed: {type(e).__name__}: {e}") from e
    if out is None or len(out) != len(completions):
        got = "None" if out is None else f"{len(out)} values"
        raise RewardFunctionError(f"reward function {name!r} returned {got} for {len(completions)} completions")
    values: list[float | None] = []
    for i, v in enumerate(out):
        if v is None:
            values.append(None)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise RewardFunctionError(f"reward function {name!r} returned {v!r} for completion {i}: "
                                      "expected a finite number or None")
        values.append(float(v))
    return values


def _named(fn: RewardFn, name: str) -> RewardFn:
    fn.__name__ = name
    fn.__qualname__ = name
    return fn


def _as_named(funcs: Sequence[RewardFn] | Mapping[str, RewardFn]) -> list[tuple[str, RewardFn]]:
    pairs = list(funcs.items()) if isinstance(funcs, Mapping) else [(reward_name(f), f) for f in funcs]
    if not pairs:
        raise UsageError("a reward combinator needs at least one reward function")
    return pairs


def _columns_of(pairs: list[tuple[str, RewardFn]], prompts, completions, columns) -> list[list[float | None]]:
    """Per sample, the values of every function: ``rows[sample][function]``."""
    per_fn = []
    for name, fn in pairs:
        try:
            per_fn.append(call_reward(fn, prompts, completions, **columns))
        except RewardFunctionError as e:
            # A mapping may name a function differently from its __name__: say both.
            if name != reward_name(fn):
                raise RewardFunctionError(f"[{name}] {e}") from e
            raise
    return [list(row) for row in zip(*per_fn)] if per_fn else []


# ----------------------------------------------------------------------------------------------
# Weighted sum
# ----------------------------------------------------------------------------------------------

def weighted_sum_of(values: Sequence[float | None], weights: Sequence[float]) -> float | None:
    """``sum_i w_i * v_i`` over the functions that apply (``v_i`` not None); None if none applies.

    Weights are not renormalised over the functions that apply: a skipped function simply adds
    nothing (e.g. a format reward that does not apply to a plain-text task).
    """
    if len(values) != len(weights):
        raise ValueError(f"{len(values)} values for {len(weights)} weights")
    present = [(w, v) for w, v in zip(weights, values) if v is not None]
    return sum(w * v for w, v in present) if present else None


def weighted_sum(funcs: Sequence[RewardFn] | Mapping[str, RewardFn], weights: Sequence[float] | None = None) -> RewardFn:
    """A reward function returning :func:`weighted_sum_of` of ``funcs`` (weights default to 1)."""
    pairs = _as_named(funcs)
    w = [1.0] * len(pairs) if weights is None else [float(x) for x in weights]
    if len(w) != len(pairs):
        raise UsageError(f"weighted_sum got {len(w)} weights for {len(pairs)} reward functions")

    def reward(prompts, completions, **columns):
        return [weighted_sum_of(row, w) for row in _columns_of(pairs, prompts, completions, columns)]

    return _named(reward, "weighted_sum(" + ",".join(n for n, _ in pairs) + ")")


# ----------------------------------------------------------------------------------------------
# Ensembles: one small function per way of combining, picked by name from ENSEMBLES
# ----------------------------------------------------------------------------------------------

def mean_of(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are not None; None if all are."""
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def min_of(values: Sequence[float | None]) -> float | None:
    """Minimum of the values that are not None (the most pessimistic member); None if all are."""
    xs = [v for v in values if v is not None]
    return min(xs) if xs else None


def vote_of(values: Sequence[float | None], threshold: float = 0.5) -> float | None:
    """Majority vote: 1.0 if more than half of the non-None values are ``> threshold``, else 0.0.

    A tie is not a majority, so it gives 0.0 (an ensemble should not reward what half its members
    reject). None if every value is None.
    """
    xs = [v for v in values if v is not None]
    if not xs:
        return None
    yes = sum(1 for v in xs if v > threshold)
    return 1.0 if 2 * yes > len(xs) else 0.0


#: How an ensemble combines its members' values, by name.
ENSEMBLES: dict[str, Callable[..., float | None]] = {"mean": mean_of, "min": min_of, "vote": vote_of}


def ensemble(funcs: Sequence[RewardFn] | Mapping[str, RewardFn], how: str = "mean", threshold: float = 0.5) -> RewardFn:
    """A reward function combining ``funcs`` per sample with ``ENSEMBLES[how]``.

    ``threshold`` is used by ``vote`` only (a member votes yes when its value is ``> threshold``).
    """
    if how not in ENSEMBLES:
        raise UsageError(f"unknown ensemble {how!r}; choose one of: {', '.join(ENSEMBLES)}")
    pairs = _as_named(funcs)
    combine = functools.partial(vote_of, threshold=threshold) if how == "vote" else ENSEMBLES[how]

    def reward(prompts, completions, **columns):
        return [combine(row) for row in _columns_of(pairs, prompts, completions, columns)]

    return _named(reward, f"ensemble_{how}(" + ",".join(n for n, _ in pairs) + ")")


# ----------------------------------------------------------------------------------------------
# Hierarchical levels (AHRO: format -> reasoning -> result -> efficiency)
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Level:
    """One level of a hierarchical reward, lowest first."""

    name: str
    """Shown in errors and in the combined function's name."""
    fn: RewardFn
    """The level's reward function (TRL shape)."""
    weight: float = 1.0
    """Multiplies the level's value when it counts."""
    threshold: float = 0.5
    """The level *passes* when its value is ``>= threshold``; the levels above count only then."""


def hierarchical_of(values: Sequence[float | None], weights: Sequence[float], thresholds: Sequence[float]) -> float | None:
    """Levelled reward: level ``k`` counts only when every level below it passes.

    With ``v_k`` the value of level ``k`` (lowest first), ``w_k`` its weight and ``t_k`` its
    threshold::

        total = sum_k  w_k * v_k * [v_j >= t_j for every applicable level j < k]

    So the first failing level still contributes its own (partial) value, and nothing above it
    counts: a well-formatted wrong answer earns the format level only; an efficient but
    unformatted one earns nothing for efficiency. A level whose value is ``None`` does not apply to
    this sample: it adds nothing and blocks nothing. ``None`` if no level applies.
    """
    if not len(values) == len(weights) == len(thresholds):
        raise ValueError(f"{len(values)} values, {len(weights)} weights, {len(thresholds)} thresholds")
    if all(v is None for v in values):
        return None
    total = 0.0
    for v, w, t in zip(values, weights, thresholds):
        if v is None:
            continue
        total += w * v
        if v < t:
            break  # this level failed: the levels above it do not count
    return total


def hierarchical(levels: Sequence[Level]) -> RewardFn:
    """A reward function returning :func:`hierarchical_of` over ``levels`` (lowest first)."""
    if not levels:
        raise UsageError("hierarchical needs at least one level")
    pairs = [(lv.name, lv.fn) for lv in levels]
    weights = [lv.weight for lv in levels]
    thresholds = [lv.threshold for lv in levels]

    def reward(prompts, completions, **columns):
        rows = _columns_of(pairs, prompts, completions, columns)
        return [hierarchical_of(row, weights, thresholds) for row in rows]

    return _named(reward, "hierarchical(" + ">".join(lv.name for lv in levels) + ")")


# ----------------------------------------------------------------------------------------------
# Potential-based shaping
# ----------------------------------------------------------------------------------------------

def potential_shaping(potentials: Sequence[float], gamma: float = 1.0, rewards: Sequence[float] | None = None,
                      terminal_zero: bool = True) -> list[float]:
    """Per-step shaped rewards ``r_t + F_t`` with ``F_t = gamma * Phi(s_{t+1}) - Phi(s_t)``.

    ``potentials``: ``Phi(s_0), ..., Phi(s_T)`` for the ``T + 1`` states of a trajectory of ``T``
    steps (e.g. a PRM's score of each step prefix, ``s_0`` the empty prefix). ``rewards``: the
    ``T`` base rewards (zeros if omitted). Returns ``T`` values.

    The shaping terms telescope: ``sum_t gamma^t F_t = gamma^T Phi(s_T) - Phi(s_0)``, so they move
    credit between steps without changing which trajectories are best, provided the terminal
    potential is the same for every trajectory (Ng et al. 1999). ``terminal_zero=True`` (default)
    enforces that by taking ``Phi(s_T) = 0``; pass ``False`` to keep the last state's potential
    (then the sum of shaping terms also rewards where the trajectory ended).
    """
    if len(potentials) < 1:
        raise ValueError("potential_shaping needs at least one state")
    steps = len(potentials) - 1
    if rewards is not None and len(rewards) != steps:
        raise ValueError(f"{len(rewards)} rewards for {steps} steps ({len(potentials)} states)")
    phi = [float(p) for p in potentials]
    if terminal_zero:
        phi[-1] = 0.0
    base = [0.0] * steps if rewards is None else [float(r) for r in rewards]
    return [base[t] + gamma * phi[t + 1] - phi[t] for t in range(steps)]


def shaped_step_rewards(states: Sequence[Any], phi: Callable[[Any], float], gamma: float = 1.0,
                        rewards: Sequence[float] | None = None, terminal_zero: bool = True) -> list[float]:
    """:func:`potential_shaping` with ``Phi`` computed by ``phi(state)`` for each of ``states``."""
    return potential_shaping([phi(s) for s in states], gamma, rewards, terminal_zero)


# ----------------------------------------------------------------------------------------------
# Length: DAPO overlong punishment, cosine-scaled length reward
# ----------------------------------------------------------------------------------------------

def overlong_penalty(length: int, max_length: int, cache_length: int) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), on a token count.

    ``0`` if ``length <= max_length - cache_length``; ``((max_length - cache_length) - length) /
    cache_length`` inside the cache window (linear from 0 down to -1); ``-1`` beyond ``max_length``.
    It is added to the correctness reward, so an over-long correct answer nets 0.
    """
    if not 0 < cache_length <= max_length:
        raise UsageError(f"overlong penalty needs 0 < cache_length <= max_length, got {cache_length}, {max_length}")
    expected = max_length - cache_length
    if length <= expected:
        return 0.0
    if length <= max_length:
        return (expected - length) / cache_length
    return -1.0


def _token_lengths(completions: Sequence, columns: Mapping[str, Any],
                   count_tokens: Callable[[str], int] | None, who: str) -> list[int]:
    ids = columns.get("completion_ids")
    if ids is not None:  # TRL passes the sampled token ids; token-in/token-out, no re-tokenizing
        return [len(x) for x in ids]
    if count_tokens is not None:
        return [int(count_tokens(completion_text(c))) for c in completions]
    raise UsageError(f"{who} needs token lengths: pass completion_ids=[...] (TRL does) or build it with count_tokens=")


def overlong_reward(max_length: int, cache_length: int, count_tokens: Callable[[str], int] | None = None) -> RewardFn:
    """A reward function returning :func:`overlong_penalty` of each completion's token count.

    Token counts come from the ``completion_ids`` column when present, else from ``count_tokens(text)``.
    """
    overlong_penalty(0, max_length, cache_length)  # validate the settings now, not at the first batch

    def reward(prompts, completions, **columns):
        lengths = _token_lengths(completions, columns, count_tokens, "overlong_reward")
        return [overlong_penalty(n, max_length, cache_length) for n in lengths]

    return _named(reward, "overlong_reward")


@dataclass(frozen=True)
class CosineLengthConfig:
    """Cosine-scaled length reward; defaults are the values Yeo et al. 2025 train with (Sec. 4)."""

    max_length: int
    """``L_max``: generated tokens at which the cosine reaches ``r_L``; at or beyond it, ``exceed``."""
    correct_short: float = 2.0
    """``r_0^c``: reward of a correct answer of length 0."""
    correct_long: float = 1.0
    """``r_L^c``: reward of a correct answer of length ``max_length`` (shorter correct is better)."""
    wrong_short: float = -10.0
    """``r_0^w``: reward of a wrong answer of length 0 (a short wrong answer is punished hardest)."""
    wrong_long: float = 0.0
    """``r_L^w``: reward of a wrong answer of length ``max_length`` (thinking longer when wrong is better)."""
    exceed: float = -10.0
    """``r_exceed``: reward of a completion of ``max_length`` tokens or more (cut off)."""

    def __post_init__(self) -> None:
        if self.max_length < 1:
            raise UsageError(f"cosine length reward needs max_length >= 1, got {self.max_length}")


def cosine_scaled(length: int, correct: bool, cfg: CosineLengthConfig) -> float:
    """Yeo et al. 2025, eq. 1: ``r_L + (r_0 - r_L) * (1 + cos(pi * t / L_max)) / 2``.

    ``t`` is the generated-token count; ``(r_0, r_L)`` are the correct or the wrong pair. A
    completion with ``t >= L_max`` gets ``r_exceed``: reaching the limit means it was cut off.
    """
    if length >= cfg.max_length:
        return cfg.exceed
    r0, rl = (cfg.correct_short, cfg.correct_long) if correct else (cfg.wrong_short, cfg.wrong_long)
    return rl + (r0 - rl) * (1.0 + math.cos(math.pi * length / cfg.max_length)) / 2.0


def cosine_length_reward(correctness: RewardFn, cfg: CosineLengthConfig, count_tokens: Callable[[str], int] | None = None,
                         correct_above: float = 0.5) -> RewardFn:
    """A reward function: :func:`cosine_scaled`, with correctness from ``correctness > correct_above``.

    It replaces the correctness reward (it is not added to it). Samples where ``correctness`` is
    None stay None.
    """
    name = reward_name(correctness)

    def reward(prompts, completions, **columns):
        verdicts = call_reward(correctness, prompts, completions, **columns)
        lengths = _token_lengths(completions, columns, count_tokens, "cosine_length_reward")
        return [None if v is None else cosine_scaled(n, v > correct_above, cfg) for v, n in zip(verdicts, lengths)]

    return _named(reward, f"cosine_length({name})")


# ----------------------------------------------------------------------------------------------
# Repetition
# ----------------------------------------------------------------------------------------------

def ngrams(tokens: Sequence[Any], n: int) -> list[tuple]:
    """The ``len(tokens) - n + 1`` consecutive n-grams of ``tokens`` (none if it is shorter than n)."""
    if n < 1:
        raise UsageError(f"n-gram size must be >= 1, got {n}")
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def repetition_rate(tokens: Sequence[Any], n: int) -> float:
    """``1 - unique n-grams / total n-grams``: 0 for no repeats, towards 1 for a loop; 0 if too short."""
    grams = ngrams(tokens, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def repetition_penalty(tokens: Sequence[Any], n: int, max_penalty: float) -> float:
    """Sequence-level penalty ``max_penalty * repetition_rate`` (Yeo et al. 2025; ``max_penalty <= 0``)."""
    if max_penalty > 0:
        raise UsageError(f"repetition max_penalty must be <= 0, got {max_penalty}")
    return max_penalty * repetition_rate(tokens, n)


def repetition_penalty_dense(tokens: Sequence[Any], n: int, penalty: float) -> list[float]:
    """Per-token penalty (Yeo et al.'s dense form): every token inside an n-gram seen before gets ``penalty``.

    Returns one value per token (0 for tokens in no repeated n-gram), for trainers that take
    per-token rewards.
    """
    if penalty > 0:
        raise UsageError(f"repetition penalty must be <= 0, got {penalty}")
    out = [0.0] * len(tokens)
    seen: set[tuple] = set()
    for start, gram in enumerate(ngrams(tokens, n)):
        if gram in seen:
            for i in range(start, start + n):
                out[i] = penalty
        seen.add(gram)
    return out


def repetition_reward(ngram_size: int = 3, max_penalty: float = -1.0, on: str = "words") -> RewardFn:
    """A reward function returning :func:`repetition_penalty` per completion.

    ``on="words"``: n-grams of the lower-cased whitespace-split text (as Yeo et al.'s sequence-level
    penalty); ``on="tokens"``: n-grams of the ``completion_ids`` column.
    """
    if on not in ("words", "tokens"):
        raise UsageError(f"repetition_reward counts 'words' or 'tokens', not {on!r}")
    repetition_penalty([], ngram_size, max_penalty)  # validate now

    def reward(prompts, completions, **columns):
        if on == "tokens":
            ids = columns.get("completion_ids")
            if ids is None:
                raise UsageError("repetition_reward(on='tokens') needs the completion_ids column")
            seqs = [list(x) for x in ids]
        else:
            seqs = [completion_text(c).lower().split() for c in completions]
        return [repetition_penalty(s, ngram_size, max_penalty) for s in seqs]

    return _named(reward, f"repetition_{on}{ngram_size}")


# ----------------------------------------------------------------------------------------------
# Normalization
# ----------------------------------------------------------------------------------------------

def zscore(values: Sequence[float | None], eps: float = 1e-6) -> list[float | None]:
    """Per-batch ``(v - mean) / (std + eps)`` over the non-None values (population std); None stays None."""
    xs = [v for v in values if v is not None]
    if not xs:
        return list(values)
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))
    return [None if v is None else (v - mean) / (std + eps) for v in values]


class RunningMeanStd:
    """Running mean and (population) variance by Welford's update, with a saveable state.

    For each new value ``x``: ``count += 1; delta = x - mean; mean += delta / count;
    M2 += delta * (x - mean)``; ``var = M2 / count``. Numerically stable, one pass, O(1) memory.
    """

    def __init__(self, eps: float = 1e-6):
        self.eps = eps
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    @property
    def var(self) -> float:
        return self.m2 / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def update(self, values: Sequence[float | None]) -> None:
        """Add the non-None ``values`` to the statistics."""
        for x in values:
            if x is None:
                continue
            self.count += 1
            delta = x - self.mean
            self.mean += delta / self.count
            self.m2 += delta * (x - self.mean)

    def normalize(self, values: Sequence[float | None], update: bool = True) -> list[float | None]:
        """``(v - mean) / (std + eps)`` with the running statistics (updated with ``values`` first by default)."""
        if update:
            self.update(values)
        if self.count == 0:
            if all(v is None for v in values):
                return list(values)
            raise UsageError("running normalization has seen no values yet: call update() or normalize(update=True)")
        return [None if v is None else (v - self.mean) / (self.std + self.eps) for v in values]

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2, "eps": self.eps}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        missing = {"count", "mean", "m2"} - set(state)
        if missing:
            raise UsageError(f"running mean/std state lacks {', '.join(sorted(missing))}")
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])
        self.eps = float(state.get("eps", self.eps))


def rank_normalize(values: Sequence[float | None], centered: bool = False) -> list[float | None]:
    """Ranks scaled to ``[0, 1]`` (``rank / (n - 1)``, ties share their average rank); None stays None.

    ``centered=True`` subtracts 0.5, giving ``[-0.5, 0.5]`` (the centered ranks of Salimans et al.
    2017). A batch of one value gets the middle (0.5, or 0 centered). Ranks ignore the scale of
    the rewards, so one outlier cannot dominate.
    """
    idx = [i for i, v in enumerate(values) if v is not None]
    out: list[float | None] = [None] * len(values)
    n = len(idx)
    order = sorted(idx, key=lambda i: values[i])  # type: ignore[arg-type, return-value]
    pos = 0
    while pos < n:
        end = pos
        while end + 1 < n and values[order[end + 1]] == values[order[pos]]:
            end += 1
        rank = (pos + end) / 2 / (n - 1) if n > 1 else 0.5
        for k in range(pos, end + 1):
            out[order[k]] = rank - 0.5 if centered else rank
        pos = end + 1
    return out


def batch_normalized(fn: RewardFn, eps: float = 1e-6) -> RewardFn:
    """``fn`` with its values z-scored within each call (:func:`zscore`)."""
    def reward(prompts, completions, **columns):
        return zscore(call_reward(fn, prompts, completions, **columns), eps)

    return _named(reward, f"zscore({reward_name(fn)})")


def running_normalized(fn: RewardFn, stats: RunningMeanStd | None = None) -> RewardFn:
    """``fn`` normalized by running statistics updated with every call; ``reward.stats`` holds them."""
    state = stats or RunningMeanStd()

    def reward(prompts, completions, **columns):
        return state.normalize(call_reward(fn, prompts, completions, **columns))

    reward.stats = state  # type: ignore[attr-defined]  # save/load with stats.state_dict()
    return _named(reward, f"running_norm({reward_name(fn)})")


def rank_normalized(fn: RewardFn, centered: bool = False) -> RewardFn:
    """``fn`` with its values replaced by their ranks within each call (:func:`rank_normalize`)."""
    def reward(prompts, completions, **columns):
        return rank_normalize(call_reward(fn, prompts, completions, **columns), centered)

    return _named(reward, f"rank({reward_name(fn)})")
