"""Pure tensor functions of online RL: advantages, policy-gradient losses, KL estimators, aggregation.

Every function here is stateless and works on tensors whose shapes are in its docstring, so each can
be checked against hand-computed numbers (``tests/test_rl_losses.py``). The trainers (``grpo.py``,
``ppo.py``) compose them; a variant is a different function picked by name from a small table, not a
flag threaded through one big loss (DESIGN.md, principle 3).

Shapes: ``B`` sequences (prompts x completions, flattened prompt-major), ``T`` completion tokens
(right-padded), ``mask: (B, T)`` 1.0 on real completion tokens and 0.0 on padding.

References, by function:

- ``process_advantages``: GRPO with process supervision (DeepSeekMath section 4.1.3).
- ``group_advantages``: GRPO, Shao et al. 2024 (DeepSeekMath) eq. 3 with std scaling by group;
  scaling by batch std or none is Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training").
- ``max_variance_subset``: PODS (Xu et al. 2025, "Not All Rollouts are Useful"), max-variance down-sampling.
- ``rloo_advantages``: Ahmadian et al. 2024 ("Back to Basics"), leave-one-out baseline.
- ``reinforce_pp_advantages``: REINFORCE++ (Hu 2025): baseline, then normalised over the whole batch.
- ``policy_loss``: PPO clipped surrogate (Schulman et al. 2017) with asymmetric bounds
  ``eps_low``/``eps_high`` (DAPO's clip-higher, Yu et al. 2025) and dual clip (Ye et al. 2020).
- ``gspo_log_ratio``: GSPO (Zheng et al. 2025): a sequence-level importance ratio.
- ``kl_penalty``: the k1/k2/k3 estimators of KL(pi || pi_ref) (Schulman 2020, "Approximating KL").
- ``token_weights``: loss aggregation; token-mean (DAPO), sequence-mean of token-means (GRPO),
  constant normaliser (Dr.GRPO).
- ``gae``: generalised advantage estimation (Schulman et al. 2016), ``value_loss`` with clipping.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

EPS = 1e-6


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the entries where ``mask`` is 1 (0 where there are none)."""
    if dim is None:
        return masked_sum(x, mask) / mask.sum().clamp(min=1)
    return masked_sum(x, mask, dim) / mask.sum(dim).clamp(min=1)


# ----------------------------------------------------------------------------------------------
# Advantages (outcome rewards: one scalar per sequence)
# ----------------------------------------------------------------------------------------------

def group_advantages(rewards: torch.Tensor, scale: str = "group") -> torch.Tensor:
    """GRPO advantages ``A_i = (r_i - mean(group)) / s``. ``rewards: (P, G)`` -> ``(P, G)``.

    ``scale``: ``"group"`` divides by the group's std (GRPO, DeepSeekMath eq. 3), ``"batch"`` by the
    std of all rewards in the batch, ``"none"`` not at all (Dr.GRPO: group-std scaling up-weights
    questions that are too easy or too hard). ``std`` is the population std (``unbiased=False``), and
    a group whose rewards all agree gets advantage 0 whatever the scaling.
    """
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    if scale == "group":
        return centered / (rewards.std(dim=1, unbiased=False, keepdim=True) + EPS)
    if scale == "batch":
        return centered / (rewards.std(unbiased=False) + EPS)
    if scale == "none":
        return centered
    raise ValueError(f"unknown std scaling {scale!r}; choose group, batch or none")


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Leave-one-out baseline: ``A_i = r_i - mean_{j != i} r_j``. ``rewards: (P, G)``, ``G >= 2``.

    Equal to ``G / (G - 1) * (r_i - mean(group))``, computed directly for clarity.
    """
    g = rewards.shape[1]
    if g < 2:
        raise ValueError("the leave-one-out baseline needs at least 2 completions per prompt")
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (g - 1)
    return rewards - others


def reinforce_pp_advantages(rewards: torch.Tensor, baseline: str = "group") -> torch.Tensor:
    """REINFORCE++: subtract a baseline, then normalise by the batch mean and std. ``(P, G)`` -> ``(P, G)``.

    ``baseline``: ``"group"`` subtracts each prompt's mean first (REINFORCE++-baseline), ``"none"``
    uses the raw rewards. The batch normalisation (``(x - mean) / std`` over all P*G samples) is
    what distinguishes REINFORCE++ from GRPO's per-group scaling.
    """
    x = rewards
    if baseline == "group":
        x = x - x.mean(dim=1, keepdim=True)
    elif baseline != "none":
        raise ValueError(f"unknown REINFORCE++ baseline {baseline!r}; choose group or none")
    return (x - x.mean()) / (x.std(unbiased=False) + EPS)


def mean_baseline_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Plain REINFORCE with the batch-mean baseline: ``A_i = r_i - mean(all rewards)``. ``(P, G)``."""
    return rewards - rewards.mean()


