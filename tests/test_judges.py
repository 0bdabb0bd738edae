"""Generative judges: verdict parsing (well-formed and malformed), and judges end to end on mock policies."""

import logging
import math

import pytest
import torch

from reasonlab.errors import UsageError
from reasonlab.policies.base import Policy
from reasonlab.rewards.judges import (
    JudgeConfig,
    PairwiseJudge,
    PointwiseJudge,
    RubricJudge,
    YesNoJudge,
    combine_pairwise,
    judge_reward,
    pairwise_reward,
    parse_choice,
    parse_score,
    parse_yes_no,
)
from reasonlab.types import Completion, Example, Status

# ---------------------------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("text, low, high, value", [
    ("Rating: [[7]]", 1, 10, 7.0),
    ("The answer is accurate and complete.\nRating: [[8]]", 1, 10, 8.0),
    ("[[9]]", 1, 10, 9.0),
    ("**Score:** 4", 0, 5, 4.0),
    ("Score: 4/5", 0, 5, 4.0),
    ("I'd give it a score of 6 out of 10.", 1, 10, 6.0),
    ("The score is 7", 1, 10, 7.0),
    ("Score: 3. On reflection the answer is fine.\nScore: 5", 0, 5, 5.0),  # the last verdict wins
    ("Rating: [[7.5]]", 1, 10, 7.5),
    ("Score: 0", 0, 5, 0.0),
])
def test_parse_score_well_formed(text, low, high, value):
    r = parse_score(text, low, high)
    assert r.status is Status.OK and r.value == value


@pytest.mark.parametrize("text, low, high, why", [
    ("", 1, 10, "no rating"),
    ("It is great, ten out of ten.", 1, 10, "no rating"),
    ("Rating: [[rating]]", 1, 10, "no rating"),          # the template echoed back
    ("Score: <total points>", 0, 5, "no rating"),
    ("Rating: [[11]]", 1, 10, "outside 1..10"),
    ("Rating: 0", 1, 10, "outside 1..10"),
    ("Score: 6", 0, 5, "outside 0..5"),
    ("Score: 4/5", 1, 10, "not on the 1..10 scale"),
    ("Rating: [[-3]]", 1, 10, "outside"),
])
def test_parse_score_malformed(text, low, high, why):
    r = parse_score(text, low, high)
    assert r.status is Status.UNPARSABLE and r.value is None and why in r.details


@pytest.mark.parametrize("text, cot, value", [
    ("Yes", False, 1.0),
    ("No.", False, 0.0),
    ("**Yes**, the response is correct.", False, 1.0),
    ("yes", False, 1.0),
    ("Verdict: No", False, 0.0),
    ("Answer: no", False, 0.0),
    ("The sum is 12, which matches.\nVerdict: Yes", True, 1.0),
    ("Verdict: Yes\nWait, 3 is not 4.\nVerdict: No", True, 0.0),
    ("Judgement: yes", True, 1.0),
])
def test_parse_yes_no_well_formed(text, cot, value):
    r = parse_yes_no(text, cot)
    assert r.status is Status.OK and r.value == value


@pytest.mark.parametrize("text, cot", [
    ("", False),
    ("I think so.", False),
    ("Yesterday it was correct.", False),  # "Yes" must be a whole word
    ("Nobody knows.", False),
    ("Yes, because 2+2=4.", True),       # a chain-of-thought judge must write the verdict line
    ("Maybe", True),
])
def test_parse_yes_no_malformed(text, cot):
    r = parse_yes_no(text, cot)
    assert r.status is Status.UNPARSABLE and r.value is None


@pytest.mark.parametrize("text, choice, value", [
    ("[[A]]", "A", 1.0),
    ("[[B]]", "B", 0.0),
    ("[[C]]", "tie", 0.5),
    ("Assistant A is more detailed, but wrong. Final verdict: [[B]]", "B", 0.0),
    ("Verdict: Assistant B", "B", 0.0),
    ("Verdict: tie", "tie", 0.5),
    ("[[A]] ... no, on second thought [[B]]", "B", 0.0),
])
def test_parse_choice_well_formed(text, choice, value):
    r = parse_choice(text)
    assert r.status is Status.OK and r.extracted == choice and r.value == value


@pytest.mark.parametrize("text", ["", "A", "Both are fine.", "[[D]]", "The winner is clear."])
def test_parse_choice_malformed(text):
    r = parse_choice(text)
    assert r.status is Status.UNPARSABLE and r.value is None


