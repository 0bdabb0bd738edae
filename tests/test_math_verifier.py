"""MathVerifier (numeric fast path + math-verify in a killable pool), answer_key and WorkerPool."""

import operator
import os
import signal
import threading
import time

import pytest

from reasonlab.rewards.math import MathVerifier, MathVerifierConfig, answer_key, parse_number
from reasonlab.rewards.workers import WorkerPool
from reasonlab.types import Status

OK, WRONG, UNPARSABLE = Status.OK, Status.WRONG, Status.UNPARSABLE

# (gold, completion, expected status)
CASES = [
    # fractions and decimals, in every spelling
    ("\\frac{1}{2}", "The answer is 0.5", OK),
    ("0.5", "\\boxed{\\frac12}", OK),
    ("1/2", "\\boxed{\\dfrac{1}{2}}", OK),
    ("\\frac{1}{2}", "<answer>1/2</answer>", OK),
    ("\\frac{3}{4}", "\\boxed{0.75}", OK),
    ("\\frac{1}{3}", "\\boxed{0.3333333}", OK),
    ("\\frac{1}{3}", "\\boxed{0.33}", WRONG),
    ("\\frac{1}{2}", "\\boxed{\\frac{2}{4}}", OK),
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}", WRONG),
    ("\\tfrac{5}{2}", "so it is \\boxed{2.5}", OK),
    # LaTeX and symbolic answers (math-verify)
    ("\\sqrt{2}", "\\boxed{\\sqrt{2}}", OK),
    ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\frac{\\sqrt3}{2}}", OK),
    ("\\sqrt{8}", "\\boxed{2\\sqrt{2}}", OK),
    ("3\\sqrt{2}", "\\boxed{\\sqrt{18}}", OK),
    ("x^2+2x+1", "\\boxed{(x+1)^2}", OK),
    ("\\frac{\\pi}{4}", "\\boxed{\\pi/4}", OK),
    ("2\\pi", "$\\boxed{2\\pi}$", OK),
    ("\\pi", "\\boxed{3}", WRONG),
    ("x^2", "\\boxed{x^3}", WRONG),
    ("x=3", "\\boxed{3}", OK),
    ("y = 2x + 1", "\\boxed{y=2x+1}", OK),
    ("3", "\\boxed{2+1}", OK),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\boxed{\\begin{pmatrix}1\\\\2\\end{pmatrix}}", OK),
    ("\\text{Monday}", "\\boxed{\\text{Monday}}", OK),
    ("Monday", "The answer is Tuesday.", WRONG),
    # \boxed: the last box counts
    ("42", "Let me think step by step... \\boxed{42}", OK),
    ("42", "\\boxed{41}", WRONG),
    ("42", "\\boxed{40} no wait, \\boxed{42}", OK),
    ("42", "\\boxed{42} no wait, \\boxed{40}", WRONG),
    # thousands separators
    ("1000", "\\boxed{1,000}", OK),
    ("1,000", "The answer is 1000.", OK),
    ("1234567", "#### 1,234,567", OK),
    ("1000", "\\boxed{1{,}000}", OK),
    ("1000", "\\boxed{100}", WRONG),
    ("1000000", "\\boxed{1000001}", WRONG),  # integers compare exactly despite rel_tol
    # units and currency
    ("5", "The answer is 5 dollars.", OK),
    ("5", "The answer is $5.", OK),
    ("5", "\\boxed{5 \\text{ cm}}", OK),
    ("5", "\\boxed{5\\text{cm}}", OK),
    ("5", "Answer: 5cm", OK),
    ("18", "She earns \\boxed{\\$18}", OK),
    ("12", "The answer is 12 apples per day", OK),
    ("5", "The answer is 6 dollars.", WRONG),
    ("\\$1,234.50", "\\boxed{1234.5}", OK),
    # percentages: 50% equals 50 and 0.5
    ("50\\%", "\\boxed{50}", OK),
    ("50", "The answer is 50%.", OK),
    ("0.5", "\\boxed{50\\%}", OK),
    ("25\\%", "\\boxed{30\\%}", WRONG),
    # negatives
    ("-3", "\\boxed{-3}", OK),
    ("-3", "\\boxed{3}", WRONG),
    ("-\\frac{1}{2}", "\\boxed{-0.5}", OK),
    ("-7", "so x = -7", OK),
    # decimals
    ("3.5", "\\boxed{3.50}", OK),
    ("3.50", "The answer is 3.5.", OK),
    ("0.1", "\\boxed{.1}", OK),
    ("3.5", "\\boxed{3.05}", WRONG),
    ("2", "\\boxed{2.0}", OK),
    # "The answer is ..." phrases
    ("7", "Adding them gives 6. The answer is 7", OK),
    ("7", "The answer is 8.", WRONG),
    ("10", "Final answer: 10", OK),
    ("72", "Natalia sold 48/2 = 24 clips in May.\n#### 72", OK),
    # intervals and sets
    ("[1,2)", "\\boxed{[1,2)}", OK),
    ("[1,2)", "\\boxed{[1,2]}", WRONG),
    ("(-\\infty, 3]", "\\boxed{(-\\infty,3]}", OK),
    ("\\{1,2\\}", "\\boxed{\\{2,1\\}}", OK),
    ("\\{1,2\\}", "\\boxed{\\{1,3\\}}", WRONG),
    ("(1,2)", "\\boxed{(1, 2)}", OK),
    ("x \\in [1,2)", "\\boxed{[1,2)}", OK),
    # junk: no answer, or prose instead of math
    ("5", "", UNPARSABLE),
    ("5", "I don't know", UNPARSABLE),
    ("5", "banana apple orange", UNPARSABLE),
    ("5", "<answer>I don't know</answer>", UNPARSABLE),
    ("\\frac{1}{2}", "<answer>no idea</answer>", UNPARSABLE),
    ("no solution", "<answer>there is no solution</answer>", WRONG),  # prose against prose: judged, wrong
    ("5", "\\boxed{}", UNPARSABLE),
]


