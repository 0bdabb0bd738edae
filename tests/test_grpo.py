"""End-to-end checks of the online-RL trainers on the shipped tiny model (each well under a minute).

- GRPO raises the reward on a fixed set of training prompts (it learns, not just runs);
- a run stopped mid-way and resumed matches the uninterrupted run's next steps and final weights;
- RLOO, REINFORCE++ and PPO run their own advantage estimators through the same loop;
- PODS down-sampling trains on each group's max-variance subset, and still raises the reward;
- the anomaly monitor rolls a run back to its last checkpoint when a reward hack appears;
- a failing reward function stops the run with its name, or is skipped and reported.
"""

from __future__ import annotations

import json
import sys
import types
from dataclasses import replace

import pytest
import torch

from reasonlab.errors import UsageError
from reasonlab.learn.grpo import GRPOConfig, Trainer, soft_overlong_penalty, train
from reasonlab.learn.ppo import PPOConfig, PPOTrainer
from reasonlab.learn.rloo import RLOOConfig
from reasonlab.rewards.functions import RewardError
from reasonlab.tasks.arith import ArithTask
from reasonlab.types import SamplingParams


def small_task(n_train: int = 16) -> ArithTask:
    # Two-operand problems and a small fixed training set: the reward can move within a few steps.
    return ArithTask(min_ops=2, max_ops=3, test_size=32, train_size=n_train, seed=3)


def base_cfg(tmp_path, **kw) -> GRPOConfig:
    opts = dict(model="tiny", task="arith", out=str(tmp_path / "run"), max_steps=4, prompts_per_step=8, group_size=8,
                max_new_tokens=48, lr=1e-4, eval_limit=16, save_every=2, monitor="off", save_final=False, seed=0)
    opts.update(kw)
    return GRPOConfig(**opts)


def mean_sampled_reward(trainer: Trainer, examples, seed: int = 123, n: int = 16) -> float:
    comps = trainer.policy.generate_ids([trainer.encode(e) for e in examples],
                                        SamplingParams(n=n, temperature=1.0, max_new_tokens=48, seed=seed,
                                                       stop=trainer.task.stop))
    res = trainer.task.score_many([examples[c.prompt_index] for c in comps], [c.text for c in comps])
    return sum(r.correct for r in res) / len(res)


@pytest.mark.parametrize("process, downsample", [("", 0), ("steps", 0), ("", 4)])
def test_grpo_raises_reward_on_its_training_prompts(tmp_path, process, downsample):
    # Outcome rewards alone, with process supervision from arith's step checker, and trained on half of each
    # group (PODS's max-variance down-sampling).
    task = small_task()
    cfg = base_cfg(tmp_path, max_steps=12, prompts_per_step=16, lr=2e-4, save_every=0, process_rewards=process,
                   downsample=downsample)
    tr = Trainer(cfg, task=task)
    before = mean_sampled_reward(tr, tr.train_examples)
    recs = [tr.step() for _ in range(cfg.max_steps)]
    after = mean_sampled_reward(tr, tr.train_examples)
    assert after >= before + 0.1, (before, after, [round(r["reward_mean"], 3) for r in recs])
    r = recs[-1]
    for key in ("reward_mean", "reward_std", "accuracy", "entropy", "grad_norm", "completion_len_mean",
                "truncation_rate", "repetition_rate", "zero_variance_groups", "clipped_low", "clipped_high",
                "sampler_gap_mean", "tokens_per_s", "time_generation_s", "time_scoring_s", "time_training_s"):
        assert key in r, key
    # The trainer learns on the sampler's own tokens: its log-probs agree with the sampler's.
    assert r["sampler_gap_max"] < 1e-3


