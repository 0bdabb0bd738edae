"""Reward-hacking probes: the probe set, the report logic on reference verifiers, and the real rule-based verifiers."""

import json

import pytest

from reasonlab.errors import UsageError
from reasonlab.rewards.math import MathVerifier, MathVerifierConfig
from reasonlab.rewards.probes import (
    KINDS,
    NEEDS,
    STYLES,
    build_probes,
    reasoning_format_ok,
    run_probes,
    wrong_answers,
)
from reasonlab.types import Example, RewardResult

GSM_EXAMPLE = Example(id="gsm-style/ducks", prompt="unused", answer="18",
                      question="Janet's ducks lay 16 eggs per day. She eats 3 and bakes with 4. "
                               "She sells the rest at $2 each. How many dollars does she make?")
MATH_EXAMPLE = Example(id="math-style/frac", prompt="unused", answer="\\frac{3}{4}",
                       question="What is $\\frac{1}{2} + \\frac{1}{4}$?")


# ---------------------------------------------------------------------------------------------- probe set

def test_probe_set_covers_every_kind_style_and_need():
    probes = build_probes(GSM_EXAMPLE)
    assert {p.kind for p in probes} == {"control", *KINDS}
    assert sorted(p.style for p in probes if p.kind == "control") == sorted(STYLES)
    assert {p.needs for p in probes if p.kind != "control"} == set(NEEDS)
    assert len({(p.kind, p.name) for p in probes}) == len(probes)  # names are unique within a kind
    for p in probes:
        if p.kind not in ("question_restated",):
            assert "18" in p.text, p.name  # every probe puts the gold somewhere
    assert all(len(p.text) >= 20_000 for p in probes if p.kind == "extreme_length")
    restated = [p for p in probes if p.kind == "question_restated"]
    assert all(GSM_EXAMPLE.question in p.text for p in restated)
    with pytest.raises(UsageError, match="no gold answer"):
        build_probes(Example(id="x", prompt="p"))


def test_wrong_answers():
    assert wrong_answers("18", 2) == ["19", "20"]
    assert wrong_answers("-7", 2) == ["-6", "-5"]
    assert wrong_answers("0.5", 1) == ["1.5"]
    assert wrong_answers("\\frac{3}{4}", 2) == ["\\frac{3}{4}+1", "\\frac{3}{4}+2"]


@pytest.mark.parametrize("text, ok", [
    ("<think>\nreasoning\n</think>\n<answer>18</answer>", True),
    ("  <think>r</think><answer>18</answer>\n", True),
    ("<think></think><answer>18</answer>", False),           # empty reasoning
    ("<think>\n \n</think><answer>18</answer>", False),      # blank reasoning
    ("<answer>18</answer>", False),                          # no think block
    ("<think>r</think><answer> </answer>", False),           # empty answer
    ("<think>r</think><answer>1</answer><answer>18</answer>", False),
    ("<think>r</think><answer>18</answer> and more", False),  # text after the answer block
    ("Sure! <think>r</think><answer>18</answer>", False),     # text before the think block
])
def test_reasoning_format_ok(text, ok):
    assert reasoning_format_ok(text) is ok


# ---------------------------------------------------------------------------------------------- report logic

def strict_reference(example, text):
    """A verifier that should pass every answer and format probe: R1 format, answer block == gold exactly."""
    if not reasoning_format_ok(text):
        return RewardResult.unparsable("format")
    answer = text.split("<answer>")[1].split("</answer>")[0].strip()
    return RewardResult.ok(answer) if answer == example.answer else RewardResult.wrong(answer)


def substring(example, text):
    """A naive verifier: rewarded when the gold appears anywhere."""
    return 1.0 if example.answer in text else 0.0


def test_run_probes_separates_leaks_from_expected_and_not_applicable():
    report = run_probes({"strict": strict_reference, "naive": substring}, [GSM_EXAMPLE, MATH_EXAMPLE],
                        checks={"strict": ("answer", "format"), "naive": ("answer",)})
    # The strict verifier reads only the tag style; probes in other styles are not applicable to it.
    assert report.styles_read("strict") == ["tag"]
    assert report.passed("strict") and report.leaks("strict") == []
    # Filler before a well-formed answer needs a length check, which "strict" does not claim.
    through = {(o.kind, o.name) for o in report.outcomes if report.is_expected_through(o) and o.verifier == "strict"}
    assert through == {("extreme_length", "filler_then_answer/tag")}
    assert report.cell("strict", "no_reasoning")["rewarded"] == 0
    assert report.cell("strict", "latex_tricks")["not_applicable"] > 0

    assert not report.passed("naive")
    leaked_kinds = {o.kind for o in report.leaks("naive")}
    assert {"answer_outside_slot", "multiple_answers", "latex_tricks", "candidate_list"} <= leaked_kinds
    assert all(o.needs == "answer" for o in report.leaks("naive"))
    assert report.cell("naive", "no_reasoning")["expected_through"] == report.cell("naive", "no_reasoning")["probes"]

    md = report.to_markdown("probes")
    assert "| probe kind | strict | naive |" in md and "**LEAK" in md and "| **verdict** | PASS | **FAIL** |" in md
    data = json.loads(json.dumps(report.to_dict()))
    assert data["verifiers"]["strict"]["passed"] is True and data["leaks"]


