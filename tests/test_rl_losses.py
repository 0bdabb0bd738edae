"""The pure RL functions of learn/losses.py against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from reasonlab.learn import losses as L


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol)


# ----------------------------------------------------------------------------- advantages

def test_group_advantages_group_std():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    # group 0: mean .5, pop std .5 -> +-1; group 1: mean .75, std sqrt(.1875)=.4330
    a = L.group_advantages(r, "group")
    assert close(a[0], [1, -1, -1, 1], 1e-4)
    s = math.sqrt(0.1875)
    assert close(a[1], [0.25 / s, 0.25 / s, 0.25 / s, -0.75 / s], 1e-4)


def test_group_advantages_batch_std_and_none():
    r = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert close(L.group_advantages(r, "none"), [[0.5, -0.5], [0.0, 0.0]])
    batch_std = r.std(unbiased=False)  # all four rewards: mean .75, std .4330
    assert close(L.group_advantages(r, "batch"), [[0.5 / batch_std, -0.5 / batch_std], [0, 0]], 1e-4)


def test_all_equal_group_has_zero_advantage_in_every_scaling():
    r = torch.tensor([[1.0, 1.0, 1.0]])
    for scale in ("group", "batch", "none"):
        assert close(L.group_advantages(r, scale), [[0, 0, 0]])
    with pytest.raises(ValueError, match="unknown std scaling"):
        L.group_advantages(r, "median")


def test_scale_negative_touches_only_negative_advantages():
    adv = torch.tensor([[1.5, -0.5, 0.0], [-2.0, 0.25, -0.0]])
    assert L.scale_negative(adv, 1.0) is adv
    assert torch.equal(L.scale_negative(adv, 0.5), torch.tensor([[1.5, -0.25, 0.0], [-1.0, 0.25, 0.0]]))
    zeroed = L.scale_negative(adv, 0.0)
    assert torch.equal(zeroed, torch.tensor([[1.5, 0.0, 0.0], [0.0, 0.25, 0.0]]))
    assert L.scale_negative(adv, 0.5).shape == adv.shape


def test_top_entropy_mask_keeps_the_forking_tokens():
    # 8 valid tokens (the padding's high entropy must not count); the top quarter is the two at 2.0 and 3.0.
    ent = torch.tensor([[0.1, 3.0, 0.2, 0.0, 9.0], [2.0, 0.3, 0.1, 0.4, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]], dtype=torch.float32)
    assert torch.equal(L.top_entropy_mask(ent, mask, 0.25), torch.tensor([[0.0, 1, 0, 0, 0], [1, 0, 0, 0, 0]]))
    assert torch.equal(L.top_entropy_mask(ent, mask, 1.0), mask)
    # Ties at the threshold are all kept; an empty mask keeps nothing.
    assert L.top_entropy_mask(torch.ones(2, 3), torch.ones(2, 3), 0.2).sum() == 6
    assert L.top_entropy_mask(ent, torch.zeros_like(mask), 0.2).sum() == 0


def test_max_variance_subset_keeps_the_minority_outcome():
    r = torch.tensor([[1.0, 1, 1, 1, 1, 1, 1, 0],   # 7 right, 1 wrong: the wrong one and 3 right
                      [0.0, 0, 1, 0, 0, 1, 0, 0],   # 2 right: both, and 2 wrong
                      [1.0, 1, 1, 1, 1, 1, 1, 1]])  # all agree: the last 4
    assert L.max_variance_subset(r, 4).tolist() == [[4, 5, 6, 7], [2, 5, 6, 7], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="cannot keep 9 of 8"):
        L.max_variance_subset(r, 9)


def test_max_variance_subset_matches_brute_force():
    import itertools

    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        n = int(torch.randint(2, 9, (1,), generator=g))
        m = int(torch.randint(1, n + 1, (1,), generator=g))
        r = torch.randint(0, 4, (3, n), generator=g).float() + torch.rand(3, n, generator=g) * (_ % 2)
        idx = L.max_variance_subset(r, m)
        assert idx.shape == (3, m)
        for row in range(3):
            assert len(set(idx[row].tolist())) == m
            best = max(float(r[row, list(c)].var(unbiased=False)) for c in itertools.combinations(range(n), m))
            assert float(r[row, idx[row]].var(unbiased=False)) == pytest.approx(best, abs=1e-6)


def test_rloo_leave_one_out_baseline():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    # A_0 = 1 - mean(0,0,1) = 2/3; A_1 = 0 - mean(1,0,1) = -2/3
    assert close(L.rloo_advantages(r), [[2 / 3, -2 / 3, -2 / 3, 2 / 3]])
    r2 = torch.tensor([[3.0, 1.0, 2.0]])
    assert close(L.rloo_advantages(r2), [[3 - 1.5, 1 - 2.5, 2 - 2.0]])
    with pytest.raises(ValueError):
        L.rloo_advantages(torch.tensor([[1.0]]))


def test_reinforce_pp_normalises_over_the_batch():
    r = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    a = L.reinforce_pp_advantages(r, "none")
    x = torch.tensor([1.0, 0.0, 1.0, 1.0])
    assert close(a.flatten(), (x - x.mean()) / x.std(unbiased=False), 1e-4)
    b = L.reinforce_pp_advantages(r, "group")  # group-centred first: [.5, -.5, 0, 0]
    y = torch.tensor([0.5, -0.5, 0.0, 0.0])
    assert close(b.flatten(), (y - y.mean()) / y.std(unbiased=False), 1e-4)
    assert close(L.mean_baseline_advantages(r), [[0.25, -0.75], [0.25, 0.25]])


# ----------------------------------------------------------------------------- clipped surrogate

def test_policy_loss_clipping_both_sides():
    # ratios 1.5 and 0.5 with positive and negative advantages, eps 0.2
    ratio = torch.tensor([[1.5, 0.5, 1.5, 0.5, 1.1]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 1.0]])
    loss, st = L.policy_loss(ratio.log(), adv, 0.2, 0.2)
    # A>0, r=1.5: max(-1.5, -1.2) = -1.2 (clipped high); A>0, r=.5: max(-.5, -.8) = -.5 (unclipped)
    # A<0, r=1.5: max(1.5, 1.2) = 1.5 (unclipped); A<0, r=.5: max(.5, .8) = .8 (clipped low); r=1.1 inside: -1.1
    assert close(loss, [[-1.2, -0.5, 1.5, 0.8, -1.1]])
    assert st["clipped_high"].tolist() == [[1, 0, 0, 0, 0]]
    assert st["clipped_low"].tolist() == [[0, 0, 0, 1, 0]]


def test_policy_loss_asymmetric_clip_higher():
    ratio = torch.tensor([[1.25, 1.35]])
    adv = torch.tensor([[2.0, 2.0]])
    loss, st = L.policy_loss(ratio.log(), adv, eps_low=0.2, eps_high=0.28)
    assert close(loss, [[-2.5, -2.56]])  # 1.25 is inside [0.8, 1.28]; 1.35 clips to 1.28
    assert st["clipped_high"].tolist() == [[0, 1]]


def test_dual_clip_caps_negative_advantage_loss():
    ratio = torch.tensor([[5.0, 2.0, 5.0]])
    adv = torch.tensor([[-1.0, -1.0, 1.0]])
    loss, st = L.policy_loss(ratio.log(), adv, 0.2, 0.2, dual_clip=3.0)
    # A=-1, r=5: standard loss 5, capped at -A*c = 3. r=2: 2 < 3 stays. A>0 untouched: max(-5, -1.2) = -1.2
    assert close(loss, [[3.0, 2.0, -1.2]])
    assert st["dual_clipped"].tolist() == [[1, 0, 0]]
    with pytest.raises(ValueError):
        L.policy_loss(ratio.log(), adv, dual_clip=0.5)


def test_policy_gradient_at_ratio_one_is_minus_advantage():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = logp.detach().clone()
    loss, _ = L.policy_loss(L.token_log_ratio(logp, old, torch.ones(1, 2)), torch.tensor([[2.0], ]))
    loss.sum().backward()
    assert close(logp.grad, [[-2.0, -2.0]])


def test_gspo_sequence_ratio_value_and_gradient():
    logp = torch.tensor([[-1.0, -1.0, 0.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    old = torch.tensor([[-1.2, -0.8, 0.0], [-0.5, -0.7, -0.3]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    lr = L.gspo_log_ratio(logp, old, mask)
    # row 0: mean over 2 tokens of (0.2, -0.2) = 0; row 1: mean of (0, .2, -.2) = 0 -> all 0 on real tokens
    assert close(lr.detach(), [[0, 0, 0], [0, 0, 0]])
    old2 = old - 0.3  # every token ratio exp(.3): the sequence ratio is exp(.3) too
    lr2 = L.gspo_log_ratio(logp, old2, mask)
    assert close(lr2.detach(), [[0.3, 0.3, 0], [0.3, 0.3, 0.3]])
    # d lr / d logp_t is 1 at the token itself (GSPO-token form), 0 across tokens
    lr2.sum().backward()
    assert close(logp.grad, mask)


# ----------------------------------------------------------------------------- KL, entropy

def test_kl_estimators():
    logp = torch.tensor([math.log(0.5), math.log(0.2)])
    ref = torch.tensor([math.log(0.25), math.log(0.4)])
    log_r = ref - logp  # log(.5), log(2)
    assert close(L.kl_penalty(logp, ref, "k1"), -log_r)
    assert close(L.kl_penalty(logp, ref, "k2"), 0.5 * log_r ** 2)
    assert close(L.kl_penalty(logp, ref, "k3"), [0.5 - 1 - math.log(0.5), 2 - 1 - math.log(2)])
    assert (L.kl_penalty(logp, ref, "k3") >= 0).all()
    assert close(L.kl_penalty(logp, logp, "k3"), [0, 0])
    with pytest.raises(ValueError):
        L.kl_penalty(logp, ref, "k4")


def test_k1_and_k3_are_unbiased_estimates_of_kl():
    torch.manual_seed(0)
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.3, 0.3, 0.4])
    true_kl = float((p * (p / q).log()).sum())
    x = torch.multinomial(p, 200_000, replacement=True)
    for kind in ("k1", "k3"):
        est = float(L.kl_penalty(p.log()[x], q.log()[x], kind).mean())
        assert abs(est - true_kl) < 0.01, (kind, est, true_kl)


def test_entropy_from_logits():
    logits = torch.tensor([[0.0, 0.0], [100.0, 0.0]])
    assert close(L.entropy_from_logits(logits), [math.log(2), 0.0])


# ----------------------------------------------------------------------------- aggregation

def test_token_weights_each_aggregation():
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    loss = torch.tensor([[1.0, 1.0, 1.0, 1.0], [5.0, 9.0, 9.0, 9.0]])
    tm = (L.token_weights(mask, "token_mean") * loss).sum()
    assert close(tm, (4 + 5) / 5)
    sm = (L.token_weights(mask, "seq_mean_token_mean") * loss).sum()
    assert close(sm, (1 + 5) / 2)
    cn = (L.token_weights(mask, "seq_mean_token_sum_norm", max_len=8) * loss).sum()
    assert close(cn, (4 + 5) / (2 * 8))
    with pytest.raises(ValueError):
        L.token_weights(mask, "sum")


def test_token_weights_make_microbatching_exact():
    torch.manual_seed(1)
    mask = (torch.rand(6, 5) > 0.3).float()
    mask[:, 0] = 1
    loss = torch.randn(6, 5)
    for how in L.AGGREGATIONS:
        w = L.token_weights(mask, how, max_len=5)
        whole = (w * loss).sum()
        split = (w[:2] * loss[:2]).sum() + (w[2:] * loss[2:]).sum()
        assert close(whole, split)


# ----------------------------------------------------------------------------- GAE, value loss, KL control

def gae_reference(rewards, values, gamma, lam):
    """The textbook loop over one unpadded sequence."""
    n = len(rewards)
    adv = [0.0] * n
    last = 0.0
    for t in reversed(range(n)):
        nv = values[t + 1] if t + 1 < n else 0.0
        delta = rewards[t] + gamma * nv - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv


def test_gae_matches_reference_loop_with_padding():
    torch.manual_seed(2)
    lengths = [5, 3, 1]
    rewards = torch.randn(3, 5)
    values = torch.randn(3, 5)
    mask = torch.zeros(3, 5)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    rewards = rewards * mask
    adv, ret = L.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    for i, n in enumerate(lengths):
        ref = gae_reference(rewards[i, :n].tolist(), values[i, :n].tolist(), 0.9, 0.8)
        assert close(adv[i, :n], ref, 1e-5)
        assert close(ret[i, :n], torch.tensor(ref) + values[i, :n], 1e-5)
        assert (adv[i, n:] == 0).all()


def test_gae_lambda_one_gamma_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.2, 0.5, 0.7]])
    adv, _ = L.gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert close(adv, [[0.8, 0.5, 0.3]])


def test_value_loss_clipping():
    v = torch.tensor([1.0, 0.0])
    old = torch.tensor([0.0, 0.0])
    ret = torch.tensor([2.0, 1.0])
    # row 0: unclipped (1-2)^2=1, clipped V=0.2 -> (0.2-2)^2=3.24 -> max 3.24 -> 1.62
    assert close(L.value_loss(v, old, ret, clip=0.2), [1.62, 0.5])
    assert close(L.value_loss(v, old, ret, clip=None), [0.5, 0.5])


def test_adaptive_kl_controller_moves_toward_target():
    c = L.AdaptiveKLController(0.1, target=1.0, horizon=10)
    assert c.update(3.0, 1) == pytest.approx(0.1 * 1.02)  # error clipped at +0.2
    c2 = L.AdaptiveKLController(0.1, target=1.0, horizon=10)
    assert c2.update(0.5, 1) == pytest.approx(0.1 * (1 - 0.2 / 10))  # error clipped at -0.2
    c3 = L.AdaptiveKLController(0.1, target=1.0, horizon=10)
    assert c3.update(0.95, 1) == pytest.approx(0.1 * (1 - 0.05 / 10))
    c2.load_state_dict(c.state_dict())
    assert c2.beta == c.beta