def test_resume_after_a_stop_matches_the_uninterrupted_run(tmp_path):
    full = base_cfg(tmp_path / "a", max_steps=4, save_every=2)
    train(full, task=small_task())
    # The same run, stopped after step 2 (as a crash after the step-2 checkpoint would), then resumed.
    part = base_cfg(tmp_path / "b", max_steps=4, save_every=2)

    def crash(step, rec, tr):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(part, task=small_task(), on_step=crash)
    train(part, task=small_task())
    a = [json.loads(x) for x in open(tmp_path / "a" / "run" / "metrics.jsonl")]
    b = [json.loads(x) for x in open(tmp_path / "b" / "run" / "metrics.jsonl")]
    pick = lambda rows: {r["step"]: (r.get("reward_mean"), r.get("loss"), r.get("val_accuracy"))  # noqa: E731
                         for r in rows if r["step"] > 2 and "reward_mean" in r}
    assert pick(a) == pick(b) and len(pick(a)) == 2
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "a" / "run" / "checkpoints" / "step_4" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "run" / "checkpoints" / "step_4" / "model" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("cfg_cls,trainer_cls,extra", [
    (RLOOConfig, None, {}),
    (GRPOConfig, None, {"advantage": "reinforce_pp_baseline", "entropy_token_fraction": 0.2}),
    (GRPOConfig, None, {"advantage": "drgrpo", "loss_agg": "seq_mean_token_sum_norm", "ratio": "sequence",
                        "mu": 2, "eps_high": 0.28, "dual_clip": 3.0, "beta": 0.05, "entropy_coef": 0.001,
                        "dynamic_sampling": True, "overlong_filter": True, "overlong_buffer": 8,
                        "rollout_batch_size": 8}),  # a step's 16 rollouts decoded in two chunks
    (PPOConfig, PPOTrainer, {"beta": 0.02, "kl_target": 0.05}),
])
def test_variants_run_and_update_the_weights(tmp_path, cfg_cls, trainer_cls, extra):
    opts = dict(model="tiny", task="arith", out=str(tmp_path / "run"), max_steps=2, prompts_per_step=4,
                group_size=4, max_new_tokens=48, lr=1e-4, eval_limit=8, save_every=0, monitor="off", save_final=False)
    opts.update(extra)
    cfg = cfg_cls(**opts)
    tr = (trainer_cls or Trainer)(cfg, task=small_task())
    before = {k: v.detach().clone() for k, v in tr.model.named_parameters()}
    assert tr.policy.max_batch_size == cfg.rollout_batch_size
    recs = [tr.step() for _ in range(2)]
    changed = sum(not torch.equal(before[k], v) for k, v in tr.model.named_parameters())
    assert changed > 0
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in recs)
    if extra.get("beta"):
        assert "kl" in recs[-1] and recs[-1]["kl"] == recs[-1]["kl"]


@pytest.mark.filterwarnings("ignore:Detected call of")
@pytest.mark.parametrize("cfg_cls,trainer_cls", [(GRPOConfig, Trainer), (PPOConfig, PPOTrainer)])
def test_time_horizon_decays_the_rate_with_the_clock(tmp_path, cfg_cls, trainer_cls):
    # A run that its clock ends: with schedule_horizon=time the decay follows the share of max_minutes used
    # (set by train() after each step), not the step count, which here would hardly have moved.
    cfg = cfg_cls(**{**base_cfg(tmp_path).__dict__, "max_steps": 1000, "max_minutes": 10.0, "lr": 1e-3,
                     "lr_schedule": "linear", "warmup_steps": 2, "schedule_horizon": "time"})
    tr = trainer_cls(cfg, task=small_task())
    rates = []
    for used in (0.0, 0.0, 0.25, 0.5, 0.9, 1.0):
        tr.time_progress = used
        tr.scheduler.step()
        rates.append(tr.optimizer.param_groups[0]["lr"])
    # Steps 1-2 finish the warmup; then the rate falls with the clock; the step count alone (6 of 1000) would
    # still give about the peak.
    assert rates == pytest.approx([1e-3, 1e-3, 0.75e-3, 0.5e-3, 0.1e-3, 0.0], abs=1e-6)
    steps_only = trainer_cls(cfg_cls(**{**cfg.__dict__, "schedule_horizon": "steps"}), task=small_task())
    steps_only.time_progress = 0.9
    for _ in range(4):
        steps_only.scheduler.step()
    assert steps_only.optimizer.param_groups[0]["lr"] > 0.99e-3


