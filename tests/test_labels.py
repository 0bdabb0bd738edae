"""Step labels: Math-Shepherd against a mock policy with known outcomes, PRM800K reading, row checks, CLI."""

import json
import re

import pytest

from reasonlab.errors import DataError, UsageError
from reasonlab.policies.base import Policy
from reasonlab.rewards.labels import (
    LabelConfig,
    label_solutions,
    label_task,
    load_step_rows,
    main,
    math_shepherd_labels,
    prm800k_row,
    read_prm800k,
    resolve_separator,
    step_prefixes,
)
from reasonlab.tasks.base import Task
from reasonlab.types import Completion, Example, RewardResult, SamplingParams


class AnswerTask(Task):
    """Correct iff the last ``answer: X`` equals the gold answer; ``answer: boom`` is a verifier crash."""

    name = "answers"
    stop = ()

    def examples(self, split="test", limit=None):
        return EXAMPLES[:limit]

    def score(self, example, completion):
        found = re.findall(r"answer: (\S+)", completion)
        if not found:
            return RewardResult.unparsable("no answer")
        if found[-1] == "boom":
            return RewardResult.error("checker crashed", extracted="boom")
        return RewardResult.ok(found[-1]) if found[-1] == example.answer else RewardResult.wrong(found[-1])


EXAMPLES = [Example(id=f"p{i}", prompt=f"Q{i}\nA: ", answer="42", question=f"Q{i}") for i in range(3)]


class OutcomePolicy(Policy):
    """Continuations are right iff the solution so far has no "bad" step; a "half" step makes exactly
    the first half of the n samples right; a "flaky" step makes the verifier crash. From a bare
    prompt it writes ``solutions`` in turn."""

    name = "outcomes"

    def __init__(self, solutions=()):
        self.solutions, self.calls = list(solutions), []

    def generate(self, prompts, sampling):
        self.calls.append((list(prompts), sampling.n))
        out = []
        for pi, p in enumerate(prompts):
            so_far = p.split("A: ", 1)[1]
            for i in range(sampling.n):
                if not so_far:
                    text = self.solutions[i % len(self.solutions)]
                elif "bad" in so_far:
                    text = "answer: 0"
                elif "flaky" in so_far:
                    text = "answer: boom"
                elif "half" in so_far:
                    text = "answer: 42" if i < sampling.n // 2 else "answer: 7"
                else:
                    text = "answer: 42"
                out.append(Completion(text=text, token_ids=[0] * len(text), logprobs=None, finish_reason="stop",
                                      prompt_tokens=len(p), prompt_index=pi))
        return out


def test_math_shepherd_labels_by_hand():
    assert math_shepherd_labels([True, False, None, False]) == (1, pytest.approx(1 / 3))
    assert math_shepherd_labels([False, False]) == (0, 0.0)
    assert math_shepherd_labels([True, True]) == (1, 1.0)
    assert math_shepherd_labels([None, None]) == (None, None)  # nothing judged: no label, not a 0


def test_step_prefixes_and_separator():
    assert step_prefixes(["a", "b", "c"], "\n") == ["a\n", "a\nb\n"]
    assert step_prefixes(["only"], "\n") == []
    assert resolve_separator("auto", "arith") == "\n"
    assert resolve_separator("auto", "gsm8k") == "\n\n"
    assert resolve_separator("\\n\\n", "arith") == "\n\n"
    with pytest.raises(UsageError):
        resolve_separator("", "arith")


def test_labels_match_the_known_outcomes_in_one_generate_call():
    policy, task = OutcomePolicy(), AnswerTask()
    sols = [["good\nhalf\nbad\nanswer: 0", "good\ngood\nanswer: 42"], ["flaky\nanswer: 42"], ["\n\n"]]
    rows = label_solutions(policy, task, EXAMPLES, sols, separator="\n", k=4,
                           sampling=SamplingParams(temperature=0.8, max_new_tokens=16))
    # One call continues every prefix of every solution (3 + 2 + 1 prefixes), k samples each.
    assert len(policy.calls) == 1
    prompts, n = policy.calls[0]
    assert n == 4 and len(prompts) == 6
    assert prompts[0] == "Q0\nA: good\n" and prompts[2] == "Q0\nA: good\nhalf\nbad\n"
    assert len(rows) == 3  # the solution with no non-empty step is skipped
    a, b, c = rows
    assert a["steps"] == ["good", "half", "bad", "answer: 0"]
    assert a["hard_labels"] == [1, 1, 0, 0]
    assert a["soft_labels"] == [1.0, 0.5, 0.0, 0.0]
    assert a["final_correct"] is False
    assert b["hard_labels"] == [1, 1, 1] and b["soft_labels"] == [1.0, 1.0, 1.0] and b["final_correct"] is True
    # Verifier crashes on every rollout of the flaky step: no label there; the last step is the solution's verdict.
    assert c["hard_labels"] == [None, 1] and c["soft_labels"] == [None, 1.0]
    assert a["id"] == "p0" and c["id"] == "p1" and a["separator"] == "\n" and a["k"] == 4
    assert a["prompt"] == EXAMPLES[0].prompt and a["completion"] == sols[0][0]


