"""SFT: prompt masking, loss goes down, grad-accumulation equivalence, exact resume, LoRA, data errors."""

from __future__ import annotations

import json
import os
import random
import signal

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import load_file

from reasonlab.errors import DataError, UsageError
from reasonlab.learn.data import IGNORE_INDEX, load_sft_rows, tokenize_pair, tokenize_rows
from reasonlab.learn.sft import SFTConfig, lr_multiplier, main, train
from reasonlab.policies.tiny import new_tiny_model
from reasonlab.runtime import RunDir


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny matrices: several threads only contend (badly so on a busy 2-core machine).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A freshly initialised small tiny model saved as a normal HF checkpoint directory."""
    d = tmp_path_factory.mktemp("tiny")
    model, tok = new_tiny_model(hidden_size=64, layers=2, heads=2, intermediate=128, max_positions=64, seed=0)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def addition_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        rows.append({"prompt": f"Q: {a}+{b}=?\nA:", "completion": f" {a + b}"})
    return rows


def cfg(tiny_dir, out, **kw) -> SFTConfig:
    base = dict(model=tiny_dir, out=str(out), batch_size=8, lr=3e-3, log_every=1, save_every=0, seed=0)
    base.update(kw)
    return SFTConfig(**base)


def final_weights(summary: dict) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(summary["final_dir"], "model.safetensors"))


def losses(out) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in RunDir(out).read_jsonl("metrics.jsonl")}


# -- learning-rate schedules --------------------------------------------------------------------


def test_lr_schedules():
    # 2 warmup steps then 10 decay steps; multipliers by optimizer step.
    at = lambda name, steps: [round(lr_multiplier(name, 2, 12)(s), 4) for s in steps]  # noqa: E731
    assert at("constant", (0, 1, 2, 7, 12)) == [0.5, 1.0, 1.0, 1.0, 1.0]
    assert at("linear", (2, 7, 12)) == [1.0, 0.5, 0.0]
    assert at("cosine", (2, 7, 12)) == [1.0, 0.5, 0.0]
    # wsd: the peak for 80% of the decay phase, then linear to 0.
    assert at("wsd", (2, 9, 10, 11, 12)) == [1.0, 1.0, 1.0, 0.5, 0.0]
    # An outside measure of progress (the RL trainers' clock) takes over when it is further along.
    clock = {"done": 0.0}
    f = lr_multiplier("linear", 0, 1000, progress=lambda: clock["done"])
    assert f(10) == pytest.approx(0.99)
    clock["done"] = 0.75
    assert f(10) == pytest.approx(0.25)
    assert f(900) == pytest.approx(0.1)  # the steps are further along than the clock here


# -- data ----------------------------------------------------------------------------------------


def test_tokenize_pair_masks_prompt_and_truncates(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    prompt, completion = "Q: 2+3=?\nA:", " 5"
    ids, labels = tokenize_pair(tok, prompt, completion, max_len=64)
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ids == p + c  # no BOS: the character tokenizer's convention adds none
    assert labels == [IGNORE_INDEX] * len(p) + c
    # Truncation keeps the prompt and cuts the completion; no completion left -> dropped.
    ids, labels = tokenize_pair(tok, prompt, completion, max_len=len(p) + 1)
    assert ids == p + c[:1] and labels[-1] == c[0]
    examples, dropped = tokenize_rows(tok, [{"prompt": prompt, "completion": completion}] * 2, max_len=len(p))
    assert (examples, dropped) == ([], 2)


def test_chat_rows_use_the_chat_template(tiny_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "1+1"},
                                             {"role": "assistant", "content": "2"}]}) + "\n")
    [row] = load_sft_rows(path)
    assert row == {"prompt": [{"role": "user", "content": "1+1"}], "completion": "2"}
    with pytest.raises(UsageError, match="chat template"):
        tokenize_pair(tok, row["prompt"], row["completion"], 64)
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant:{% endif %}")
    ids, labels = tokenize_pair(tok, row["prompt"], row["completion"], 64)
    rendered = tok("user: 1+1\nassistant:", add_special_tokens=False)["input_ids"]
    assert ids[: len(rendered)] == rendered and ids[len(rendered):] == [tok.convert_tokens_to_ids("2"), tok.eos_token_id]
    assert labels == [IGNORE_INDEX] * len(rendered) + ids[len(rendered):]


def test_malformed_jsonl_reports_line_numbers(tmp_path, tiny_dir):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([
        json.dumps({"prompt": "Q", "completion": "A"}),
        "{not json",
        json.dumps({"prompt": "Q"}),
        "",
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
    ]) + "\n")
    with pytest.raises(DataError) as e:
        load_sft_rows(path)
    assert [n for n, _ in e.value.problems] == [2, 3, 5]
    assert "line 2" in str(e.value) and "line 5" in str(e.value)
    with pytest.raises(UsageError, match="not found"):
        load_sft_rows(tmp_path / "missing.jsonl")
    with pytest.raises(DataError):
        train(cfg(tiny_dir, tmp_path / "run", data=str(path), max_steps=1))


# -- training ------------------------------------------------------------------------------------


def test_sft_lowers_loss(tiny_dir, tmp_path):
    s = train(cfg(tiny_dir, tmp_path / "run", max_steps=30, batch_size=16, log_every=5), addition_rows(160))
    assert s["steps"] == 30 and s["loss_tokens"] > 0
    assert s["final_loss"] < s["first_loss"] - 1.0, s
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "final/model.safetensors", "final/tokenizer.json"):
        assert (tmp_path / "run" / name).exists(), name
    assert [r["step"] for r in RunDir(tmp_path / "run").read_jsonl("metrics.jsonl")] == [5, 10, 15, 20, 25, 30]


def test_grad_accumulation_matches_the_big_batch(tiny_dir, tmp_path):
    rows = addition_rows(24)  # completions of 2-4 tokens + EOS: micro-batches hold different token counts
    common = dict(max_steps=3, lr_schedule="constant", weight_decay=0.0)
    big = train(cfg(tiny_dir, tmp_path / "big", batch_size=8, grad_accum=1, **common), rows)
    acc = train(cfg(tiny_dir, tmp_path / "acc", batch_size=4, grad_accum=2, **common), rows)
    w_big, w_acc = final_weights(big), final_weights(acc)
    for k in w_big:
        torch.testing.assert_close(w_acc[k], w_big[k], rtol=0, atol=1e-5, msg=k)
    for step, loss in losses(tmp_path / "big").items():
        assert losses(tmp_path / "acc")[step] == pytest.approx(loss, abs=1e-5)


def test_resume_after_ctrl_c_is_exact(tiny_dir, tmp_path):
    rows = addition_rows(40)  # 5 steps per epoch: the resumed part crosses an epoch boundary
    # log_every=3: the logging window (3, 6] straddles the checkpoint at step 4, so its mean loss is
    # right only if the window's running sums were restored too.
    common = dict(epochs=2, lr_schedule="cosine", warmup_steps=2, weight_decay=0.01, log_every=3)
    full = train(cfg(tiny_dir, tmp_path / "full", **common), rows)
    assert full["steps"] == 10

    def ctrl_c_at_4(step, record, model):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(cfg(tiny_dir, out, **common), rows, on_step=ctrl_c_at_4)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_4"]
    assert json.loads((out / "summary.json").read_text())["interrupted"] is True
    resumed = train(cfg(tiny_dir, out, **common), rows)
    assert resumed["resumed_from_step"] == 4 and resumed["steps"] == 10

    w_full, w_res = final_weights(full), final_weights(resumed)
    assert all(torch.equal(w_full[k], w_res[k]) for k in w_full)
    assert list(losses(out)) == [3, 6, 9, 10]
    assert losses(out) == losses(tmp_path / "full")  # step 3 from the first session, 6-10 after resume
    assert resumed["first_loss"] == full["first_loss"] and resumed["tokens"] == full["tokens"]


def test_lora_trains_only_adapters(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    base = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(tiny_dir).state_dict().items()}
    seen = {}

    def check(step, record, model):
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n for n in trainable)
        if step == 20:  # before the merge: every base weight is exactly as loaded
            for n, p in model.named_parameters():
                if "lora_" not in n:
                    key = n.replace("base_model.model.", "").replace(".base_layer", "")
                    assert torch.equal(p.detach(), base[key]), n
            seen["checked"] = True

    s = train(cfg(tiny_dir, tmp_path / "lora", max_steps=20, batch_size=16, lr=1e-2, lora=True, lora_r=8,
                  lora_alpha=16, log_every=5), addition_rows(160), on_step=check)
    assert seen.get("checked")
    assert s["final_loss"] < s["first_loss"] - 0.5, s
    ckpt_files = {p.name for p in (tmp_path / "lora" / "checkpoints" / "step_20" / "model").iterdir()}
    assert ckpt_files == {"adapter_config.json", "adapter_model.safetensors"}
    merged = final_weights(s)
    assert not any("lora" in k for k in merged)
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])


def test_main_reads_yaml_and_flags(tiny_dir, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in addition_rows(16)))
    yaml_file = tmp_path / "sft.yaml"
    yaml_file.write_text(f"model: {tiny_dir}\ndata: {data}\nmax_steps: 5\nbatch_size: 8\nlr: 0.001\nlog_every: 1\n")
    out = tmp_path / "run"
    assert main(["--config", str(yaml_file), "--max-steps", "2", "--out", str(out), "--no-save-final"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["final_dir"] is None
    assert "lr: 0.001" in (out / "config.yaml").read_text()
    assert main(["--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "r2")]) == 2
    # A bad rate is one clear line and exit 2 (it was torch's traceback), and no run directory is left behind.
    assert main(["--config", str(yaml_file), "--lr", "-1", "--out", str(tmp_path / "r3")]) == 2
    assert not (tmp_path / "r3").exists()