def test_negative_advantage_scale_zero_trains_only_on_the_better_samples(tmp_path):
    tr = Trainer(base_cfg(tmp_path, negative_advantage_scale=0.0, prompts_per_step=4), task=small_task())
    before = {k: v.detach().clone() for k, v in tr.model.named_parameters()}
    rec = tr.step()
    better = [s.advantage > 0 for s in tr.last_samples]
    assert 0 < sum(better) < len(better)  # some groups had both right and wrong samples
    # Only the samples that beat their group's mean are trained on: the others carry no gradient.
    assert rec["trained_fraction"] == pytest.approx(sum(better) / len(better))
    assert any(not torch.equal(before[k], v) for k, v in tr.model.named_parameters())


def test_entropy_token_fraction_gates_the_policy_gradient(tmp_path, monkeypatch):
    from reasonlab.learn import losses

    kept = []
    real = losses.top_entropy_mask

    def spy(ent, mask, fraction):
        out = real(ent, mask, fraction)
        kept.append((float(out.sum()), float(mask.sum())))
        return out

    monkeypatch.setattr(losses, "top_entropy_mask", spy)
    tr = Trainer(base_cfg(tmp_path / "a", entropy_token_fraction=0.2, prompts_per_step=4), task=small_task())
    before = {k: v.detach().clone() for k, v in tr.model.named_parameters()}
    tr.step()
    assert kept and all(0.15 * n < k < 0.25 * n for k, n in kept)  # about a fifth of each micro-batch's tokens
    assert any(not torch.equal(before[k], v) for k, v in tr.model.named_parameters())
    # With no token kept there is no policy gradient at all: the weights do not move.
    monkeypatch.setattr(losses, "top_entropy_mask", lambda ent, mask, fraction: torch.zeros_like(ent))
    tr = Trainer(base_cfg(tmp_path / "b", entropy_token_fraction=0.2, prompts_per_step=4), task=small_task())
    before = {k: v.detach().clone() for k, v in tr.model.named_parameters()}
    tr.step()
    assert all(torch.equal(before[k], v) for k, v in tr.model.named_parameters())


@pytest.mark.parametrize("process", ["", "steps"])
def test_downsample_trains_on_the_max_variance_half_of_each_group(tmp_path, process):
    tr = Trainer(base_cfg(tmp_path, downsample=4, prompts_per_step=4, process_rewards=process), task=small_task())
    sampled = []
    collect = tr.collect_groups
    tr.collect_groups = lambda: sampled.append(collect()) or sampled[-1]
    before = {k: v.detach().clone() for k, v in tr.model.named_parameters()}
    rec = tr.step()
    full = {g[0].group: [s.reward for s in g] for g in sampled[0].groups}
    trained: dict[int, list] = {}
    for s in tr.last_samples:
        trained.setdefault(s.group, []).append(s)
    assert trained.keys() == full.keys() and all(len(g) == 4 for g in trained.values())
    assert any(0 < sum(r) < 8 for r in full.values())  # some groups were mixed
    for grp, g in trained.items():
        # The four whose rewards vary most: as near 2 right and 2 wrong as the group allows (k right of 8).
        k = sum(full[grp])
        assert sum(s.reward for s in g) == min(max(2, k - 4), k), (full[grp], [s.reward for s in g])
        assert sum(s.advantage for s in g) == pytest.approx(0.0, abs=1e-5)  # advantages within the four
    assert rec["trained_fraction"] <= 0.5  # of the step's 32 rollouts, at most 4 per group were trained on
    assert any(not torch.equal(before[k], v) for k, v in tr.model.named_parameters())


