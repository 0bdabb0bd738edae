"""`reasonlab eval` end to end on a small model: outputs, resume, Ctrl-C, bad input."""

import json
import subprocess
import sys

import pytest
import torch

from reasonlab.cli.main import main
from reasonlab.evaluation.harness import EvalConfig, run_eval
from reasonlab.policies.hf import HFPolicy


def read_samples(d):
    return [json.loads(line) for line in (d / "samples.jsonl").read_text().splitlines()]


def test_eval_writes_summary_samples_and_config(random_tiny_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    rc = main(["eval", "--model", random_tiny_dir, "--task", "arith", "--n", "4", "--limit", "6",
               "--max-new-tokens", "24", "--batch-size", "4", "--out", str(out), "--seed", "3"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("accuracy", "pass@1", "pass@4", "maj@4", "tokens_generated", "tokens_per_second",
                "wall_seconds", "n_examples"):
        assert key in summary, key
    assert summary["n_examples"] == 6 and summary["complete"] is True
    recs = read_samples(out)
    assert len(recs) == 6
    for r in recs:
        assert len(r["completions"]) == 4
        assert {"text", "extracted", "status", "finish_reason", "completion_tokens"} <= set(r["completions"][0])
    assert summary["tokens_generated"] == sum(c["completion_tokens"] for r in recs for c in r["completions"])
    assert (out / "config.yaml").exists()
    assert "accuracy" in capsys.readouterr().out


def test_eval_in_bfloat16(random_tiny_dir, tmp_path, monkeypatch):
    import reasonlab.policies

    seen = []
    real = reasonlab.policies.load_policy

    def spy(*args, **kwargs):
        policy = real(*args, **kwargs)
        seen.append(next(policy.model.parameters()).dtype)
        return policy

    monkeypatch.setattr(reasonlab.policies, "load_policy", spy)
    out = tmp_path / "bf16"
    assert main(["eval", "--model", random_tiny_dir, "--task", "arith", "--limit", "3", "--max-new-tokens", "12",
                 "--backend", "hf", "--dtype", "bfloat16", "--out", str(out)]) == 0
    assert seen == [torch.bfloat16] and "dtype: bfloat16" in (out / "config.yaml").read_text()
    assert json.loads((out / "summary.json").read_text())["n_examples"] == 3


def test_resume_reproduces_uninterrupted_run(random_tiny_dir, tmp_path):
    policy = HFPolicy(random_tiny_dir, device="cpu")
    common = dict(model=random_tiny_dir, task="arith", n=2, max_new_tokens=16, batch_size=2, seed=5)
    full = tmp_path / "full"
    run_eval(EvalConfig(**common, limit=6, out=str(full)), policy=policy)
    part = tmp_path / "part"
    run_eval(EvalConfig(**common, limit=2, out=str(part)), policy=policy)
    assert len(read_samples(part)) == 2
    summary = run_eval(EvalConfig(**common, limit=6, out=str(part)), policy=policy)
    assert summary["n_examples"] == 6
    a = {r["id"]: [c["text"] for c in r["completions"]] for r in read_samples(full)}
    b = {r["id"]: [c["text"] for c in r["completions"]] for r in read_samples(part)}
    assert a == b


class InterruptingPolicy:
    """Wraps a policy and raises KeyboardInterrupt on the k-th generate call (a user's Ctrl-C)."""

    def __init__(self, inner, at_call):
        self.inner, self.at_call, self.calls = inner, at_call, 0

    def generate(self, prompts, sampling):
        self.calls += 1
        if self.calls == self.at_call:
            raise KeyboardInterrupt
        return self.inner.generate(prompts, sampling)

    def close(self):
        pass


def test_ctrl_c_keeps_partial_results_and_resumes(random_tiny_dir, tmp_path):
    policy = HFPolicy(random_tiny_dir, device="cpu")
    cfg = EvalConfig(model=random_tiny_dir, task="arith", limit=6, batch_size=2, max_new_tokens=8,
                     out=str(tmp_path / "ev"))
    with pytest.raises(KeyboardInterrupt):
        run_eval(cfg, policy=InterruptingPolicy(policy, at_call=3))
    assert len(read_samples(tmp_path / "ev")) == 4
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["complete"] is False and summary["n_examples"] == 4
    counting = InterruptingPolicy(policy, at_call=-1)
    summary = run_eval(cfg, policy=counting)
    assert summary["complete"] is True and summary["n_examples"] == 6
    assert counting.calls == 1  # only the missing batch was generated


def test_changed_settings_refuse_to_mix_runs(random_tiny_dir, tmp_path):
    policy = HFPolicy(random_tiny_dir, device="cpu")
    out = str(tmp_path / "ev")
    run_eval(EvalConfig(model=random_tiny_dir, task="arith", limit=2, max_new_tokens=8, out=out), policy=policy)
    rc = main(["eval", "--model", random_tiny_dir, "--task", "arith", "--limit", "2", "--max-new-tokens", "8",
               "--temperature", "0.5", "--out", out])
    assert rc == 2


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "reasonlab", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, needle", [
    (["eval", "--model", "no-such-model-xyz", "--limit", "1"], "no-such-model-xyz"),
    (["eval", "--model", "tiny", "--task", "nosuchtask", "--limit", "1"], "nosuchtask"),
    (["eval", "--model", "tiny", "--task", "gsm8k:/nonexistent/file.jsonl", "--limit", "1"], "/nonexistent/file.jsonl"),
    (["eval", "--n", "0"], "n must be >= 1"),
    (["eval", "--model", "tiny", "--task", "arith", "--temperature", "-1"], "temperature must be >= 0"),
    (["eval", "--model", "tiny", "--task", "arith", "--dtype", "float64"], "unknown dtype 'float64'"),
    (["frobnicate"], "frobnicate"),
])
def test_bad_input_one_clear_line_exit_2(args, needle, tmp_path):
    res = run_cli(*args, *(["--out", str(tmp_path / "o")] if args[0] == "eval" else []))
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert needle in lines[0]


def test_malformed_rows_reported_with_line_numbers(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": "1+1?", "answer": "#### 2"}\nnot json\n{"question": "2+2?"}\n')
    res = run_cli("eval", "--model", "tiny", "--task", f"gsm8k:{data}", "--limit", "1", "--out", str(tmp_path / "o"))
    assert res.returncode == 2
    assert "line 2" in res.stderr and "line 3" in res.stderr


def test_ctrl_c_in_the_cli_prints_one_line_and_exits_130(random_tiny_dir, tmp_path, monkeypatch, capsys):
    from reasonlab.policies import hf

    real = hf.HFPolicy.generate_ids
    calls = {"n": 0}

    def interrupted_on_second_batch(self, prompt_ids, sampling):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, prompt_ids, sampling)

    monkeypatch.setattr(hf.HFPolicy, "generate_ids", interrupted_on_second_batch)
    out = tmp_path / "ev"
    rc = main(["eval", "--model", random_tiny_dir, "--task", "arith", "--limit", "4", "--batch-size", "2",
               "--max-new-tokens", "8", "--out", str(out)])
    assert rc == 130
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("reasonlab:")]
    assert err == [f"reasonlab: interrupted: 2/4 examples saved in {out}; run the same command again to resume"]
    assert len(read_samples(out)) == 2
