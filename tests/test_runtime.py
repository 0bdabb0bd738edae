"""Run directories, crash-safe JSONL, atomic JSON, checkpoints with exact RNG/optimizer restore, metrics."""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from reasonlab.errors import DataError, UsageError
from reasonlab.runtime import MetricsLogger, RunDir, latest_checkpoint, load_checkpoint, save_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class _Cfg:
    lr: float = 0.1
    """Learning rate."""
    log_every: int = 10
    """Harmless field."""


# -- RunDir --------------------------------------------------------------------------------------


def test_jsonl_survives_truncated_last_line(tmp_path):
    run = RunDir(tmp_path / "run")
    for i in range(3):
        run.append_jsonl("m.jsonl", {"step": i, "loss": 1.0 / (i + 1)})
    with open(run / "m.jsonl", "a") as f:  # a crash in the middle of writing record 3
        f.write('{"step": 3, "lo')
    assert [r["step"] for r in run.read_jsonl("m.jsonl")] == [0, 1, 2]

    # A new process appending after the crash: the partial line is removed, not glued onto.
    again = RunDir(tmp_path / "run")
    again.append_jsonl("m.jsonl", {"step": 3, "loss": 0.25})
    recs = again.read_jsonl("m.jsonl")
    assert [r["step"] for r in recs] == [0, 1, 2, 3] and recs[-1]["loss"] == 0.25
    assert (run / "m.jsonl").read_text().endswith("\n")
    assert run.read_jsonl("missing.jsonl") == []


def test_jsonl_corrupt_middle_line_is_an_error(tmp_path):
    run = RunDir(tmp_path)
    (run / "m.jsonl").write_text('{"a": 1}\nnot json\n{"a": 3}\n')
    with pytest.raises(DataError, match="line 2"):
        run.read_jsonl("m.jsonl")