def fake_rollouts(trainer: Trainer, informative):
    """Replace ``trainer.rollout`` with one whose groups agree or not as ``informative(position)`` says, where
    ``position`` counts the prompts drawn so far in the run; returns the positions drawn."""
    from reasonlab.learn.rollout import Sample

    drawn: list[int] = []

    def rollout(examples, seed, group_offset=0):
        samples = []
        for g, e in enumerate(examples):
            drawn.append(len(drawn))
            rewards = [1.0, 0.0] * (trainer.cfg.group_size // 2) if informative(drawn[-1]) else [1.0] * trainer.cfg.group_size
            samples += [Sample(prompt_ids=[1, 2], completion_ids=[3, 4], sampler_logp=None, truncated=False,
                               group=group_offset + g, example=e, reward=r) for r in rewards]
        return samples, None, 0.0

    trainer.rollout = rollout
    return drawn


def test_dynamic_sampling_drops_agreeing_groups_and_refills(tmp_path):
    tr = Trainer(base_cfg(tmp_path, prompts_per_step=4, group_size=4, dynamic_sampling=True, max_sampling_rounds=3),
                 task=small_task())
    drawn = fake_rollouts(tr, lambda pos: pos % 2 == 0)
    got = tr.collect_groups()
    # Round 1: 4 prompts, 2 informative; round 2: the 2 missing, 1 informative; round 3: the last one.
    assert (len(got.groups), got.rounds, got.groups_seen, got.zero_variance_groups, len(drawn), tr.index) == \
        (4, 3, 7, 3, 7, 7)
    assert all(len({s.reward for s in g}) == 2 for g in got.groups)
    # The round cap ends the search with fewer groups; without dynamic sampling nothing is dropped.
    tr.index = 0
    fake_rollouts(tr, lambda pos: pos == 0)
    got = tr.collect_groups()
    assert (len(got.groups), got.rounds, got.groups_seen) == (1, 3, 4 + 3 + 3)
    tr.cfg = replace(tr.cfg, dynamic_sampling=False)
    fake_rollouts(tr, lambda pos: pos == 0)
    got = tr.collect_groups()
    assert (len(got.groups), got.rounds, got.groups_seen, got.zero_variance_groups) == (4, 1, 4, 3)


def test_dynamic_sampling_deals_the_groups_found_over_processes(tmp_path, monkeypatch):
    # Process 1 of 2: the groups every process found are pooled, cut to the batch and dealt out alternately.
    import reasonlab.runtime.distributed as dist

    from reasonlab.learn.rollout import Sample
    from reasonlab.runtime.distributed import World

    tr = Trainer(base_cfg(tmp_path, prompts_per_step=4, group_size=2, dynamic_sampling=True), task=small_task())
    tr.world = World(rank=1, size=2)
    grp = lambda name: [Sample([1], [2], None, False, 0, example=name, reward=r) for r in (0.0, 1.0)]  # noqa: E731
    monkeypatch.setattr(dist, "gather", lambda obj, world: [[grp("a"), grp("b"), grp("c")], obj])
    assert [g[0].example for g in tr.deal_groups([grp("d"), grp("e")], [])] == ["b", "d"]
    # Fewer groups than processes: this one trains on a copy of a dropped group of its own, with loss weight 0.
    monkeypatch.setattr(dist, "gather", lambda obj, world: [[grp("a")], obj])
    spare = grp("z")
    (mine,) = tr.deal_groups([], [spare])
    assert [s.example for s in mine] == ["z", "z"] and all(s.loss_weight_scale == 0.0 for s in mine)
    assert all(s.loss_weight_scale == 1.0 for s in spare)


def test_soft_overlong_penalty():
    assert soft_overlong_penalty(70, 100, 20) == 0.0
    assert soft_overlong_penalty(80, 100, 20) == 0.0
    assert soft_overlong_penalty(90, 100, 20) == pytest.approx(-0.5)
    assert soft_overlong_penalty(95, 100, 20) == pytest.approx(-0.75)
    assert soft_overlong_penalty(100, 100, 20) == pytest.approx(-1.0)
    assert soft_overlong_penalty(130, 100, 20, penalty=0.5) == pytest.approx(-0.5)
    assert soft_overlong_penalty(99, 100, 0) == 0.0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="advantage"):
        GRPOConfig(advantage="ppo2")
    with pytest.raises(ValueError, match="loss_agg"):
        GRPOConfig(loss_agg="sum")
    with pytest.raises(ValueError, match="rollout_batch_size"):
        GRPOConfig(rollout_batch_size=0)
    with pytest.raises(ValueError, match="rloo needs"):
        RLOOConfig(group_size=1)
    with pytest.raises(ValueError, match="schedule_horizon"):
        GRPOConfig(schedule_horizon="epochs")
    with pytest.raises(ValueError, match="max_minutes"):
        GRPOConfig(lr_schedule="linear", schedule_horizon="time")
    with pytest.raises(ValueError, match="lr must be > 0"):
        GRPOConfig(lr=-1e-5)
    # Greedy rollouts have no log-probs to follow: one PPO step at T = 0 once took tiny from 65.8% to 0%.
    with pytest.raises(ValueError, match="temperature must be > 0"):
        PPOConfig(temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        GRPOConfig(top_p=0.0)
    with pytest.raises(ValueError, match="entropy_token_fraction"):
        GRPOConfig(entropy_token_fraction=0.0)
    for bad in (1, 9):
        with pytest.raises(ValueError, match="downsample must be 0 .off. or 2..group_size=8"):
            GRPOConfig(downsample=bad)
    # GRPO-only settings that PPO's step never reads are refused, not silently ignored.
    with pytest.raises(ValueError, match="PPO does not use entropy_token_fraction=0.2, negative_advantage_scale=0.5"):
        PPOConfig(entropy_token_fraction=0.2, negative_advantage_scale=0.5)
    with pytest.raises(ValueError, match="PPO does not use downsample=2"):
        PPOConfig(downsample=2)
    with pytest.raises(ValueError, match="max_grad_norm"):
        GRPOConfig(max_grad_norm=-1.0)
    with pytest.raises(UsageError, match="unknown reward"):
        Trainer(GRPOConfig(rewards="accuracy,bogus", monitor="off"), task=small_task())


@pytest.fixture
def fake_rewards(monkeypatch):
    mod = types.ModuleType("fake_rewards")
    calls = {"n": 0}

    def broken(prompts, completions, **kw):
        raise ZeroDivisionError("boom")

    def hack_after_step_3(prompts, completions, **kw):
        # Rewards look normal (noisy, centred) for 3 steps, then jump to 5 for everything: a "hack".
        calls["n"] += 1
        g = torch.Generator().manual_seed(calls["n"])
        if calls["n"] > 3:
            return [5.0] * len(completions)
        return [float(x) for x in torch.rand(len(completions), generator=g) * 0.2]

    mod.broken, mod.hack = broken, hack_after_step_3
    monkeypatch.setitem(sys.modules, "fake_rewards", mod)
    return calls


def test_failing_reward_function_is_named_or_skipped(tmp_path, fake_rewards):
    cfg = base_cfg(tmp_path, rewards="accuracy,fake_rewards:broken", max_steps=1)
    with pytest.raises(RewardError, match="'fake_rewards:broken' failed: ZeroDivisionError: boom"):
        Trainer(cfg, task=small_task()).step()
    cfg = base_cfg(tmp_path, rewards="accuracy,fake_rewards:broken", reward_on_error="skip", max_steps=1)
    rec = Trainer(cfg, task=small_task()).step()
    assert rec["reward/fake_rewards:broken/errors"] == 1
    assert rec["reward_mean"] == pytest.approx(rec["reward/accuracy"])  # scored without the broken one


def test_monitor_rolls_back_on_a_reward_jump(tmp_path, fake_rewards):
    monitor = ("{monitor_warmup: 2, reward_jump_k: 4, reward_jump_action: rollback, entropy_action: 'off', "
               "length_action: 'off', grad_action: 'off', kl_action: 'off', max_rollbacks: 1}")
    cfg = base_cfg(tmp_path, rewards="fake_rewards:hack", max_steps=5, save_every=1, keep_last=0, monitor=monitor,
                   prompts_per_step=4, group_size=4)
    summary = train(cfg, task=small_task())
    run = tmp_path / "run"
    events = [json.loads(x) for x in open(run / "anomalies.jsonl")]
    assert any(e.get("kind") == "reward_jump" for e in events)
    rb = [e for e in events if e.get("event") == "rollback"]
    assert rb and rb[0]["restored_step"] == 3
    dumps = list((run / "anomalies").glob("step_4_reward_jump.jsonl"))
    assert dumps and json.loads(dumps[0].read_text().splitlines()[0])["reward"] == 5.0
    assert summary["steps"] <= 5


def test_skipping_zero_advantage_samples_gives_the_same_update(tmp_path, monkeypatch, grads_at_step):
    import reasonlab.learn.rollout as rollout

    def run(skip: bool):
        # The flat layout, whose micro-batching the patch below reaches (test_grpo_share covers the shared one).
        cfg = base_cfg(tmp_path / str(skip), max_steps=1, prompts_per_step=8, group_size=4, share_prompt=False,
                       merge_twins=False)
        tr = Trainer(cfg, task=small_task())
        grads = grads_at_step(tr)
        return tr.step(), grads

    rec_skip, g_skip = run(True)
    full = rollout.make_microbatches
    monkeypatch.setattr(rollout, "make_microbatches", lambda s, rows, pad, include=None: full(s, rows, pad))
    rec_all, g_all = run(False)
    assert rec_skip["trained_fraction"] < 1.0  # some groups agreed, so something was skipped
    assert rec_skip["reward_mean"] == rec_all["reward_mean"]
    assert g_skip and g_skip.keys() == g_all.keys()
    for k in g_skip:
        torch.testing.assert_close(g_skip[k], g_all[k], atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("algo, share, process", [("grpo", False, ""), ("grpo", True, ""), ("grpo", True, "steps"),
                                                   ("ppo", False, ""), ("ppo", False, "steps")])
def test_merging_twin_completions_gives_the_same_update(tmp_path, grads_at_step, algo, share, process):
    ppo = algo == "ppo"

    def run(merge: bool):
        cfg = base_cfg(tmp_path / str(merge), max_steps=1, prompts_per_step=8, group_size=8, share_prompt=share,
                       process_rewards=process, merge_twins=merge)
        if ppo:  # with a KL penalty in the token rewards (and the adaptive controller) and 2 epochs
            cfg = PPOConfig(**{**vars(cfg), "beta": 0.02, "kl_target": 0.05, "mu": 2})
        tr = (PPOTrainer if ppo else Trainer)(cfg, task=small_task())
        grads = grads_at_step(tr)
        return tr.step(), grads

    rec_m, g_m = run(True)
    rec_u, g_u = run(False)
    # tiny samples the same completion of a prompt several times: those rows were trained once, weights summed.
    assert rec_m["twin_fraction"] > 0.2 and rec_u["twin_fraction"] == 0.0
    assert rec_m["reward_mean"] == rec_u["reward_mean"]
    keys = ("loss", "entropy", "clipped_low") + (("kl", "value_mean", "value_loss") if ppo else ("trained_fraction",))
    for k in keys:  # sample averages count the merged twins
        assert rec_m[k] == pytest.approx(rec_u[k], rel=1e-4, abs=1e-9), k
    assert g_m and g_m.keys() == g_u.keys()
    for k in g_m:
        torch.testing.assert_close(g_m[k], g_u[k], atol=1e-7, rtol=1e-4)