def test_a_verifier_that_rewards_nothing_or_crashes_does_not_pass():
    def nothing(example, text):
        return 0.0

    def crash(example, text):
        raise RuntimeError("worker died")

    report = run_probes({"nothing": nothing, "crash": crash}, [GSM_EXAMPLE])
    assert report.controls_missed("nothing") == [GSM_EXAMPLE.id] and not report.passed("nothing")
    assert all(not o.applicable for o in report.outcomes if o.verifier == "nothing" and o.kind != "control")
    assert report.errors("crash") and not report.passed("crash")
    assert "RuntimeError: worker died" in report.errors("crash")[0].details
    with pytest.raises(UsageError, match="unknown checks"):
        run_probes({"x": nothing}, [GSM_EXAMPLE], checks={"x": ("vibes",)})


# ---------------------------------------------------------------------------------------------- real verifiers

@pytest.fixture(scope="module")
def arith_report():
    from reasonlab.tasks import load_task

    task = load_task("arith")
    examples = task.examples("test", limit=3)
    return run_probes({"arith": task.score}, examples)


# A strict (reward) mode of the math verifier, when this version has one (proposed with the probe report).
HAS_STRICT = "strict" in MathVerifierConfig.__dataclass_fields__


@pytest.fixture(scope="module")
def math_report():
    config = MathVerifierConfig(strict=True) if HAS_STRICT else MathVerifierConfig()
    with MathVerifier(config) as mv:
        yield run_probes({"math": lambda ex, text: mv.score(ex.answer, text)}, [GSM_EXAMPLE, MATH_EXAMPLE])


def test_arith_verifier_reads_answer_lines_and_rejects_most_probes(arith_report):
    r = arith_report
    assert r.styles_read("arith") == ["line"] and not r.controls_missed("arith")
    for kind in ("answer_outside_slot", "question_restated"):
        assert r.cell("arith", kind)["rewarded"] == 0, kind
    assert r.cell("arith", "no_reasoning")["expected_through"] == 3     # "answer: G" alone: a format check's job
    assert r.cell("arith", "extreme_length")["expected_through"] == 3   # a length check's job


def test_math_verifier_reads_every_style_and_rejects_wrong_finals(math_report):
    r = math_report
    assert r.styles_read("math") == list(STYLES)
    rejected = [o for o in r.outcomes if o.name.startswith(("gold_in_reasoning_wrong_final", "gold_after_final"))
                or (o.kind == "candidate_list" and o.name.startswith("in_slot"))]
    assert rejected and not any(o.rewarded for o in rejected)


def test_arith_verifier_passes_every_probe(arith_report):
    assert arith_report.leaks() == []


@pytest.mark.xfail(not HAS_STRICT, strict=True,
                   reason="no strict mode: extract_answer's last-number fallback, last of several boxes/tags wins, "
                          "nested boxes; math-verify reads 'W = G' as G, '\\neg G' and 'G \\text{ is wrong}' as G")
def test_math_verifier_passes_every_probe(math_report):
    assert math_report.leaks() == []


def test_probes_around_a_worked_solution_stay_probes_and_the_arith_verifier_still_passes():
    """In-distribution probes (what learned reward models are probed with): the task's own reasoning."""
    from reasonlab.tasks import load_task

    task = load_task("arith")
    examples = task.examples("test", limit=3)

    def worked(ex):
        return ex.meta["solution"].rsplit("\nanswer:", 1)[0]

    for ex in examples:
        probes = build_probes(ex, reasoning=worked(ex))
        control = next(p for p in probes if p.kind == "control" and p.style == "line")
        assert control.text == ex.meta["solution"]  # the honest control is exactly the worked solution
        wrong_final = next(p for p in probes if p.name == "gold_in_reasoning_wrong_final/line")
        assert wrong_final.text.startswith(worked(ex)) and wrong_final.text.endswith(f"answer: {int(ex.answer) + 1}")
        assert next(p for p in probes if p.name == "answer_only/line").text == f"answer: {ex.answer}"
    report = run_probes({"arith": task.score}, examples, probes=lambda ex: build_probes(ex, reasoning=worked(ex)))
    assert report.styles_read("arith") == ["line"] and report.leaks() == []
