"""Prompt sharing in GRPO's training forward computes exactly what one row per completion computes.

- ``shared_prompt_logits`` gives the flat layout's log-probs and gradients, for groups with different
  prompt lengths, different numbers of completions and completions of different lengths (a random
  tiny Llama, samples built by hand, micro-batches small enough to split a group);
- one GRPO ``Trainer.step()`` gives the same weights with ``share_prompt`` on and off, and skipping
  zero-advantage samples (groups then hold different numbers of rows) still gives the same update;
- under gradient checkpointing (which drops the KV cache) the trainer falls back to the flat layout.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import reasonlab.learn.rollout as rollout
from reasonlab.errors import UsageError
from reasonlab.learn.grpo import GRPOConfig, Trainer
from reasonlab.learn.rollout import (GroupMicroBatch, Sample, completion_logits, make_group_microbatches,
                                     make_microbatches, prefix_trees, shared_prompt_logits, supports_shared_prompt,
                                     token_logps)
from reasonlab.policies.tiny import new_tiny_model
from reasonlab.tasks.arith import ArithTask

PAD = 0


def hand_samples() -> list[Sample]:
    g = torch.Generator().manual_seed(7)
    rand = lambda n: torch.randint(4, 50, (n,), generator=g).tolist()  # noqa: E731
    # (prompt length, completion lengths): uneven prompts, uneven group sizes, uneven completions.
    spec = [(5, [4, 1, 7]), (11, [3]), (8, [2, 6, 5, 9, 1, 6]), (3, [1, 1])]
    samples = []
    for gi, (plen, clens) in enumerate(spec):
        prompt = rand(plen)
        base = rand(max(clens))
        for j, c in enumerate(clens):
            # Completions of a prompt share beginnings of different lengths (as a confident policy's do): the
            # prefix-tree layout runs those once. The third group's last two are twins.
            keep = int(torch.randint(0, c + 1, (1,), generator=g)) if j < 5 else 6
            comp = base[:keep] + rand(c - keep) if j < 5 else samples[-1].completion_ids
            samples.append(Sample(prompt_ids=prompt, completion_ids=comp, sampler_logp=None, truncated=False,
                                  group=gi))
    return samples


def per_sample_logps(model, mbs, logits_fn) -> dict[int, torch.Tensor]:
    out = {}
    for mb in mbs:
        logp = token_logps(logits_fn(model, mb), mb.completion_ids)
        for r, i in enumerate(mb.index):
            out[i] = logp[r, :int(mb.mask[r].sum())]
    return out


@pytest.fixture(scope="module")
def model():
    m, _ = new_tiny_model(hidden_size=64, layers=2, heads=4, intermediate=128)
    return m.train()


def test_group_microbatches_run_each_prompt_once_per_chunk():
    samples = hand_samples()
    mbs = make_group_microbatches(samples, rows=4, pad_id=PAD)
    assert sorted(i for mb in mbs for i in mb.index) == list(range(len(samples)))
    for mb in mbs:
        assert len(mb.index) <= 4
        # Every row's prompt (left-padded, its own row of prompt_ids) is the sample's prompt.
        for r, i in enumerate(mb.index):
            row = mb.prompt_ids[mb.owner[r]][mb.prompt_mask[mb.owner[r]].bool()].tolist()
            assert row == samples[i].prompt_ids
            assert mb.completion_ids[r, :len(samples[i].completion_ids)].tolist() == samples[i].completion_ids
        # Distinct prompts only: no two prompt rows are the same.
        assert len({tuple(p.tolist()) for p in mb.prompt_ids}) == mb.prompt_ids.shape[0]
    # 12 completions of 4 prompts: the 6-completion group is split in two, nothing else is duplicated.
    assert sum(mb.prompt_ids.shape[0] for mb in mbs) == 5


def test_prefix_trees_hold_each_distinct_beginning_once(monkeypatch):
    monkeypatch.setattr(rollout, "ROW_TOKENS", 6)   # two rows: the segments (5 and 2 tokens) do not fit in one
    comps = [[[5, 6, 7], [5, 6, 8, 9], [5, 6, 7], [4]], [[1], [2, 3]]]
    tree = prefix_trees([[30, 31], [40]], comps, t=4)
    # Segment 0: its prompt, then the nodes 5, 5-6 and 5-6-8. A completion's last token predicts nothing scored,
    # so it is no node: not 7, 9 or the lone 4. Segment 1: its prompt, then the node 2.
    assert tree.ids.tolist() == [[30, 31, 5, 6, 8], [40, 2, 0, 0, 0]]
    assert tree.pos.tolist() == [[0, 1, 2, 3, 4], [0, 1, 0, 0, 0]]
    T, F = True, False
    assert tree.sees[0].tolist() == [[T, F, F, F, F], [T, T, F, F, F], [T, T, T, F, F], [T, T, T, T, F],
                                     [T, T, T, T, T]]
    assert tree.sees[1].tolist() == [[T, F, F, F, F], [T, T, F, F, F], [F, F, T, F, F], [F, F, F, T, F],
                                     [F, F, F, F, T]]
    # Logits are needed at the prompts' last tokens and at the nodes; each completion's tokens read them in turn.
    assert tree.need.tolist() == [1, 2, 3, 4, 5, 6]
    need = tree.need.tolist()
    flat = [[need[k] for k in row] for row in tree.path.tolist()]
    assert [row[:n] for row, n in zip(flat, [3, 4, 3, 1, 1, 2])] == [[1, 2, 3], [1, 2, 3, 4], [1, 2, 3], [1], [5],
                                                                     [5, 6]]


@pytest.mark.parametrize("tree", [False, True])
@pytest.mark.parametrize("include", [None, [0, 2, 3, 6, 8, 10, 11]])
def test_shared_logps_and_gradients_match_the_flat_layout(model, include, tree):
    samples = hand_samples()
    flat = make_microbatches(samples, rows=64, pad_id=PAD, include=include)
    shared = make_group_microbatches(samples, rows=4, pad_id=PAD, include=include, tree=tree)
    assert len(shared) > 1 and all(isinstance(mb, GroupMicroBatch) for mb in shared)
    if tree:   # one node per distinct beginning of a prompt's completions in the micro-batch: fewer than tokens
        nodes = tokens = 0
        for mb in shared:
            lengths = mb.mask.sum(1).long().tolist()
            beginnings = {(int(mb.owner[r]), tuple(mb.completion_ids[r, :k].tolist()))
                          for r, n in enumerate(lengths) for k in range(1, n)}
            prompts = int(mb.prompt_mask.sum())
            assert int((mb.tree.ids != PAD).sum()) <= prompts + len(beginnings)   # pad tokens aside
            assert mb.tree.need.numel() == mb.prompt_ids.shape[0] + len(beginnings)
            nodes, tokens = nodes + len(beginnings), tokens + sum(n - 1 for n in lengths if n > 0)
        assert 0 < nodes < tokens
    lp_flat = per_sample_logps(model, flat, completion_logits)
    lp_shared = per_sample_logps(model, shared, shared_prompt_logits)
    assert lp_flat.keys() == lp_shared.keys() == set(include or range(len(samples)))
    for i in lp_flat:
        assert torch.allclose(lp_flat[i], lp_shared[i], atol=1e-5), i

    # Gradients of sum(logp * w) for random per-token weights, for every parameter.
    g = torch.Generator().manual_seed(1)
    w = {i: torch.randn(len(samples[i].completion_ids), generator=g) for i in lp_flat}

    def grads(mbs, logits_fn):
        model.zero_grad(set_to_none=True)
        lps = per_sample_logps(model, mbs, logits_fn)
        sum((lps[i] * w[i]).sum() for i in lps).backward()
        return {k: p.grad.detach().clone() for k, p in model.named_parameters()}

    g_flat, g_shared = grads(flat, completion_logits), grads(shared, completion_logits)
    model.zero_grad(set_to_none=True)
    assert g_flat.keys() == g_shared.keys() and len(g_flat) > 5
    for k in g_flat:
        assert g_flat[k].abs().sum() > 0, k
        assert torch.allclose(g_flat[k], g_shared[k], atol=1e-5), (k, (g_flat[k] - g_shared[k]).abs().max())


def test_single_token_completions(model):
    # T == 1: only the prompt pass runs; its last logits predict the one token.
    samples = [s for s in hand_samples() if len(s.completion_ids) == 1]
    flat = per_sample_logps(model, make_microbatches(samples, 8, PAD), completion_logits)
    shared = per_sample_logps(model, make_group_microbatches(samples, 8, PAD), shared_prompt_logits)
    assert all(torch.allclose(flat[i], shared[i], atol=1e-5) for i in flat)


def test_gradient_checkpointing_falls_back_to_the_flat_layout():
    m, _ = new_tiny_model(hidden_size=64, layers=2, heads=4, intermediate=128)
    assert supports_shared_prompt(m)
    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert not supports_shared_prompt(m)
    with pytest.raises(UsageError, match="gradient checkpointing"):
        shared_prompt_logits(m.train(), make_group_microbatches(hand_samples(), 4, PAD)[0])


def small_task() -> ArithTask:
    return ArithTask(min_ops=2, max_ops=3, test_size=32, train_size=16, seed=3)


def one_step(tmp_path, watch, **kw):
    """One trainer step; returns its record and the gradients it stepped with (``watch`` is the
    ``grads_at_step`` fixture)."""
    opts = dict(model="tiny", task="arith", out=str(tmp_path / "run"), max_steps=1, prompts_per_step=8,
                group_size=4, max_new_tokens=48, lr=1e-4, eval_limit=16, save_every=0, monitor="off",
                save_final=False, seed=0)
    opts.update(kw)
    tr = Trainer(GRPOConfig(**opts), task=small_task())
    before = {k: v.detach().clone() for k, v in tr.model.named_parameters()}
    grads = watch(tr)
    rec = tr.step()
    rec["_moved"] = sum(not torch.equal(before[k], v) for k, v in tr.model.named_parameters())
    return rec, grads


def assert_same_grads(a: dict, b: dict) -> None:
    assert a and a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-7, rtol=1e-4)


def test_trainer_step_gives_the_same_update_with_and_without_sharing(tmp_path, monkeypatch, grads_at_step):
    calls = {"n": 0}
    real = rollout.shared_prompt_logits

    def counted(model, mb):
        calls["n"] += 1
        return real(model, mb)

    monkeypatch.setattr(rollout, "shared_prompt_logits", counted)
    rec_s, g_s = one_step(tmp_path / "s", grads_at_step, share_prompt=True, micro_batch_size=6)
    assert calls["n"] > 0  # the shared path really ran
    n_shared = calls["n"]
    rec_f, g_f = one_step(tmp_path / "f", grads_at_step, share_prompt=False)
    assert calls["n"] == n_shared  # and the flat one did not use it
    assert rec_s["trained_fraction"] < 1.0  # some groups were skipped: groups of different sizes
    assert rec_s["reward_mean"] == rec_f["reward_mean"]
    assert rec_s["loss"] == pytest.approx(rec_f["loss"], abs=1e-6)
    assert rec_s["sampler_gap_max"] < 1e-3
    assert rec_s["grad_norm"] == pytest.approx(rec_f["grad_norm"], rel=1e-5)
    assert rec_s["_moved"] > 0  # the step changed the weights, and both layouts computed the same gradient
    assert_same_grads(g_s, g_f)


def test_prefix_tree_gives_the_same_update(tmp_path, grads_at_step):
    # tiny's own samples of its task share most of their beginnings: the tree layout runs fewer tokens and
    # must step with the same gradients as one row per completion.
    rec_t, g_t = one_step(tmp_path / "t", grads_at_step, prefix_tree=True, micro_batch_size=6, merge_twins=False)
    rec_r, g_r = one_step(tmp_path / "r", grads_at_step, prefix_tree=False, micro_batch_size=6, merge_twins=False)
    assert rec_t["reward_mean"] == rec_r["reward_mean"] and rec_t["trained_fraction"] < 1.0
    assert rec_t["loss"] == pytest.approx(rec_r["loss"], abs=1e-6)
    assert rec_t["entropy"] == pytest.approx(rec_r["entropy"], rel=1e-4)
    assert rec_t["_moved"] > 0
    assert_same_grads(g_t, g_r)


def test_skipping_zero_advantage_samples_with_sharing_gives_the_same_update(tmp_path, monkeypatch, grads_at_step):
    # Without twin merging, whose summed weights assume the merged rows are left out.
    rec_skip, g_skip = one_step(tmp_path / "a", grads_at_step, share_prompt=True, merge_twins=False)
    full = rollout.make_group_microbatches
    monkeypatch.setattr(rollout, "make_group_microbatches",
                        lambda s, rows, pad, include=None, tree=False: full(s, rows, pad, tree=tree))
    rec_all, g_all = one_step(tmp_path / "b", grads_at_step, share_prompt=True, merge_twins=False)
    assert rec_skip["trained_fraction"] < 1.0
    assert rec_skip["reward_mean"] == rec_all["reward_mean"]
    assert rec_skip["grad_norm"] == pytest.approx(rec_all["grad_norm"], rel=1e-5)
    assert_same_grads(g_skip, g_all)


def test_merge_twins_trains_each_distinct_sample_once_with_the_twins_weights():
    def sample(prompt, completion, scale=1.0):
        return Sample(prompt_ids=prompt, completion_ids=completion, sampler_logp=None, truncated=False, group=0,
                      loss_weight_scale=scale)

    samples = [sample([1, 2], [5, 6]),        # 0
               sample([1, 2], [5, 6]),        # 1: twin of 0
               sample([1, 2], [5, 7]),        # 2: another completion
               sample([1, 3], [5, 6]),        # 3: another prompt
               sample([1, 2], [5, 6]),        # 4: twin of 0, but other advantages (another reward)
               sample([1, 2], [5, 6], 0.0),   # 5: twin of 0, but out of the loss
               sample([1, 2], [5, 6]),        # 6: twin of 0, not trained on (not in include)
               sample([1, 2], [5, 6, 8])]     # 7: longer; twin of 0's prefix only
    adv = torch.tensor([[1.0, 1.0, 0.0]] * 4 + [[-1.0, -1.0, 0.0]] + [[1.0, 1.0, 0.0]] * 3)
    adv[7, 2] = 1.0
    weights = torch.rand(8, 3) * (torch.arange(3) < 2)
    weights[7, 2] = 0.5
    kept, merged, counts = rollout.merge_twins(samples, [0, 1, 2, 3, 4, 5, 7], adv, weights)
    assert kept == [0, 2, 3, 4, 5, 7]
    torch.testing.assert_close(merged[0], weights[0] + weights[1])
    assert torch.equal(merged[1:], weights[1:])  # the others, the merged-away twin's row included, as they were
    assert counts.tolist() == [2, 0, 1, 1, 1, 1, 0, 1]


def test_bfloat16_rollouts_and_float32_evaluations(tmp_path, monkeypatch):
    # decode_dtype=bfloat16 samples rollouts through bfloat16 products; held-out evaluations stay float32.
    import reasonlab.evaluation.harness as harness

    seen = []
    real = harness.run_eval
    monkeypatch.setattr(harness, "run_eval", lambda cfg, policy, **kw: (seen.append(policy.decode_dtype),
                                                                        real(cfg, policy=policy, **kw))[1])
    opts = dict(model="tiny", task="arith", out=str(tmp_path / "run"), max_steps=1, prompts_per_step=4,
                group_size=4, max_new_tokens=48, eval_limit=8, save_every=0, monitor="off", save_final=False,
                decode_dtype="bfloat16")
    tr = Trainer(GRPOConfig(**opts), task=small_task())
    rec = tr.step()
    assert tr.policy.decode_dtype == "bfloat16" and rec["sampler_gap_mean"] > 1e-6   # sampled in bfloat16
    tr.evaluate(tmp_path / "run")
    assert seen == ["float32"] and tr.policy.decode_dtype == "bfloat16"
