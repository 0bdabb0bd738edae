"""Answer extraction from model text (reasonlab.rewards.extract)."""

import pytest

from reasonlab.rewards.extract import extract_answer, extract_boxed, find_all_boxed, gsm8k_gold


@pytest.mark.parametrize(
    "text, expected",
    [
        # 1. <answer> tags: the last one wins, content stripped, a box inside it is unwrapped.
        ("<think>2+2</think><answer> 4 </answer>", "4"),
        ("<answer>1</answer> wait, no <answer>2</answer>", "2"),
        ("<answer>so it is \\boxed{\\frac{1}{2}}</answer>", "\\frac{1}{2}"),
        ("<answer>The answer is 7.</answer>", "7"),
        ("<answer>$x^2$</answer>", "x^2"),
        ("<ANSWER>12</ANSWER>", "12"),
        ("\\boxed{3} but finally <answer>5</answer>", "5"),
        ("<answer></answer> so \\boxed{9}", "9"),  # an empty tag falls through to the box
        # 2. \boxed / \fbox: the last one, nested braces balanced.
        ("Thus \\boxed{42}.", "42"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("\\fbox{7}", "7"),
        ("$\\boxed {  -3 }$", "-3"),
        ("so \\boxed 5 is it", "5"),
        ("so \\boxed{$38$}.", "38"),  # math delimiters inside the box are not part of the answer
        ("The answer is \\boxed{\\(\\frac{1}{2}\\)}", "\\frac{1}{2}"),
        ("\\boxed{1} and a truncated \\boxed{2", "1"),
        # 3. phrases
        ("So the answer is 18.", "18"),
        ("The answer is: $\\frac{3}{4}$. Done.", "\\frac{3}{4}"),
        ("Final Answer: The final answer is 3.5. I hope it is correct.", "3.5"),
        ("final answer: **12**", "12"),
        ("Answer: -7\nSome notes after.", "-7"),
        ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
        ("The answer is 3 but wait, the answer is 4", "4"),
        ("The answer is \\boxed{5}", "5"),
        # 4. last number fallback
        ("I computed 3 and then 1,234.5 dollars", "1,234.5"),
        ("the ratio is 3/4", "3/4"),
        ("so x = -3", "-3"),
        ("only .5 of it", ".5"),
        ("x-3", "3"),  # a minus after a letter is subtraction, not a sign
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text", ["", "I don't know", "no numbers here at all", "<answer>  </answer>"])
def test_nothing_found(text):
    assert extract_answer(text) is None


def test_last_number_fallback_can_be_turned_off():
    assert extract_answer("it is 12", last_number_fallback=False) is None
    assert extract_answer("the answer is 12", last_number_fallback=False) == "12"


def test_boxed_helpers():
    text = "a \\boxed{x^{2}} b \\fbox{\\{1\\}} c \\boxed{}"
    assert find_all_boxed(text) == ["x^{2}", "\\{1\\}", ""]
    assert extract_boxed("no box") is None
    assert extract_boxed("\\boxed{ $$7$$ }") == "7"
    assert extract_boxed("\\boxed{\\$5}") == "\\$5"  # an escaped dollar is a currency sign, not a delimiter
    assert extract_boxed("\\boxed{1} \\boxed{{2}}") == "{2}"


def test_gsm8k_gold():
    assert gsm8k_gold("She has 1,000 - 4 = 996.\n#### 1,000") == "1000"
    assert gsm8k_gold("#### 5 #### -3 ") == "-3"
    with pytest.raises(ValueError, match="####"):
        gsm8k_gold("no marker")


@pytest.mark.parametrize("text, expected", [
    ("so the final answer is: 160,000 + 150 = 225,000.", "225,000"),
    ("The answer is x = 5", "5"),
    ("The answer is x <= 5", "x <= 5"),
])
def test_phrase_with_a_computation_takes_its_result(text, expected):
    assert extract_answer(text) == expected
