"""SFT raises accuracy: a fresh small model learns single-digit sums from worked traces.

This is the tier-3 check of the SFT loop (DESIGN.md principle 7): the model, its tokenizer, the SFT
loop and the greedy evaluation are the real ones; only the sizes are small enough for CI.
"""

import random

from reasonlab.learn.sft import SFTConfig, train
from reasonlab.policies.hf import HFPolicy
from reasonlab.policies.tiny import new_tiny_model
from reasonlab.tasks.arith import ArithTask, format_prompt
from reasonlab.types import Example, SamplingParams


def single_digit_rows(rng, count):
    rows = []
    for _ in range(count):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"prompt": format_prompt(f"{a}+{b}"), "completion": f"{a}+{b}={a + b}\nanswer: {a + b}"})
    return rows


def greedy_accuracy(model, tok, examples):
    task = ArithTask()
    policy = HFPolicy("inline", model=model, tokenizer=tok, device="cpu")
    comps = policy.generate([e.prompt for e in examples], SamplingParams(temperature=0, max_new_tokens=20))
    model.train()
    return sum(task.score(e, c.text).correct for e, c in zip(examples, comps)) / len(examples)


def test_sft_raises_greedy_accuracy(tmp_path):
    rng = random.Random(0)
    rows = single_digit_rows(rng, 2000)
    examples = [Example(id=f"t{a}{b}", prompt=format_prompt(f"{a}+{b}"), answer=str(a + b))
                for a in range(10) for b in range(10)]
    model, tok = new_tiny_model(hidden_size=96, layers=2, heads=4, intermediate=256, seed=1)
    before = greedy_accuracy(model, tok, examples)
    cfg = SFTConfig(out=str(tmp_path / "sft"), max_steps=250, batch_size=32, lr=3e-3, warmup_steps=20,
                    save_every=0, log_every=50, save_final=False)
    summary = train(cfg, rows, model=model, tokenizer=tok)
    after = greedy_accuracy(model, tok, examples)
    assert summary["final_loss"] < 0.5 * summary["first_loss"]
    assert before <= 0.05
    assert after >= before + 0.5, (before, after)