def test_write_json_is_atomic(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    run.write_json("summary.json", {"a": 1})
    assert json.loads((run / "summary.json").read_text()) == {"a": 1}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        run.write_json("summary.json", {"a": 2})
    # The old file is intact and no temporary file is left behind.
    assert json.loads((run / "summary.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_rundir_config_written_and_changes_warned(tmp_path, caplog):
    RunDir(tmp_path / "r", config=_Cfg())
    assert "lr: 0.1" in (tmp_path / "r" / "config.yaml").read_text()
    # Only a config: a run that failed before writing anything. It is reused without a word, even with resume=False.
    with caplog.at_level(logging.WARNING):
        RunDir(tmp_path / "r", config=_Cfg(lr=0.3), resume=False)
    assert not caplog.records and "lr: 0.3" in (tmp_path / "r" / "config.yaml").read_text()
    RunDir(tmp_path / "r", config=_Cfg())
    (tmp_path / "r" / "metrics.jsonl").write_text("{}\n")  # now it holds results
    with caplog.at_level(logging.WARNING):
        RunDir(tmp_path / "r", config=_Cfg(log_every=5))  # harmless: no warning
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        RunDir(tmp_path / "r", config=_Cfg(lr=0.2))
    assert any("lr: 0.1 -> 0.2" in r.getMessage() for r in caplog.records)
    assert "lr: 0.2" in (tmp_path / "r" / "config.yaml").read_text()
    with pytest.raises(UsageError, match="already holds a run"):
        RunDir(tmp_path / "r", config=_Cfg(), resume=False)


# -- checkpoints ---------------------------------------------------------------------------------


class _Net(torch.nn.Module):
    """A small net with tied weights (like tied embeddings) to check they survive a roundtrip."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 8)
        self.fc1 = torch.nn.Linear(8, 8)
        self.out = torch.nn.Linear(8, 10, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x):
        return self.out(torch.relu(self.fc1(self.emb(x))))


def _train_step(net, opt, sched):
    x = torch.randint(0, 10, (4, 5))
    loss = torch.nn.functional.cross_entropy(net(x).reshape(-1, 10), x.reshape(-1))
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def _draws():
    return (random.random(), float(np.random.rand()), torch.rand(3).tolist())


def _make():
    torch.manual_seed(0)
    net = _Net()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return net, opt, sched


def test_checkpoint_roundtrip_restores_model_optimizer_scheduler_rng(tmp_path):
    net, opt, sched = _make()
    for _ in range(3):
        _train_step(net, opt, sched)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = save_checkpoint(tmp_path, 3, model=net, optimizer=opt, scheduler=sched,
                           data_state={"epoch": 1, "index": 7}, extra={"note": "x"})
    assert path.name == "step_3" and latest_checkpoint(tmp_path) == path
    saved_weights = {k: v.clone() for k, v in net.state_dict().items()}
    saved_lr = opt.param_groups[0]["lr"]
    draws_after_save = _draws()
    _train_step(net, opt, sched)  # move everything on
    after_one_more = {k: v.clone() for k, v in net.state_dict().items()}

    # Restore into freshly built objects (as a resumed process would).
    net2, opt2, sched2 = _make()
    torch.manual_seed(99)
    step, data_state, extra = load_checkpoint(path, model=net2, optimizer=opt2, scheduler=sched2)
    assert (step, data_state, extra) == (3, {"epoch": 1, "index": 7}, {"note": "x"})
    for k, v in net2.state_dict().items():
        assert torch.equal(v, saved_weights[k]), k
    assert net2.out.weight is net2.emb.weight  # still tied
    assert opt2.param_groups[0]["lr"] == saved_lr and sched2.last_epoch == 3
    assert _draws() == draws_after_save
    # ...and the next step is bit-identical to the one the original objects took (the original
    # drew once after saving, then stepped: replay that from a fresh restore).
    load_checkpoint(path, model=net2, optimizer=opt2, scheduler=sched2)
    _draws()
    _train_step(net2, opt2, sched2)
    for k, v in net2.state_dict().items():
        assert torch.equal(v, after_one_more[k]), k


def test_pruning_keeps_last_k_and_incomplete_ignored(tmp_path):
    net, opt, sched = _make()
    for s in range(1, 6):
        save_checkpoint(tmp_path, s, model=net, optimizer=opt, scheduler=sched, data_state={}, keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_4", "step_5"]

    # A crash mid-save leaves a temporary dir; a copied/partial step dir lacks state.json.
    (tmp_path / "checkpoints" / ".tmp-step_6-123" / "model").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step_9" / "model").mkdir(parents=True)
    assert latest_checkpoint(tmp_path).name == "step_5"
    with pytest.raises(UsageError, match="not a complete checkpoint"):
        load_checkpoint(tmp_path / "checkpoints" / "step_9", model=net)
    save_checkpoint(tmp_path, 6, model=net, data_state={}, keep_last=0)
    assert not (tmp_path / "checkpoints" / ".tmp-step_6-123").exists()
    assert latest_checkpoint(tmp_path).name == "step_6"
    assert latest_checkpoint(tmp_path / "nowhere") is None


def test_peft_checkpoint_holds_only_the_adapter(tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(_Net(), LoraConfig(r=2, target_modules=["fc1"], init_lora_weights=False))
    save_checkpoint(tmp_path, 1, model=model, data_state={})
    files = sorted(p.name for p in (tmp_path / "checkpoints" / "step_1" / "model").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors"]
    lora = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}
    assert lora
    torch.manual_seed(1)
    model2 = get_peft_model(_Net(), LoraConfig(r=2, target_modules=["fc1"], init_lora_weights=False))
    load_checkpoint(tmp_path / "checkpoints" / "step_1", model=model2)
    for k, v in model2.state_dict().items():
        if "lora_" in k:
            assert torch.equal(v, lora[k]), k


# -- metrics -------------------------------------------------------------------------------------


def test_metrics_logger_jsonl_tensorboard_and_resume(tmp_path):
    with MetricsLogger(tmp_path, console=False) as m:
        for s in range(1, 6):
            m.log(s, {"loss": 1.0 / s, "lr": torch.tensor(0.5), "note": "text"})
    recs = RunDir(tmp_path).read_jsonl("metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5]
    assert recs[1]["loss"] == 0.5 and recs[0]["lr"] == 0.5 and recs[0]["note"] == "text"
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tensorboard").iterdir())

    # Resuming from step 3: the records of steps 4-5 will be logged again, so they are dropped.
    with MetricsLogger(tmp_path, tensorboard=False, console=False, resume_step=3) as m:
        m.log(4, {"loss": 0.1})
    assert [(r["step"], r["loss"]) for r in RunDir(tmp_path).read_jsonl("metrics.jsonl")][2:] == [(3, 1 / 3), (4, 0.1)]
