"""Trained reward models: AUROC and encodings by hand, BCE training that separates synthetic sets (ORM, PRM,
implicit PRM) on a small random backbone, save/load, exact resume, and the search / RL adapters."""

import json
import math
import random

import pytest
import torch

from reasonlab.errors import DataError, UsageError
from reasonlab.learn import orm as orm_lib
from reasonlab.learn import prm as prm_lib
from reasonlab.policies.base import Policy
from reasonlab.rewards.implicit_prm import (
    ImplicitPRM,
    implicit_outcome_logit,
    implicit_token_rewards,
    step_sums,
)
from reasonlab.rewards.reward_model import (
    RewardModel,
    RewardModelCard,
    RewardModelReward,
    auroc,
    encode_outcome,
    encode_steps,
    load_reward_model,
)
from reasonlab.search.base import Candidate, SearchContext
from reasonlab.search.scorers import PRMScorer, as_scorer
from reasonlab.types import Example


def test_auroc_by_hand():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)  # a tie counts one half
    assert auroc([0.9, 0.2, 0.3], [1, 0, 0]) == 1.0
    assert auroc([0.1, float("nan"), 0.9], [0, 0, 1]) == 1.0  # unrated scores are left out
    assert math.isnan(auroc([0.3, 0.4], [1, 1]))


def test_implicit_reward_functions_by_hand():
    logp = torch.tensor([[0.0, -1.0, -2.0, -0.5]])
    ref = torch.tensor([[0.0, -1.5, -1.0, -0.5]])
    r = implicit_token_rewards(logp, ref, beta=0.1)
    assert torch.allclose(r, torch.tensor([[0.0, 0.05, -0.1, 0.0]]))
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    assert implicit_outcome_logit(r, mask).item() == pytest.approx(-0.05)
    assert step_sums([0.1, 0.2, -0.4, 0.5], [0, 0, 1, 1], 3) == pytest.approx([0.3, 0.1, 0.0])