def test_label_task_samples_dedups_and_batches():
    policy = OutcomePolicy(["good\nanswer: 42", "bad\nanswer: 42", "good\nanswer: 42"])
    cfg = LabelConfig(samples_per_problem=3, k=2, batch_problems=2, separator="\\n")
    batches = list(label_task(policy, AnswerTask(), EXAMPLES, cfg))
    assert [len(b) for b in batches] == [4, 2]  # 2 distinct solutions per problem
    assert len(policy.calls) == 4  # per batch: one call for solutions, one for all rollouts
    assert [n for _, n in policy.calls] == [3, 2, 3, 2]
    by_text = {r["completion"]: r for r in batches[0]}
    assert by_text["good\nanswer: 42"]["hard_labels"] == [1, 1]
    assert by_text["bad\nanswer: 42"]["hard_labels"] == [0, 1]  # lucky final answer after a bad step


PHASE2 = {
    "labeler": "L1", "timestamp": "2023-01-22T04:34:27", "generation": 9,
    "question": {"problem": "What is 2+2?", "ground_truth_answer": "4",
                 "pre_generated_steps": ["I add.", "2+2=5.", "# Answer\n\n5"]},
    "label": {"steps": [
        {"completions": [{"text": "I add.", "rating": 0, "flagged": None}], "human_completion": None,
         "chosen_completion": 0},
        {"completions": [{"text": "2+2=5.", "rating": -1, "flagged": None},
                         {"text": "2+2=4.", "rating": 1, "flagged": False}],
         "human_completion": None, "chosen_completion": None},
    ], "total_time": 1000, "finish_reason": "found_error"},
}
PHASE1 = {
    "labeler": "L2", "timestamp": "t", "generation": None,
    "question": {"problem": "What is 3+3?", "ground_truth_answer": "6"},
    "label": {"steps": [
        {"completions": [{"text": "3+3=7", "rating": -1}, {"text": "3+3=6", "rating": 1}], "human_completion": None,
         "chosen_completion": 1},
        {"completions": [{"text": "So 7.", "rating": -1}],
         "human_completion": {"text": "So the answer is 6.", "rating": None}, "chosen_completion": None},
    ], "finish_reason": "solution"},
}
BROKEN = {"question": {"problem": "?"}, "label": {"steps": [], "finish_reason": "bad_problem"}}


def test_prm800k_rows_follow_the_labelled_trajectory():
    row = prm800k_row(PHASE2)
    assert row["steps"] == ["I add.", "2+2=5."]  # ends at the first error (the pre-generated step)
    assert row["ratings"] == [0, -1]
    assert row["hard_labels"] == [1, 0]  # neutral counts as positive by default
    assert row["soft_labels"] == [1.0, 0.0]
    assert row["final_correct"] is False and row["answer"] == "4"
    assert row["prompt"] == "What is 2+2?\n\n" and row["source"] == "prm800k"
    assert prm800k_row(PHASE2, neutral="negative")["hard_labels"] == [0, 0]
    row1 = prm800k_row(PHASE1)
    assert row1["steps"] == ["3+3=6", "So the answer is 6."]  # chosen completion, then the human's step
    assert row1["hard_labels"] == [1, 1] and row1["final_correct"] is True
    assert prm800k_row(BROKEN) is None