@pytest.fixture(scope="module")
def verifier():
    with MathVerifier(MathVerifierConfig(timeout=10, workers=2)) as v:
        yield v


@pytest.mark.parametrize("gold, completion, expected", CASES)
def test_equivalence(verifier, gold, completion, expected):
    result = verifier.score(gold, completion)
    assert result.status is expected, result
    assert result.value == (1.0 if expected is OK else 0.0)
    if expected is not UNPARSABLE:
        assert result.extracted  # what was compared is reported


def test_case_count():
    assert len(CASES) >= 60


def test_score_many_matches_score_and_runs_in_parallel(verifier):
    golds = [g for g, _, _ in CASES]
    completions = [c for _, c, _ in CASES]
    results = verifier.score_many(golds, completions)
    assert [r.status for r in results] == [s for _, _, s in CASES]
    assert len(verifier._pool.pids) == 2  # both workers served the batch
    with pytest.raises(ValueError):
        verifier.score_many(["1"], [])


def test_pathological_input_times_out_and_verifier_recovers():
    with MathVerifier(MathVerifierConfig(timeout=2)) as v:
        assert v.score("2", "\\boxed{2}").correct  # fast path, no worker needed
        assert v.score("x+1", "\\boxed{1+x}").correct  # starts the worker
        start = time.monotonic()
        result = v.score("1", "\\boxed{9^{9^{9^{9}}}}")  # sympy would compute this for ever
        elapsed = time.monotonic() - start
        assert result.status is Status.TIMEOUT and result.value is None, result
        assert result.extracted == "9^{9^{9^{9}}}"
        assert elapsed < 2 + 2.5
        # The killed worker is replaced: the verifier still works.
        assert v.score("x^2-1", "\\boxed{(x-1)(x+1)}").status is OK
        assert v.score("x^2-1", "\\boxed{(x-1)^2}").status is WRONG


def test_worker_crash_gives_error_not_zero():
    with MathVerifier(MathVerifierConfig(timeout=60)) as v:
        results = []
        thread = threading.Thread(target=lambda: results.append(v.score("1", "\\boxed{9^{9^{9^{9}}}}")))
        thread.start()
        deadline = time.monotonic() + 60
        while not v._pool.busy_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(v._pool.busy_pids()[0], signal.SIGKILL)  # what a segfault or the OOM killer does
        thread.join(timeout=30)
        (result,) = results
        assert result.status is Status.ERROR and result.value is None
        assert "worker process died" in result.details and "signal 9" in result.details
        assert v.score("x+1", "\\boxed{1+x}").status is OK


def test_equivalent(verifier):
    assert verifier.equivalent("1/2", "0.5")
    assert verifier.equivalent("x+1", "1+x")  # needs math-verify
    assert not verifier.equivalent("2", "3")
    assert not verifier.equivalent("x+1", "x+2")