@pytest.fixture(scope="module")
def tok(random_tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(random_tiny_dir)


def test_encodings_read_at_the_right_tokens(tok):
    prompt = "Q: 1+1=?\nA: "
    e = encode_steps(tok, prompt, ["1+1=2", "answer: 2"], "\n")
    text = tok.decode(e.ids)
    assert text == prompt + "1+1=2\nanswer: 2\n"
    assert [tok.decode(e.ids[:p + 1]) for p in e.positions] == [prompt + "1+1=2\n", prompt + "1+1=2\nanswer: 2\n"]
    assert e.start == len(prompt)
    o = encode_outcome(tok, prompt, "1+1=2\nanswer: 2")
    assert o.positions == [len(o.ids) - 1] and tok.decode(o.ids[o.start:]) == "1+1=2\nanswer: 2"
    cut = encode_steps(tok, prompt, ["1+1=2", "answer: 2"], "\n", max_length=8)
    assert len(cut.ids) == 8 and cut.positions[0] < 0 <= cut.positions[1] == 7  # the first step was cut off


def arith_rows(n: int, seed: int) -> list[dict]:
    """Synthetic ORM rows: a worked sum ending "answer: 1" (label 1) or "answer: 2" (label 0)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        good = i % 2 == 0
        rows.append({"id": f"s{seed}/{i}", "prompt": f"Q: {a}+{b}=?\nA: ",
                     "completion": f"{a}+{b}={a + b}\nanswer: {1 if good else 2}", "label": int(good)})
    return rows


def fast(cfg_cls, out, **kw):
    base = dict(out=str(out), batch_size=16, lr=3e-3, head_lr_scale=3.0, lr_schedule="constant", log_every=5,
                eval_every=0, save_every=0, eval_fraction=0.25, device="cpu")
    return cfg_cls(**{**base, **kw})


def test_orm_training_reduces_loss_and_separates_a_synthetic_set(tmp_path, random_tiny_dir):
    cfg = fast(orm_lib.ORMConfig, tmp_path / "orm", model=random_tiny_dir, max_steps=30)
    losses = []
    summary = orm_lib.train(cfg, arith_rows(64, seed=0), on_step=lambda s, rec, m: losses.append(rec["loss"]))
    assert summary["first_loss"] == pytest.approx(math.log(2), abs=1e-4)  # the zero head starts at p = 0.5
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]
    assert summary["eval"]["eval_auroc"] > 0.9 and summary["eval_rows"] > 0
    rm = load_reward_model(summary["final_dir"], device="cpu")
    assert isinstance(rm, RewardModel) and rm.kind == "orm"
    fresh = arith_rows(40, seed=1)
    scores = rm.score_outcomes([r["prompt"] for r in fresh], [r["completion"] for r in fresh])
    assert auroc(scores, [r["label"] for r in fresh]) > 0.9
    assert all(0 < s < 1 for s in scores)
    # Copies of one input run once, and score as they do alone.
    rows = []
    hook = rm.head.register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))
    dup = rm.score_outcomes([fresh[0]["prompt"]] * 5 + [fresh[1]["prompt"]],
                            [fresh[0]["completion"]] * 5 + [fresh[1]["completion"]])
    hook.remove()
    assert sum(rows) == 2 and dup == pytest.approx([scores[0]] * 5 + [scores[1]], abs=1e-5)
    # The adapters give the same numbers: a TRL-shaped reward and a search scorer.
    reward = RewardModelReward(rm)
    assert reward([r["prompt"] for r in fresh[:4]], [r["completion"] for r in fresh[:4]]) == pytest.approx(scores[:4], abs=1e-5)
    ex = Example(id="x", prompt=fresh[0]["prompt"], answer="1")
    ctx = SearchContext(ex, TextPolicy(), None)
    got = as_scorer(rm).score(ctx, [Candidate(text=fresh[0]["completion"]), Candidate(text=fresh[1]["completion"])])
    assert got == pytest.approx(scores[:2], abs=1e-5)
    with pytest.raises(UsageError):
        rm.step_scores(ex, ["a"])  # an ORM has no step scores


class TextPolicy(Policy):
    name = "text"

    def generate(self, prompts, sampling):
        raise AssertionError("scorers of trained models must not generate")


def step_rows(n: int, seed: int) -> list[dict]:
    """Synthetic PRM rows: a step "ok" keeps the solution right, a step "no" makes it (and all later steps) wrong."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        steps = [rng.choice(["ok", "ok", "no"]) + f" {rng.randint(0, 9)}" for _ in range(rng.randint(2, 4))]
        alive, hard = True, []
        for s in steps:
            alive = alive and s.startswith("ok")
            hard.append(int(alive))
        rows.append({"id": f"q{seed}/{i}", "prompt": f"Q: {i}?\nA: ", "steps": steps, "separator": "\n",
                     "hard_labels": hard, "soft_labels": [float(h) for h in hard], "final_correct": bool(hard[-1])})
    return rows


def test_prm_training_separates_steps_and_plugs_into_search(tmp_path, random_tiny_dir):
    cfg = fast(prm_lib.PRMConfig, tmp_path / "prm", model=random_tiny_dir, max_steps=40, labels="soft")
    summary = prm_lib.train(cfg, step_rows(64, seed=0))
    assert summary["final_loss"] < 0.5 * summary["first_loss"]
    assert summary["eval"]["eval_auroc"] > 0.9
    prm = load_reward_model(summary["final_dir"], device="cpu")
    assert prm.kind == "prm" and prm.separator == "\n"
    fresh = step_rows(30, seed=1)
    per_step = prm.score_steps([r["prompt"] for r in fresh], [r["steps"] for r in fresh])
    assert [len(s) for s in per_step] == [len(r["steps"]) for r in fresh]
    flat = [x for s in per_step for x in s]
    assert auroc(flat, [y for r in fresh for y in r["hard_labels"]]) > 0.9
    # The search protocol: PRMScorer (one candidate at a time) and the batched ProcessScorer agree.
    ex = Example(id="x", prompt=fresh[0]["prompt"])
    cands = [Candidate(text="\n".join(r["steps"]), steps=tuple(r["steps"])) for r in fresh[:3]]
    ctx = SearchContext(ex, TextPolicy(), None)
    one = PRMScorer(prm, "min").score(ctx, cands)
    batched = as_scorer(prm, "min").score(ctx, cands)
    assert batched == pytest.approx(one, abs=1e-5)
    assert one[0] == pytest.approx(min(prm.step_scores(ex, fresh[0]["steps"])), abs=1e-6)
    # The RL adapter splits the completion text at the separator and aggregates.
    reward = RewardModelReward(prm, "last")
    assert reward([ex.prompt], ["\n".join(fresh[0]["steps"])]) == pytest.approx([per_step[0][-1]], abs=1e-5)
    # By name: a search scorer (make_scorer) and an RL reward (build_reward_set) from the saved directory.
    from reasonlab.rewards.functions import build_reward_set
    from reasonlab.search import make_scorer

    named = make_scorer(f"prm:{summary['final_dir']}", how="min").score(ctx, cands)
    assert named == pytest.approx(one, abs=1e-5)
    rs = build_reward_set(f"prm:{summary['final_dir']}@last", task=None)
    scores = rs.score([ex.prompt], ["\n".join(fresh[0]["steps"])], [ex])
    assert scores.total == pytest.approx([per_step[0][-1]], abs=1e-5)
    # Per step, for process-supervised RL: one reward per step, the PRM's own step probabilities.
    from reasonlab.rewards.process import build_process_reward

    pr = build_process_reward(f"prm:{summary['final_dir']}", task=None)
    texts = ["\n".join(r["steps"]) for r in fresh[:3]]
    got = pr.score([r["prompt"] for r in fresh[:3]], texts, [ex] * 3)
    for (spans, vals), r, want in zip(got, fresh[:3], per_step[:3]):
        assert [t[a:b] for t in ["\n".join(r["steps"])] for a, b in spans] == r["steps"]
        assert vals == pytest.approx(want, abs=1e-5)


def test_implicit_prm_learns_outcomes_and_scores_steps(tmp_path, random_tiny_dir):
    cfg = fast(orm_lib.ORMConfig, tmp_path / "iprm", model=random_tiny_dir, max_steps=30, objective="implicit",
               beta=0.5, lr=3e-3, separator="\\n")
    summary = orm_lib.train(cfg, arith_rows(64, seed=0))
    assert summary["kind"] == "implicit-prm"
    assert summary["first_loss"] == pytest.approx(math.log(2), abs=1e-4)  # pi = pi_ref at the start: logit 0
    assert summary["final_loss"] < 0.5 * summary["first_loss"]
    ip = load_reward_model(summary["final_dir"], device="cpu")
    assert isinstance(ip, ImplicitPRM) and ip.beta == 0.5 and ip.separator == "\n"
    fresh = arith_rows(40, seed=1)
    outcome = ip.outcome_scores([r["prompt"] for r in fresh], [r["completion"] for r in fresh])
    assert auroc(outcome, [r["label"] for r in fresh]) > 0.8
    steps = [r["completion"].split("\n") for r in fresh]
    per_step = ip.score_steps([r["prompt"] for r in fresh], steps)
    # Step rewards add up to the outcome logit: sigmoid(sum of step rewards) is the outcome score.
    for s, o in zip(per_step, outcome):
        assert 1 / (1 + math.exp(-sum(s))) == pytest.approx(o, abs=1e-5)
    # The process signal localises: the answer step's reward separates right from wrong better than the
    # outcome does (which also sums the log-ratio noise of the number tokens the model memorised).
    assert auroc([s[-1] for s in per_step], [r["label"] for r in fresh]) > 0.9
    ip.mode = "value"
    values = ip.score_steps([fresh[0]["prompt"]], [steps[0]])[0]
    assert values[-1] == pytest.approx(outcome[0], abs=1e-5) and all(0 < v < 1 for v in values)


def test_resume_is_exact(tmp_path, random_tiny_dir):
    rows = arith_rows(48, seed=2)
    straight = orm_lib.train(fast(orm_lib.ORMConfig, tmp_path / "a", model=random_tiny_dir, max_steps=6), rows)
    part = fast(orm_lib.ORMConfig, tmp_path / "b", model=random_tiny_dir, max_steps=3)
    orm_lib.train(part, rows)
    resumed = orm_lib.train(fast(orm_lib.ORMConfig, tmp_path / "b", model=random_tiny_dir, max_steps=6), rows)
    assert resumed["steps"] == 6
    a = load_reward_model(straight["final_dir"], device="cpu")
    b = load_reward_model(resumed["final_dir"], device="cpu")
    assert torch.equal(a.head.weight, b.head.weight)
    for (na, pa), (_, pb) in zip(a.backbone.named_parameters(), b.backbone.named_parameters()):
        assert torch.equal(pa, pb), na


def test_errors_are_one_clear_line(tmp_path, random_tiny_dir):
    bad = tmp_path / "rows.jsonl"
    bad.write_text(json.dumps({"prompt": "Q", "completion": "x", "label": 3}) + "\n{nope\n")
    with pytest.raises(DataError) as e:
        orm_lib.load_outcome_rows(bad)
    assert "line 1" in str(e.value) and "line 2" in str(e.value)
    with pytest.raises(UsageError, match="not a reasonlab reward model"):
        load_reward_model(tmp_path)
    with pytest.raises(UsageError):
        RewardModelCard(kind="prm")  # a PRM needs a separator
    assert prm_lib.main(["--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "p")]) == 2
    assert prm_lib.main(["--labels", "fuzzy", "--data", "x"]) == 2
    assert orm_lib.main(["--objective", "magic"]) == 2
    steps = tmp_path / "steps.jsonl"
    steps.write_text("\n".join(json.dumps(r) for r in step_rows(8, 0)) + "\n")
    argv = ["--data", str(steps), "--model", random_tiny_dir, "--out", str(tmp_path / "cli"), "--max-steps", "2",
            "--device", "cpu", "--eval-fraction", "0"]
    assert prm_lib.main(argv) == 0
    assert load_reward_model(tmp_path / "cli" / "final", device="cpu").kind == "prm"