def scale_negative(adv: torch.Tensor, scale: float) -> torch.Tensor:
    """Advantages with the negative ones multiplied by ``scale`` (any shape).

    Below 1 the update leans on the samples that did better than their group and pushes less on the ones
    that did worse: a negative advantage hands the sampled tokens' probability to all the other tokens,
    a positive one moves mass onto a path the model already follows to a right answer (at 0, SFT on its
    own better-than-average samples). 1 is plain GRPO. On tiny it neither learned faster at the usual rate
    nor made a 5x higher rate safe (BENCHMARKS, "Online RL learns", session 11).
    """
    return adv if scale == 1.0 else torch.where(adv < 0, adv * scale, adv)


def max_variance_subset(rewards: torch.Tensor, m: int) -> torch.Tensor:
    """PODS's max-variance down-sampling: for each row, the indices of the ``m`` rewards whose (population)
    variance is largest. ``rewards: (P, n)``, ``1 <= m <= n`` -> ``(P, m)`` long, ascending in each row.

    Some variance-maximising subset is always made of the ``i`` lowest and ``m - i`` highest rewards for some
    ``i`` (as Xu et al. 2025 prove), so only the ``m + 1`` such splits of each sorted row are compared. With
    binary rewards this keeps as many of the minority outcome as balance allows: of 7 right and 1 wrong, the
    wrong one and ``m - 1`` right ones. Ties go to the smallest ``i``; rows whose rewards all agree keep their
    last ``m`` indices.
    """
    p, n = rewards.shape
    if not 1 <= m <= n:
        raise ValueError(f"cannot keep {m} of {n} rewards per row")
    order = rewards.argsort(dim=1, stable=True)
    splits = torch.stack([torch.cat([order[:, :i], order[:, n - (m - i):]], dim=1) for i in range(m + 1)])  # (m+1, P, m)
    var = rewards.expand(m + 1, p, n).gather(2, splits).var(dim=2, unbiased=False)  # (m + 1, P)
    return splits[var.argmax(dim=0), torch.arange(p)].sort(dim=1).values


#: Advantage estimators selectable by name in configs (outcome reward per sequence).
ADVANTAGES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "grpo": lambda r: group_advantages(r, "group"),
    "grpo_batch_std": lambda r: group_advantages(r, "batch"),
    "drgrpo": lambda r: group_advantages(r, "none"),
    "rloo": rloo_advantages,
    "reinforce_pp": lambda r: reinforce_pp_advantages(r, "none"),
    "reinforce_pp_baseline": lambda r: reinforce_pp_advantages(r, "group"),
    "reinforce": mean_baseline_advantages,
}


# ----------------------------------------------------------------------------------------------
# Advantages from process rewards (one reward per reasoning step)
# ----------------------------------------------------------------------------------------------

def process_advantages(step_rewards: torch.Tensor, step_mask: torch.Tensor, step_end: torch.Tensor,
                       group_size: int, length: int, scale: str = "group") -> torch.Tensor:
    """GRPO with process supervision (DeepSeekMath, Shao et al. 2024, section 4.1.3): token advantages.

    ``step_rewards: (B, S)`` one reward per step (padded), ``step_mask: (B, S)`` 1.0 on real steps,
    ``step_end: (B, S)`` long, the index of each step's last completion token; rows are prompt-major
    groups of ``group_size`` (``B = P * group_size``). Returns ``(B, length)``.

    Each step reward is normalised by the mean and std of *all* step rewards of its group
    (``scale="group"``; ``"none"`` only subtracts the mean), and a token's advantage is the sum of the
    normalised rewards of the steps that end at or after it: ``A_t = sum_{j: end_j >= t} r~_j``. A
    token is credited with what its step and every later step earned, so a wrong step lowers the
    tokens that led to it and not those of a right step before it; tokens after the last step get 0.
    """
    b, s = step_rewards.shape
    if b % group_size:
        raise ValueError(f"{b} rows are not whole groups of {group_size}")
    r = step_rewards.reshape(-1, group_size * s)
    m = step_mask.reshape(-1, group_size * s).to(r.dtype)
    count = m.sum(dim=1, keepdim=True).clamp(min=1)
    mean = (r * m).sum(dim=1, keepdim=True) / count
    norm = (r - mean) * m
    if scale == "group":
        std = ((norm ** 2).sum(dim=1, keepdim=True) / count).sqrt()
        norm = norm / (std + EPS)
    elif scale != "none":
        raise ValueError(f"unknown std scaling {scale!r}; choose group or none")
    norm = norm.reshape(b, s)
    t = torch.arange(length, device=step_end.device)
    covers = (step_end[:, :, None] >= t[None, None, :]).to(norm.dtype)  # (B, S, T): step j ends at/after t
    return torch.einsum("bs,bst->bt", norm, covers * step_mask.to(norm.dtype)[:, :, None])