def test_combine_pairwise_cancels_position_bias():
    A, B, C = parse_choice("[[A]]"), parse_choice("[[B]]"), parse_choice("[[C]]")
    assert combine_pairwise(A, B).value == 1.0          # a preferred in both orders
    assert combine_pairwise(B, A).value == 0.0          # b preferred in both orders
    biased = combine_pairwise(A, A)                     # "first one wins" whatever it is
    assert biased.value == 0.5 and "position bias" in biased.details
    assert combine_pairwise(C, C).value == 0.5
    bad = combine_pairwise(A, parse_choice("no idea"))
    assert bad.status is Status.UNPARSABLE and "swapped order" in bad.details


# ---------------------------------------------------------------------------------------------- mock policies

class MockPolicy(Policy):
    """Returns ``reply(prompt_text, sample_index)`` for every sample; records what it was asked."""

    name = "mock"

    def __init__(self, reply):
        self.reply = reply
        self.calls = []

    def render(self, prompt):
        return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt) + "\n"

    def generate(self, prompts, sampling):
        self.calls.append((list(prompts), sampling))
        out = []
        for i, p in enumerate(prompts):
            for k in range(sampling.n):
                out.append(Completion(text=self.reply(self.render(p), k), token_ids=[], logprobs=None,
                                      finish_reason="stop", prompt_tokens=0, prompt_index=i))
        return out


class CharTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


class ScoringPolicy(MockPolicy):
    """A policy that scores token ids: the probability of a continuation is set by its text."""

    def __init__(self, probs):
        super().__init__(lambda p, k: pytest.fail("the log-prob method must not sample"))
        self.probs = probs
        self.tokenizer = CharTokenizer()
        self.scored = []

    def encode(self, prompt):
        return [ord(c) for c in self.render(prompt)]

    def logprobs_of(self, prompt_ids, completion_ids):
        out = []
        for c in completion_ids:
            word = "".join(chr(i) for i in c)
            self.scored.append(word)
            lp = torch.zeros(len(c))
            p = self.probs.get(word.strip(), 1e-12)
            lp[0] = math.log(p) if p > 0 else -math.inf  # the rest of the word is certain
            out.append(lp)
        return out


# ---------------------------------------------------------------------------------------------- judges end to end

def test_pointwise_judge_scores_and_reports_parse_failures(caplog):
    policy = MockPolicy(lambda p, k: "Rating: [[8]]" if "good answer" in p else "I like it a lot!")
    judge = PointwiseJudge(policy)
    results = judge.score(["What is 2+2?", "What is 3+3?"], ["a good answer: 4", "something else"])
    assert results[0].status is Status.OK and results[0].value == 8.0
    assert results[1].status is Status.UNPARSABLE and results[1].value is None
    assert judge.stats.scored == 1 and judge.stats.unparsable == 1
    prompt = policy.calls[0][0][0][0]["content"]  # chat message to the judge
    assert "What is 2+2?" in prompt and "a good answer: 4" in prompt and "Rating: [[5]]" in prompt
    assert policy.calls[0][1].temperature == 0.0 and policy.calls[0][1].max_new_tokens == 32

    reward = judge_reward(judge)
    with caplog.at_level(logging.WARNING):
        out = reward(["What is 2+2?", "What is 3+3?"], ["a good answer: 4", "nope"])
    assert out == [pytest.approx(7 / 9), None]  # (8 - 1) / (10 - 1); the unparsable one is None, not 0
    assert "1 of 2 verdicts unreadable" in caplog.text
    assert judge.stats.unparsable == 2


def test_cot_pointwise_prompt_and_reference():
    policy = MockPolicy(lambda p, k: "The answer 4 is right; Rating: [[6]] at first, but really\nRating: [[9]]")
    judge = PointwiseJudge(policy, JudgeConfig(cot=True))
    reward = judge_reward(judge, normalize=False, reference_column="answer")
    ex = Example(id="e", prompt="Q", answer="4", question="What is 2+2?")
    assert reward(["ignored"], ["4"], example=[ex]) == [9.0]
    prompt = policy.calls[0][0][0][0]["content"]
    assert "Begin your evaluation by providing a short explanation" in prompt
    assert "[The Start of Reference Answer]\n4" in prompt and "What is 2+2?" in prompt
    assert policy.calls[0][1].max_new_tokens == 512


def test_rubric_judge_uses_the_self_rewarding_prompt():
    policy = MockPolicy(lambda p, k: "Relevant, complete and clear, minor verbosity.\nScore: 4")
    judge = RubricJudge(policy)
    [r] = judge.score(["Explain gravity."], ["Mass attracts mass."])
    assert r.value == 4.0 and r.status is Status.OK
    prompt = policy.calls[0][0][0][0]["content"]
    assert "additive 5-point scoring system" in prompt and "Bestow a fifth point" in prompt
    assert "Briefly justify your total score, up to 100 words." in prompt
    assert "<response>Mass attracts mass.</response>" in prompt
    assert judge_reward(judge)(["Explain gravity."], ["Mass attracts mass."]) == [pytest.approx(0.8)]


