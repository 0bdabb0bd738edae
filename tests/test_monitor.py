"""The anomaly monitor: each detector fires on a synthetic stream and stays quiet on a healthy noisy
one; cooldown, NaN, sample dumps, exact state round trip, and rollback restoring a checkpoint."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from reasonlab.config import build
from reasonlab.errors import UsageError
from reasonlab.runtime.checkpoint import save_checkpoint
from reasonlab.runtime.monitor import (
    Anomaly,
    Monitor,
    MonitorConfig,
    detect_reward_jump,
    last_good_checkpoint,
    robust_std,
    rollback,
)


def healthy_stream(n: int = 200, seed: int = 0) -> list[dict[str, float]]:
    """What a run that learns looks like: reward rising slowly with batch noise, entropy and KL drifting,
    lengths growing slowly, gradient norms log-normally noisy."""
    rng = random.Random(seed)
    out = []
    for t in range(n):
        out.append({
            "reward_mean": min(1.0, 0.2 + 0.003 * t + rng.gauss(0, 0.05)),
            "entropy": 1.0 - 0.002 * t + rng.gauss(0, 0.03),
            "kl": 0.0005 * t + abs(rng.gauss(0, 0.01)),
            "completion_len_mean": 60 + 0.2 * t + rng.gauss(0, 4),
            "truncation_rate": max(0.0, rng.gauss(0.05, 0.02)),
            "grad_norm": math.exp(rng.gauss(0, 0.5)),
            "loss": rng.gauss(0, 0.1),
        })
    return out


def run(monitor: Monitor, stream: list[dict[str, float]], start: int = 0) -> list[Anomaly]:
    fired = []
    for i, m in enumerate(stream[start:], start=start):
        fired += monitor.update(i, m)
    return fired


def with_event(key: str, at: int, value: float, n: int = 60) -> list[dict[str, float]]:
    stream = healthy_stream(n)
    stream[at] = {**stream[at], key: value}
    return stream


def test_healthy_noisy_stream_fires_nothing():
    for seed in range(3):
        assert run(Monitor(), healthy_stream(200, seed)) == []


@pytest.mark.parametrize("key,value,kind", [
    ("reward_mean", 0.95, "reward_jump"),
    ("entropy", 0.05, "entropy_collapse"),
    ("kl", 3.0, "kl_blowup"),
    ("completion_len_mean", 300.0, "length_explosion"),
    ("completion_len_mean", 10.0, "length_collapse"),
    ("truncation_rate", 0.8, "length_explosion"),
    ("grad_norm", 40.0, "grad_explosion"),
    ("loss", float("nan"), "nan"),
    ("grad_norm", float("inf"), "nan"),
])
def test_each_detector_fires_on_its_event(key, value, kind):
    fired = run(Monitor(), with_event(key, 40, value))
    assert [(a.kind, a.step) for a in fired] == [(kind, 40)]
    assert fired[0].message and fired[0].action in ("warn", "stop")


def test_baseline_detectors_wait_for_warmup():
    cfg = MonitorConfig(monitor_warmup=10)
    # A leap at step 5 has no baseline to be measured against yet...
    assert run(Monitor(cfg), with_event("reward_mean", 5, 0.95)) == []
    # ...but absolute thresholds need none.
    assert [a.kind for a in run(Monitor(cfg), with_event("kl", 2, 5.0))] == ["kl_blowup"]


def test_reward_jump_robust_scale_and_absolute_threshold():
    cfg = MonitorConfig(monitor_warmup=5, reward_jump_k=6, reward_jump_min_std=0.01)
    flat_noisy = [0.5, 0.52, 0.48, 0.51, 0.49, 0.5]
    assert robust_std(flat_noisy) == pytest.approx(1.4826 * 0.01)
    assert detect_reward_jump(cfg, 0.55, flat_noisy) is None        # ~3.4 robust std: noise
    assert detect_reward_jump(cfg, 0.65, flat_noisy)[0] == "reward_jump"  # ~10 robust std
    assert detect_reward_jump(cfg, 0.2, flat_noisy) is None         # falling reward is not hacking
    # A flat history (MAD 0) uses the minimum std instead of calling every change a jump.
    flat = [0.0] * 6
    assert detect_reward_jump(MonitorConfig(monitor_warmup=5), 0.2, flat) is None
    assert detect_reward_jump(MonitorConfig(monitor_warmup=5), 0.31, flat) is not None
    # The absolute rule fires where k * std would not.
    loose = MonitorConfig(monitor_warmup=5, reward_jump_k=100, reward_jump_abs=0.1)
    assert detect_reward_jump(loose, 0.65, flat_noisy)[0] == "reward_jump"
    assert detect_reward_jump(loose, 0.58, flat_noisy) is None


def test_running_baseline_adapts_to_a_level_shift():
    # The reward steps up once and stays there: one report, then the window takes the new level in.
    stream = [{"reward_mean": (0.2 if t < 40 else 0.6) + 0.001 * (t % 3)} for t in range(120)]
    assert [(a.kind, a.step) for a in run(Monitor(MonitorConfig(monitor_cooldown=10)), stream)] == [("reward_jump", 40)]


def test_entropy_slow_decline_vs_collapse_and_floor():
    # Declining to 20% of the early value is fine with drop=0.9; 5% is a collapse.
    stream = [{"entropy": 1.0 - 0.8 * t / 99} for t in range(100)]
    assert run(Monitor(), stream) == []
    stream.append({"entropy": 0.05})
    assert [a.kind for a in run(Monitor(), stream)] == ["entropy_collapse"]
    floor = run(Monitor(MonitorConfig(entropy_floor=0.5, entropy_drop=0)), [{"entropy": 1.0}, {"entropy": 0.4}])
    assert [(a.kind, a.step) for a in floor] == [("entropy_collapse", 1)]


def test_cooldown_reports_one_event_once():
    stream = healthy_stream(60)
    for t in range(30, 60):  # KL stays blown up for 30 steps
        stream[t]["kl"] = 5.0
    fired = run(Monitor(MonitorConfig(monitor_cooldown=10)), stream)
    assert [a.step for a in fired] == [30, 40, 50]
    assert [a.step for a in run(Monitor(MonitorConfig(monitor_cooldown=0)), stream)] == list(range(30, 60))


def test_actions_decision_and_off():
    cfg = MonitorConfig(kl_action="rollback", grad_action="stop", reward_jump_action="off")
    stream = healthy_stream(60)
    stream[40] = {**stream[40], "kl": 5.0, "grad_norm": 50.0, "reward_mean": 0.99}
    m = Monitor(cfg)
    fired = run(m, stream)
    assert {a.kind: a.action for a in fired} == {"kl_blowup": "rollback", "grad_explosion": "stop"}
    assert m.decision(fired) == "rollback"
    assert m.decision([a for a in fired if a.action == "stop"]) == "stop"
    assert m.decision([]) is None
    with pytest.raises(ValueError, match="kl_action"):
        MonitorConfig(kl_action="explode")
    with pytest.raises(UsageError, match="kl_action"):  # as a YAML / flag value
        build(MonitorConfig, {"kl_action": "explode"})


def test_rollback_limit_turns_into_stop():
    m = Monitor(MonitorConfig(kl_action="rollback", max_rollbacks=1, monitor_cooldown=10))
    for t in range(3):
        m.update(t, {"kl": 0.01})
    assert m.update(3, {"kl": 5.0})[0].action == "rollback"
    m.rewind(2)  # back to step 2: the cooldown started at step 3 is lifted, the trouble is seen again
    second = m.update(3, {"kl": 5.0})
    assert second[0].action == "stop" and "limit" in second[0].message and m.decision(second) == "stop"


def test_nan_is_reported_and_kept_out_of_baselines():
    stream = healthy_stream(60)
    stream[30]["reward_mean"] = float("nan")
    m = Monitor()
    fired = run(m, stream)
    assert [(a.kind, a.step) for a in fired] == [("nan", 30)]
    assert "reward_mean=nan" in fired[0].message and fired[0].action == "stop"
    assert all(math.isfinite(v) for _, v in m.state_dict()["history"]["reward"])
    with pytest.raises(UsageError, match="must be a number"):
        Monitor().update(0, {"kl": "high"})


def test_missing_metrics_are_skipped_and_torch_scalars_accepted():
    m = Monitor()
    assert m.update(0, {"loss": torch.tensor(0.5)}) == []  # no kl logged (beta = 0): nothing to check
    assert [a.kind for a in m.update(1, {"kl": torch.tensor(7.0)})] == ["kl_blowup"]


def test_reward_jump_dumps_samples_and_records(tmp_path):
    m = Monitor(run_dir=tmp_path)
    stream = healthy_stream(50)
    stream[45]["reward_mean"] = 0.99
    samples = [{"prompt": f"p{i}", "completion": "<answer>42</answer>" * 3, "rewards": {"accuracy": 1.0}}
               for i in range(4)]
    fired = []
    for t, metrics in enumerate(stream):
        fired += m.update(t, metrics, samples=samples)
    assert [(a.kind, a.step) for a in fired] == [("reward_jump", 45)]
    dump = tmp_path / "anomalies" / "step_45_reward_jump.jsonl"
    assert fired[0].samples_file == "anomalies/step_45_reward_jump.jsonl"
    assert [json.loads(line) for line in dump.read_text().splitlines()] == samples
    assert sorted(p.name for p in (tmp_path / "anomalies").iterdir()) == ["step_45_reward_jump.jsonl"]
    records = [json.loads(line) for line in (tmp_path / "anomalies.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["kind"] == "reward_jump" and records[0]["step"] == 45
    assert records[0]["samples_file"] == "anomalies/step_45_reward_jump.jsonl"

    # A run resumed from a checkpoint at step 40 drops the records of the steps it will redo.
    Monitor(run_dir=tmp_path, resume_step=40)
    assert (tmp_path / "anomalies.jsonl").read_text() == ""


def test_state_dict_round_trip_fires_like_uninterrupted():
    stream = healthy_stream(150, seed=1)
    for t, (k, v) in {50: ("reward_mean", 0.99), 52: ("grad_norm", 30.0), 80: ("completion_len_mean", 5.0),
                      81: ("kl", 2.0), 120: ("entropy", 0.01), 125: ("kl", 3.0)}.items():
        stream[t][k] = v
    for t in range(95, 115):  # a lasting KL blow-up, reported again each time the cooldown ends
        stream[t]["kl"] = 4.0
    cfg = MonitorConfig(monitor_cooldown=15)
    whole = run(Monitor(cfg), stream)
    assert {a.kind for a in whole} == {"reward_jump", "grad_explosion", "length_collapse", "kl_blowup", "entropy_collapse"}
    assert [a.step for a in whole if a.kind == "kl_blowup"] == [81, 96, 111]  # 125 falls in the cooldown

    for cut in (5, 30, 51, 90, 100, 121):  # in the warmup, in cooldowns, mid-window
        first = Monitor(cfg)
        head = run(first, stream[:cut])
        state = json.loads(json.dumps(first.state_dict()))  # as it travels through a checkpoint
        resumed = Monitor(cfg)
        resumed.load_state_dict(state)
        assert head + run(resumed, stream, start=cut) == whole, cut
    with pytest.raises(UsageError, match="monitor state"):
        Monitor().load_state_dict({"history": {}})


def test_rollback_restores_checkpoint_and_lowers_lr(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    def train_step():
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
        sched.step()

    train_step()
    train_step()
    save_checkpoint(tmp_path, 2, model=model, optimizer=opt, scheduler=sched, data_state={"pos": 2}, keep_last=0)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(3):  # steps 3..5 run on; the checkpoint at step 5 already carries the anomaly
        train_step()
    save_checkpoint(tmp_path, 5, model=model, optimizer=opt, scheduler=sched, data_state={"pos": 5}, keep_last=0)
    with torch.no_grad():
        model.weight.add_(100.0)
    assert not torch.equal(model.weight, saved["weight"])

    monitor = Monitor(MonitorConfig(kl_action="rollback"), run_dir=tmp_path)
    for t in range(6):
        monitor.update(t, {"kl": 0.01})
    assert monitor.decision(monitor.update(5, {"kl": 9.0})) == "rollback"

    step = rollback(tmp_path, model, opt, sched, lr_factor=0.25, before_step=5, monitor=monitor)
    assert step == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(2.5e-3)]
    assert sched.base_lrs == [pytest.approx(2.5e-3)]
    sched.step()  # the scheduler recomputes lr from base_lrs: the lowering survives it
    assert opt.param_groups[0]["lr"] == pytest.approx(2.5e-3)
    # The checkpoint saved after the anomaly is gone, so a crash cannot resume from it.
    assert last_good_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_2"
    assert monitor.rollbacks == 1
    assert all(s <= 2 for s, _ in monitor.state_dict()["history"]["kl"])
    events = [json.loads(line) for line in (tmp_path / "anomalies.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["anomaly", "rollback"]
    assert events[1]["restored_step"] == 2 and events[1]["lr_factor"] == 0.25

    # Nothing saved before step 2: no rollback, and nothing touched.
    assert rollback(tmp_path, model, opt, sched, before_step=2, monitor=monitor) is None
    assert opt.param_groups[0]["lr"] == pytest.approx(2.5e-3) and monitor.rollbacks == 1
    assert last_good_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_2"
    with pytest.raises(UsageError, match="lr_factor"):
        rollback(tmp_path, model, opt, sched, lr_factor=0)