# ----------------------------------------------------------------------------------------------
# Importance ratios and the clipped surrogate
# ----------------------------------------------------------------------------------------------

def token_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token ``log(pi / pi_old)``. ``(B, T)`` each -> ``(B, T)`` (0 on padding)."""
    return (logp - old_logp) * mask


def gspo_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO's sequence-level log-ratio broadcast over tokens. ``(B, T)`` -> ``(B, T)``.

    GSPO (Zheng et al. 2025, eq. 7) uses ``s_i = (pi(y_i)/pi_old(y_i))^(1/|y_i|)``, the geometric
    mean of the token ratios, and clips it per sequence. Written in the GSPO-token form
    ``log s_i,t = sg[log s_i] + logp_t - sg[logp_t]``: the value is ``log s_i`` at every token, and
    with a token-mean-per-sequence aggregation the gradient equals GSPO's.
    """
    seq = masked_mean(logp - old_logp, mask, dim=1).detach()[:, None]
    return (seq + logp - logp.detach()) * mask


RATIOS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "token": token_log_ratio,
    "sequence": gspo_log_ratio,
}


def policy_loss(log_ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float = 0.2,
                eps_high: float = 0.2, dual_clip: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token clipped surrogate loss. ``log_ratio: (B, T)``, ``advantages: (B, T)`` or ``(B, 1)``.

    ``L_t = max(-A r_t, -A clip(r_t, 1 - eps_low, 1 + eps_high))`` (PPO eq. 7, negated to a loss),
    with ``eps_high > eps_low`` giving DAPO's clip-higher. Dual clip (Ye et al. 2020, eq. 5): for
    ``A < 0`` the loss is additionally capped at ``-A * dual_clip`` (``dual_clip > 1``), so a
    token whose ratio exploded cannot produce an unbounded update.

    Returns ``(loss (B, T), stats)`` where the stats are ``(B, T)`` 0/1 tensors: ``clipped_low`` /
    ``clipped_high`` (the clip bound was the active term) and ``dual_clipped``.
    """
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped_ratio = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    clipped = -advantages * clipped_ratio
    loss = torch.maximum(unclipped, clipped)
    active_clip = (clipped > unclipped).float()
    stats = {"clipped_low": active_clip * (ratio < 1.0 - eps_low).float(),
             "clipped_high": active_clip * (ratio > 1.0 + eps_high).float()}
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        cap = -advantages * dual_clip
        neg = (advantages < 0).expand_as(loss)
        dual = neg & (loss > cap)
        loss = torch.where(neg, torch.minimum(loss, cap), loss)
        stats["dual_clipped"] = dual.float()
    else:
        stats["dual_clipped"] = torch.zeros_like(loss)
    return loss, stats


# ----------------------------------------------------------------------------------------------
# KL to a reference policy, entropy
# ----------------------------------------------------------------------------------------------

def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from samples of ``pi``. ``(B, T)`` -> ``(B, T)``.

    With ``log_r = ref_logp - logp``: ``k1 = -log_r`` (unbiased, high variance, can be negative),
    ``k2 = log_r^2 / 2`` (biased, low variance), ``k3 = exp(log_r) - 1 - log_r`` (unbiased, always
    >= 0; GRPO's choice, DeepSeekMath eq. 4).
    """
    log_r = ref_logp - logp
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r ** 2
    if kind == "k3":
        # Clamp before exp: a far-off-policy token would otherwise overflow to inf.
        log_r = log_r.clamp(-20.0, 20.0)
        return torch.exp(log_r) - 1.0 - log_r
    raise ValueError(f"unknown KL estimator {kind!r}; choose k1, k2 or k3")


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax over the last dim. ``logits: (..., V)`` -> ``(...)``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def top_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, fraction: float) -> torch.Tensor:
    """1 on the ``fraction`` of valid tokens with the highest entropy, 0 elsewhere. ``entropy, mask: (B, T)``.

    The "forking tokens" of Wang et al. 2025 ("Beyond the 80/20 Rule"): the policy gradient restricted to the
    top 20% of tokens by entropy, ``I[H_t >= tau_rho]`` with ``tau_rho`` the batch's ``1 - rho`` quantile. Ties
    at the threshold are all kept. ``fraction >= 1`` keeps every valid token.
    """
    valid = mask.bool()
    if fraction >= 1.0 or not valid.any():
        return valid.to(entropy.dtype)
    tau = torch.quantile(entropy[valid].float(), 1.0 - fraction)
    return (valid & (entropy >= tau)).to(entropy.dtype)


