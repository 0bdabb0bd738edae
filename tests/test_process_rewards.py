"""Process rewards in online RL: step rewards -> token advantages (DeepSeekMath's process supervision).

- ``losses.process_advantages`` against hand-computed numbers;
- steps are cut into character spans and mapped to the tokens that wrote them;
- ``arith``'s step checker labels the first wrong line and everything after it;
- a step reward function that fails is named; a non-PRM reward model is refused;
- GRPO and PPO train with ``process_rewards="steps"``, and the tokens of a wrong step get a lower
  advantage than the right steps before it.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from reasonlab.errors import UsageError
from reasonlab.learn.grpo import GRPOConfig, Trainer
from reasonlab.learn.losses import process_advantages
from reasonlab.learn.ppo import PPOConfig, PPOTrainer
from reasonlab.learn.rollout import char_ends_to_tokens
from reasonlab.rewards.functions import RewardError
from reasonlab.rewards.process import PRMStepReward, build_process_reward, step_spans
from reasonlab.tasks.arith import ArithTask


def test_process_advantages_by_hand():
    # One group of two samples. Sample 0: three right steps ending at tokens 2, 5, 7. Sample 1: a right
    # step then a wrong one (its third step slot is padding).
    r = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    end = torch.tensor([[2, 5, 7], [2, 5, 0]])
    # Group rewards 1,1,1,1,0: mean 0.8 -> normalised (no std) 0.2 x4 and -0.8.
    adv = process_advantages(r, m, end, group_size=2, length=9, scale="none")
    want = torch.tensor([[0.6] * 3 + [0.4] * 3 + [0.2] * 2 + [0.0],
                         [-0.6] * 3 + [-0.8] * 3 + [0.0] * 3])
    assert torch.allclose(adv, want, atol=1e-6)
    # With std scaling every value is divided by the group's std, 0.4.
    assert torch.allclose(process_advantages(r, m, end, 2, 9), want / 0.4, atol=1e-4)
    # Groups are normalised separately: a second group of equal rewards gets 0 everywhere.
    two = process_advantages(torch.cat([r, torch.ones(2, 3)]), torch.cat([m, m]), torch.cat([end, end]), 2, 9)
    assert torch.allclose(two[:2], want / 0.4, atol=1e-4) and torch.all(two[2:] == 0)
    with pytest.raises(ValueError):
        process_advantages(r[:1], m[:1], end[:1], 2, 9)


def test_step_spans_and_their_tokens():
    text = "12+3=15\n\n15-4=11\nanswer: 11"
    spans = step_spans(text, "\n")
    assert [text[a:b] for a, b in spans] == ["12+3=15", "15-4=11", "answer: 11"]
    assert step_spans("  \n ", "\n") == [] and step_spans("abc", "") == [(0, 3)]
    # Character-level tokens: a step ends on the token that writes its last character.
    ids = list(range(len(text)))
    decode = lambda xs: text[:len(xs)]
    assert char_ends_to_tokens(decode, ids, [b for _, b in spans]) == [6, 15, len(text) - 1]
    # Multi-character tokens: "12+3=", "15\n", "\n15-4", "=11", "\nanswer: 11" (5 tokens).
    pieces = ["12+3=", "15\n", "\n15-4", "=11", "\nanswer: 11"]
    decode = lambda xs: "".join(pieces[:len(xs)])
    assert char_ends_to_tokens(decode, list(range(5)), [b for _, b in spans]) == [1, 3, 4]


def test_arith_step_labels():
    task = ArithTask(min_ops=3, max_ops=3, test_size=4, train_size=4)
    ex = task.examples("test")[0]
    gold = ex.meta["solution"].split("\n")
    assert task.step_labels(ex, gold) == [True, True, True]
    first, second, ans = gold
    a, _, res = second.rpartition("=")
    wrong = f"{a}={int(res) + 1}"
    assert task.step_labels(ex, [first, wrong, ans]) == [True, False, False]
    assert task.step_labels(ex, gold + ["answer: 0"]) == [True, True, True, False]


def test_failing_step_reward_is_named_and_bad_specs_are_refused(monkeypatch):
    mod = types.ModuleType("fake_step_rewards")
    mod.short = lambda prompts, completions, **kw: [[1.0] for _ in completions]
    monkeypatch.setitem(sys.modules, "fake_step_rewards", mod)
    task = ArithTask(test_size=2, train_size=2)
    pr = build_process_reward("fake_step_rewards:short", task)
    ex = task.examples("test")
    with pytest.raises(RewardError, match="fake_step_rewards:short.*2 steps"):
        pr.score([e.prompt for e in ex], ["1+1=2\nanswer: 2", "x"], ex)
    with pytest.raises(UsageError):
        build_process_reward("nonsense", task)
    with pytest.raises(UsageError, match="no step checker"):
        build_process_reward("steps", types.SimpleNamespace(name="plain"))
    with pytest.raises(UsageError, match="needs a PRM|need a PRM"):
        PRMStepReward(types.SimpleNamespace(kind="orm", separator="\n"))


def small_task() -> ArithTask:
    return ArithTask(min_ops=2, max_ops=3, test_size=16, train_size=16, seed=3)


def test_grpo_with_process_rewards_puts_blame_on_the_wrong_step(tmp_path):
    cfg = GRPOConfig(model="tiny", task="arith", out=str(tmp_path / "run"), max_steps=2, prompts_per_step=8,
                     group_size=8, max_new_tokens=48, lr=1e-4, eval_limit=8, save_every=0, monitor="off",
                     save_final=False, process_rewards="steps", seed=0)
    tr = Trainer(cfg, task=small_task())
    before = {k: v.detach().clone() for k, v in tr.model.named_parameters()}
    rec = tr.step()
    assert "process/steps" in rec and 0.0 < rec["process/steps"] < 1.0
    assert rec["process/steps_mean"] >= 2 and rec["process/advantage_abs_mean"] > 0
    assert any(not torch.equal(before[k], v) for k, v in tr.model.named_parameters())
    # In the batch just trained on: a sample whose first step is right and second wrong gets a higher
    # advantage on its first step's tokens than on its second's.
    samples = tr.last_samples
    t_max = max(len(s.completion_ids) for s in samples)
    adv, _ = tr.process_advantages(samples, t_max)
    checked = 0
    for i, s in enumerate(samples):
        spans = step_spans(s.text, "\n")
        labels = tr.task.step_labels(s.example, [s.text[a:b] for a, b in spans])
        if len(labels) >= 2 and labels[0] and not labels[1]:
            e0, e1 = char_ends_to_tokens(tr.policy.decode_ids, s.completion_ids, [spans[0][1], spans[1][1]])
            assert adv[i, e0] > adv[i, e1], (s.text, adv[i])
            checked += 1
    assert checked > 0


def test_ppo_with_process_rewards_runs(tmp_path):
    cfg = PPOConfig(model="tiny", task="arith", out=str(tmp_path / "run"), max_steps=1, prompts_per_step=4,
                    group_size=4, max_new_tokens=48, lr=1e-4, eval_limit=8, save_every=0, monitor="off",
                    save_final=False, process_rewards="steps")
    tr = PPOTrainer(cfg, task=small_task())
    rec = tr.step()
    assert "process/steps" in rec and torch.isfinite(torch.tensor(rec["loss"]))