def test_answer_key_groups_equal_answers():
    assert len({answer_key(a) for a in ["1/2", "0.5", "\\frac{1}{2}", "\\dfrac12", "$0.50$", ".5"]}) == 1
    assert answer_key("1,000") == answer_key("1000") == answer_key("\\$1000") == answer_key("1000 dollars")
    assert answer_key("50%") == answer_key("50")  # the % sign is dropped (documented)
    assert answer_key("x + 1") == answer_key("x+1")
    assert answer_key("\\left(x+1\\right)") == answer_key("(x + 1)")
    assert answer_key("\\dfrac{\\pi}{2}") == answer_key("\\frac{\\pi}{2}")
    assert answer_key("1/2") != answer_key("1/3")
    assert answer_key("1/3") != answer_key("0.333")  # inexact: left to MathVerifier.equivalent
    assert answer_key("x+1") != answer_key("x+2")
    assert answer_key(None) is None and answer_key("  ") is None
    # Math delimiters around an answer do not split the vote (box contents keep them).
    assert answer_key("\\(38\\)") == answer_key("\\[38\\]") == answer_key("$$38$$") == answer_key("38")
    assert answer_key("\\(x + 1\\)") == answer_key("x+1")


@pytest.mark.parametrize(
    "text, value",
    [("-3", -3), ("1,234.5", 1234.5), (".5", 0.5), ("3/4", 0.75), ("\\frac{3}{4}", 0.75), ("\\dfrac12", 0.5),
     ("$5", 5), ("5 dollars", 5), ("5cm", 5), ("\\text{5 cm}", 5), ("1e-3", 0.001), ("90^\\circ", 90)],
)
def test_parse_number(text, value):
    parsed = parse_number(text)
    assert parsed is not None and float(parsed[0]) == pytest.approx(value)


@pytest.mark.parametrize("text", ["2 pi", "5x", "x=5", "10^{3}", "\\sqrt{2}", "1/0", "abc", ""])
def test_parse_number_rejects_non_numbers(text):
    assert parse_number(text) is None


# ---- WorkerPool itself, with standard-library functions (importable in spawned workers) ----


def test_worker_pool_runs_in_parallel_and_keeps_order():
    with WorkerPool(time.sleep, workers=2, timeout=10) as pool:
        assert pool.pids == []  # started lazily
        pool.map([(0,), (0,)])  # start-up is not part of the timing below
        start = time.monotonic()
        outcomes = pool.map([(0.4,)] * 4)
        assert [o.status for o in outcomes] == ["ok"] * 4
        assert time.monotonic() - start < 1.4  # 4 x 0.4 s on 2 workers, not 1.6 s serially
    with WorkerPool(operator.pow, workers=2) as pool:
        assert [o.value for o in pool.map([(2, i) for i in range(10)])] == [2**i for i in range(10)]


def test_worker_pool_timeout_kills_and_replaces_the_worker():
    with WorkerPool(time.sleep, workers=1, timeout=0.5) as pool:
        pool.map([(0,)])
        old_pid = pool.pids[0]
        start = time.monotonic()
        outcome = pool.map([(30,)])[0]
        assert outcome.status == "timeout" and "0.5s" in outcome.error
        assert time.monotonic() - start < 2
        with pytest.raises(ProcessLookupError):
            os.kill(old_pid, 0)  # the hung worker is gone
        assert pool.map([(0,)])[0].status == "ok"  # and a fresh one serves the next call


def test_worker_pool_errors_and_crashes():
    with WorkerPool(operator.truediv, workers=1, timeout=10) as pool:
        ok, err = pool.map([(1, 2), (1, 0)])
        assert ok.value == 0.5 and err.status == "error" and "ZeroDivisionError" in err.error
    with WorkerPool(os._exit, workers=1, timeout=10) as pool:
        outcome = pool.map([(3,)])[0]
        assert outcome.status == "error" and "exit code 3" in outcome.error
    with WorkerPool(os.abort, workers=1, timeout=10) as pool:  # a C-level crash (SIGABRT)
        outcomes = pool.map([(), ()])
        assert all(o.status == "error" and "signal 6" in o.error for o in outcomes)


def test_worker_pool_from_a_thread_and_after_close():
    pool = WorkerPool(operator.add, workers=1, timeout=10)
    box = []
    thread = threading.Thread(target=lambda: box.append(pool.map([(1, 2)])))
    thread.start()
    thread.join(timeout=60)
    assert box[0][0].value == 3
    pool.close()
    with pytest.raises(RuntimeError):
        pool.map([(1, 2)])