def test_pairwise_judge_both_orders():
    def prefers_right(prompt, k):  # a content-driven judge: picks the response that says "right"
        a = prompt.split("[The Start of Assistant A's Answer]\n")[1].split("\n")[0]
        return "[[A]]" if "right" in a else "[[B]]"

    judge = PairwiseJudge(MockPolicy(prefers_right))
    r = judge.compare(["q", "q"], ["right answer", "wrong answer"], ["wrong answer", "right answer"])
    assert [x.value for x in r] == [1.0, 0.0]
    assert "consistent" in r[0].details

    biased = PairwiseJudge(MockPolicy(lambda p, k: "[[A]]"))  # always the first position
    [b] = biased.compare(["q"], ["right answer"], ["wrong answer"])
    assert b.value == 0.5 and "position bias" in b.details

    reward = pairwise_reward(PairwiseJudge(MockPolicy(prefers_right)))
    assert reward(["q", "q"], ["right", "wrong"], baseline=["wrong", "right"]) == [1.0, 0.0]
    with pytest.raises(UsageError, match="'baseline' column"):
        reward(["q"], ["right"])
    with pytest.raises(UsageError, match="pairwise_reward"):
        judge_reward(judge)


def test_yes_no_judge_by_sampling_frequency():
    replies = ["Yes", "No", "Yes", "Hmm, hard to say"]
    policy = MockPolicy(lambda p, k: replies[k])
    judge = YesNoJudge(policy, samples=4)
    assert judge.method == "sample"  # this policy cannot score token ids
    [r] = judge.score(["Is 2+2=4?"], ["4"])
    assert r.value == pytest.approx(2 / 3) and "1 unreadable" in r.details  # the unreadable sample is left out
    sampling = policy.calls[0][1]
    assert sampling.n == 4 and sampling.temperature == 1.0

    none = YesNoJudge(MockPolicy(lambda p, k: "Perhaps"), samples=3)
    [u] = none.score(["q"], ["r"])
    assert u.status is Status.UNPARSABLE and none.stats.unparsable == 1


def test_yes_no_judge_cot_reads_the_verdict_line():
    policy = MockPolicy(lambda p, k: "2+2 is 4 and the response says 4.\nVerdict: Yes")
    judge = YesNoJudge(policy, JudgeConfig(cot=True), samples=1)
    [r] = judge.score(["What is 2+2?"], ["4"])
    assert r.value == 1.0 and policy.calls[0][1].temperature == 0.0  # one greedy verdict
    assert "Verdict: Yes" in policy.calls[0][0][0][0]["content"]
    with pytest.raises(UsageError, match="cannot follow chain-of-thought"):
        YesNoJudge(ScoringPolicy({}), JudgeConfig(cot=True), method="logprobs")


def test_yes_no_judge_by_logprobs():
    policy = ScoringPolicy({"Yes": 0.6, "yes": 0.1, "No": 0.2, "no": 0.0})
    judge = YesNoJudge(policy, JudgeConfig(chat=False))
    assert judge.method == "logprobs"
    [r] = judge.score(["Is 2+2=4?"], ["4"])
    assert r.value == pytest.approx(0.7 / 0.9) and r.extracted == "yes"
    # Raw-text prompt ends with the cue "Answer:", so each answer is scored with a leading space.
    assert sorted(policy.scored) == sorted([" Yes", " yes", " No", " no"])

    mute = YesNoJudge(ScoringPolicy({"Yes": 0.01, "No": 0.01}), JudgeConfig(chat=False))
    [u] = mute.score(["q"], ["r"])
    assert u.status is Status.UNPARSABLE and "not answering" in u.details
    with pytest.raises(UsageError, match="cannot score token ids"):
        YesNoJudge(MockPolicy(lambda p, k: "Yes"), method="logprobs")


def test_tiny_model_cannot_judge_and_it_is_reported():
    """The real built-in ``tiny`` (an arithmetic model) cannot follow a judge prompt: every verdict is reported
    unreadable, and the reward is None for each, never a number."""
    from reasonlab.policies import load_policy

    policy = load_policy("tiny")
    cfg = JudgeConfig(chat=False, max_new_tokens=16)
    judge = PointwiseJudge(policy, cfg)
    out = judge_reward(judge)(["Q: 1+2=?", "Q: 5-3=?"], ["answer: 3", "answer: 2"])
    assert out == [None, None]
    assert judge.stats.unparsable == 2 and judge.stats.scored == 0

    yn = YesNoJudge(policy, cfg)
    assert yn.method == "logprobs"  # the transformers backend scores token ids
    [r] = yn.score(["Q: 1+2=?"], ["answer: 3"])
    assert r.status is Status.UNPARSABLE and "not answering" in r.details, r.details