def test_read_prm800k_file_and_malformed_lines(tmp_path):
    f = tmp_path / "phase2.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in (PHASE2, PHASE1, BROKEN)) + "\n")
    rows = read_prm800k(f)
    assert [r["question"] for r in rows] == ["What is 2+2?", "What is 3+3?"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PHASE2) + "\n{oops\n" + json.dumps({"question": {}, "label": {"steps": 3}}) + "\n")
    with pytest.raises(DataError) as e:
        read_prm800k(bad)
    assert "line 2" in str(e.value) and "line 3" in str(e.value)
    with pytest.raises(UsageError):
        read_prm800k(tmp_path / "missing.jsonl")


def test_load_step_rows_reports_every_malformed_line(tmp_path):
    good = {"prompt": "Q", "steps": ["a", "b"], "hard_labels": [1, None], "soft_labels": [0.5, None]}
    f = tmp_path / "steps.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        good, {"prompt": "Q", "steps": ["a"], "hard_labels": [1, 0]}, {"steps": ["a"], "hard_labels": [1]},
        {"prompt": "Q", "steps": ["a"], "hard_labels": [2]}, {"prompt": "Q", "steps": ["a"]}]) + "\n")
    with pytest.raises(DataError) as e:
        load_step_rows(f)
    msg = str(e.value)
    assert "4 of 5" in msg and all(f"line {i}" in msg for i in (2, 3, 4, 5))
    f.write_text(json.dumps(good) + "\n")
    assert load_step_rows(f)[0]["steps"] == ["a", "b"]


def test_cli_labels_with_a_real_policy_and_resumes(tmp_path, random_tiny_dir, capsys):
    out = tmp_path / "steps.jsonl"
    args = ["--task", "arith", "--model", random_tiny_dir, "--out", str(out), "--k", "2", "--samples-per-problem", "2",
            "--max-new-tokens", "12", "--device", "cpu"]
    assert main(args + ["--problems", "2"]) == 0
    first = load_step_rows(out)
    assert {r["id"] for r in first} <= {"arith/train/0", "arith/train/1"}
    for r in first:
        assert len(r["hard_labels"]) == len(r["steps"]) == len(r["soft_labels"]) and r["separator"] == "\n"
    assert main(args + ["--problems", "3"]) == 0  # resumes: only the third problem is new
    rows = load_step_rows(out)
    assert rows[:len(first)] == first and {r["id"] for r in rows[len(first):]} <= {"arith/train/2"}
    assert "wrote" in capsys.readouterr().out
    prm = tmp_path / "prm.jsonl"
    prm.write_text(json.dumps(PHASE2) + "\n")
    assert main(["--prm800k", str(prm), "--out", str(tmp_path / "conv.jsonl")]) == 0
    assert load_step_rows(tmp_path / "conv.jsonl")[0]["hard_labels"] == [1, 0]
    assert main(["--k", "0"]) == 2  # a bad setting is one clear line, exit code 2


class HedgingPolicy(Policy):
    """Every solution and every rollout hedges between a wrong and the right answer."""

    name = "hedger"

    def generate(self, prompts, sampling):
        return [Completion(text="It is \\boxed{4} or \\boxed{3}.", token_ids=[0], logprobs=None, finish_reason="stop",
                           prompt_tokens=1, prompt_index=pi) for pi in range(len(prompts)) for _ in range(sampling.n)]


def test_training_labels_use_the_strict_verifier(tmp_path, monkeypatch):
    """A hedge must not become a positive label for a reward model (the lenient, evaluation reading accepts it)."""
    import reasonlab.policies
    from reasonlab.learn.orm import ORMConfig, sample_outcome_rows
    from reasonlab.rewards.labels import run

    data = tmp_path / "m.jsonl"
    data.write_text(json.dumps({"problem": "1+2?", "answer": "3"}) + "\n")
    monkeypatch.setattr(reasonlab.policies, "load_policy", lambda *a, **k: HedgingPolicy())
    common = {"task": f"math:{data}", "split": "test", "problems": 1, "samples_per_problem": 1}
    steps = {"k": 2, "separator": "\\n"}
    strict = run(LabelConfig(out=str(tmp_path / "strict.jsonl"), **common, **steps))
    lenient = run(LabelConfig(out=str(tmp_path / "lenient.jsonl"), strict_labels=False, **common, **steps))
    assert strict["solution_accuracy"] == 0.0 and lenient["solution_accuracy"] == 1.0
    assert [r["label"] for r in sample_outcome_rows(ORMConfig(**common))] == [0.0]
    assert [r["label"] for r in sample_outcome_rows(ORMConfig(strict_labels=False, **common))] == [1.0]
