"""Data-parallel RL on CPU (gloo): two processes, each on half of every batch.

- the helpers: in-place gradient sums, metric merging, batch-normalised loss weights;
- a two-process GRPO run keeps the processes' weights identical (the gradients are summed before each
  optimizer step), writes one run directory and returns the main process's summary, and resumes;
- killing the caller ends its launcher and workers (no orphans holding the cores).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from reasonlab.learn import losses
from reasonlab.learn.grpo import GRPOConfig, train
from reasonlab.runtime.distributed import World, all_reduce_sum_, gather, launch, mean_metrics


def test_single_process_helpers_are_no_ops_and_metrics_merge():
    t = [torch.ones(3)]
    all_reduce_sum_(t, World())
    assert torch.equal(t[0], torch.ones(3)) and gather({"a": 1}, World()) == [{"a": 1}]
    merged = mean_metrics([{"reward_mean": 0.2, "completion_len_max": 10, "verifier_timeouts": 1, "loss": 0.5,
                            "tokens_per_s": 100.0, "note": "x"},
                           {"reward_mean": 0.4, "completion_len_max": 30, "verifier_timeouts": 2, "loss": 0.25,
                            "tokens_per_s": 50.0, "note": "y"}])
    assert merged["reward_mean"] == pytest.approx(0.3) and merged["completion_len_max"] == 30
    assert merged["verifier_timeouts"] == 3 and merged["loss"] == pytest.approx(0.75)
    assert merged["tokens_per_s"] == pytest.approx(150.0) and merged["note"] == "x"


def test_shares_weighted_by_the_whole_batch_sum_to_the_batch_loss():
    # Two shares of a batch of 4 sequences: with the whole batch's counts, the shares' weighted sums add
    # up to the one-process batch loss, for every aggregation.
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    loss = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    for how in losses.AGGREGATIONS:
        whole = (losses.token_weights(mask, how, max_len=4) * loss).sum()
        parts = sum((losses.token_weights(mask[i:i + 2], how, max_len=4, n_seqs=4, n_tokens=float(mask.sum()))
                     * loss[i:i + 2]).sum() for i in (0, 2))
        assert parts == pytest.approx(float(whole)), how


def _weights_digest(cfg: GRPOConfig) -> list[str]:
    """Run in each process: train, then every process's weight digest (gathered)."""
    from reasonlab.learn.grpo import Trainer
    from reasonlab.runtime.distributed import close_world

    tr = Trainer(cfg)
    recs = [tr.step() for _ in range(2)]
    h = hashlib.sha256()
    for _, p in sorted(tr.model.named_parameters()):
        h.update(p.detach().numpy().tobytes())
    out = gather((h.hexdigest(), recs[-1]["reward_mean"], tr.index, [r["sampling_rounds"] for r in recs]), tr.world)
    close_world(tr.world)
    return out


def small_cfg(tmp_path, **kw) -> GRPOConfig:
    opts = dict(model="tiny", task="arith", task_options="{min_ops: 2, max_ops: 3, train_size: 64, test_size: 16}",
                out=str(tmp_path / "run"), max_steps=2, prompts_per_step=8, group_size=4, max_new_tokens=48,
                lr=1e-4, eval_limit=8, save_every=1, monitor="off", save_final=False, seed=0, nproc=2)
    opts.update(kw)
    return GRPOConfig(**opts)


@pytest.mark.parametrize("dynamic", [False, True])
def test_two_processes_keep_identical_weights(tmp_path, monkeypatch, dynamic):
    # With dynamic sampling the processes also take the same number of rounds from the summed count, so their
    # data positions stay equal, and train on the informative groups dealt out from all of them.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    digests = launch(2, _weights_digest, small_cfg(tmp_path, dynamic_sampling=dynamic, max_sampling_rounds=4))
    assert len(digests) == 2 and digests[0][0] == digests[1][0]
    assert digests[0][2:] == digests[1][2:]
    if dynamic:
        assert max(digests[0][3]) > 1 and digests[0][2] > 2 * 8  # some groups agreed, and more prompts were drawn


def test_two_process_run_writes_one_run_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    summary = train(small_cfg(tmp_path, max_steps=2))
    assert summary["steps"] == 2 and set(summary["val_accuracy_by_step"]) == {0, 2}
    assert summary["rollouts"] == 2 * 8 * 4  # both processes' rollouts: 2 steps of 8 prompts x 4
    run = tmp_path / "run"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert sum('"reward_mean"' in ln for ln in lines) == 2  # one record per step, from the main process only
    summary = train(small_cfg(tmp_path, max_steps=3))  # resumes from step 2's checkpoint
    assert summary["steps"] == 3


def test_bad_settings_are_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="split evenly"):
        small_cfg(tmp_path, prompts_per_step=3)
    # An error inside the processes comes back to the caller as itself, not as a launcher failure.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    from reasonlab.errors import UsageError

    with pytest.raises(UsageError, match="no_such_task"):
        train(small_cfg(tmp_path, task="no_such_task", task_options=""))
    # A run directory refused by the main process (resume off) is the same one message, from every process.
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.yaml").write_text("model: tiny\n")
    (tmp_path / "taken" / "metrics.jsonl").write_text("")
    with pytest.raises(UsageError, match="already holds a run"):
        train(small_cfg(tmp_path, out=str(tmp_path / "taken"), resume=False))


class NeedsArgs(Exception):
    """Pickles, but does not unpickle (its pickle calls ``NeedsArgs(message)``): like torch's ChildFailedError."""

    def __init__(self, name, failures):
        super().__init__(f"{name}: {failures}")


def test_exceptions_that_do_not_unpickle_come_back_as_what_they_were():
    from reasonlab.runtime.distributed import _portable

    got = _portable(NeedsArgs("run", {1: "exit code 2"}))
    assert type(got) is RuntimeError and "NeedsArgs" in str(got) and "exit code 2" in str(got)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux-only")
def test_killing_the_caller_ends_the_launched_processes(tmp_path):
    """kill -9 of a `--nproc 2` run must not leave its launcher and workers running on as orphans."""
    (tmp_path / "orphan_helper.py").write_text(textwrap.dedent('''
        import os, pathlib, time

        def sleeper(folder):
            pathlib.Path(folder, f"{os.getpid()}.pid").write_text(str(os.getppid()))
            time.sleep(120)
    '''))
    (tmp_path / "caller.py").write_text(textwrap.dedent(f'''
        import orphan_helper
        from reasonlab.runtime.distributed import launch

        if __name__ == "__main__":
            launch(2, orphan_helper.sleeper, {str(tmp_path)!r})
    '''))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    caller = subprocess.Popen([sys.executable, str(tmp_path / "caller.py")], env=env)
    try:
        deadline = time.time() + 120
        while len(list(tmp_path.glob("*.pid"))) < 2 and time.time() < deadline and caller.poll() is None:
            time.sleep(0.2)
        pid_files = list(tmp_path.glob("*.pid"))
        assert len(pid_files) == 2, "the two processes did not start"
        workers = [int(p.stem) for p in pid_files]
        launcher = int(pid_files[0].read_text())
        assert all(_alive(pid) for pid in workers + [launcher])
        caller.kill()
        caller.wait()
        deadline = time.time() + 30
        while any(_alive(pid) for pid in workers + [launcher]) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in workers + [launcher]), "orphans left running"
    finally:
        caller.kill()
        for p in tmp_path.glob("*.pid"):  # never leave a failed check's orphans behind
            for pid in (int(p.stem), int(p.read_text())):
                try:
                    os.kill(pid, 9)
                except (ProcessLookupError, PermissionError):
                    pass