# ----------------------------------------------------------------------------------------------
# Loss aggregation: per-token weights for a whole optimizer batch
# ----------------------------------------------------------------------------------------------

def token_weights(mask: torch.Tensor, how: str = "token_mean", max_len: int | None = None,
                  n_seqs: float | None = None, n_tokens: float | None = None) -> torch.Tensor:
    """Weights ``w: (B, T)`` such that the batch loss is ``sum(w * loss_t)``. ``mask: (B, T)``.

    Computed once for the whole optimizer batch, so that splitting it into micro-batches (gradient
    accumulation) gives exactly the same update as one big batch. When ``mask`` is one process's
    share of a data-parallel batch, ``n_seqs`` / ``n_tokens`` are the whole batch's sequence and
    token counts (default: this share's), so the processes' summed gradients are the batch's.

    - ``token_mean``: every token of the batch weighs the same, ``1 / sum(mask)`` (DAPO; long
      answers are not down-weighted per token).
    - ``seq_mean_token_mean``: the mean over sequences of each sequence's token mean (the original
      GRPO objective; a token of a short answer weighs more than one of a long answer).
    - ``seq_mean_token_sum_norm``: token sums divided by a constant ``B * max_len`` (Dr.GRPO: removes
      the length bias without making the weight depend on the batch's lengths).
    """
    b = mask.shape[0] if n_seqs is None else n_seqs
    if how == "token_mean":
        return mask / (mask.sum() if n_tokens is None else torch.tensor(float(n_tokens))).clamp(min=1)
    if how == "seq_mean_token_mean":
        return mask / (mask.sum(dim=1, keepdim=True).clamp(min=1) * b)
    if how == "seq_mean_token_sum_norm":
        length = max_len if max_len is not None else mask.shape[1]
        return mask / (b * length)
    raise ValueError(f"unknown loss aggregation {how!r}; choose token_mean, seq_mean_token_mean or "
                     "seq_mean_token_sum_norm")


AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


# ----------------------------------------------------------------------------------------------
# PPO critic: GAE and the clipped value loss
# ----------------------------------------------------------------------------------------------

def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded sequences. All ``(B, T)`` -> ``(adv, returns)``.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}`` (Schulman
    et al. 2016, eq. 16), with ``V`` after the last real token taken as 0 (the episode ends there).
    ``returns = A + V`` are the value targets. Padding positions get 0.
    """
    values = values * mask
    b, t = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(b, dtype=rewards.dtype, device=rewards.device)
    for i in reversed(range(t)):
        next_v = values[:, i + 1] if i + 1 < t else torch.zeros_like(last)
        delta = rewards[:, i] + gamma * next_v - values[:, i]
        last = delta + gamma * lam * last
        last = last * mask[:, i]  # padding: no advantage, and nothing flows back through it
        adv[:, i] = last
    return adv, (adv + values) * mask


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               clip: float | None = 0.2) -> torch.Tensor:
    """Per-token clipped value loss ``0.5 * max((V - R)^2, (V_clip - R)^2)``. ``(B, T)`` each.

    ``V_clip = old_V + clamp(V - old_V, -clip, clip)`` keeps the critic from moving far in one batch
    (PPO as in OpenAI baselines); ``clip=None`` gives the plain squared error.
    """
    err = (values - returns) ** 2
    if clip is None:
        return 0.5 * err
    v_clip = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * torch.maximum(err, (v_clip - returns) ** 2)


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019): steer the observed KL towards ``target``.

    ``beta <- beta * (1 + clip((kl / target) - 1, -0.2, 0.2) * n_steps / horizon)``.
    """

    def __init__(self, init_beta: float, target: float, horizon: int = 10000):
        self.beta, self.target, self.horizon = init_beta, target, horizon

    def update(self, kl: float, n_steps: int) -> float:
        if math.isfinite(kl):
            err = max(-0.2, min(0.2, kl / self.target - 1.0))
            self.beta *= 1.0 + err * n_steps / self.horizon
        return self.beta

    def state_dict(self) -> dict:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        self.beta = float(state["beta"])
