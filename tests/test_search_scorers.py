"""Search scorers: aggregation against hand-computed values, each scorer against a mock or tiny random model."""

import math
import re

import pytest
import torch

from reasonlab.errors import BackendError, UsageError
from reasonlab.policies.base import Policy
from reasonlab.search import SCORERS, make_scorer
from reasonlab.search.base import Candidate, SearchContext
from reasonlab.search.scorers import PRMScorer, RolloutScorer, aggregate
from reasonlab.tasks.base import Task
from reasonlab.types import Completion, Example, RewardResult

EX = Example(id="e", prompt="Q: 1+1=?\nA: ", answer="2")


class AnswerTask(Task):
    name = "answer"

    def examples(self, split="test", limit=None):
        return [EX]

    def score(self, example, completion):
        m = re.findall(r"answer: (\S+)", completion)
        if not m:
            return RewardResult.unparsable("none")
        if m[-1] == "boom":
            return RewardResult.error("checker crashed", extracted="boom")
        return RewardResult.ok(m[-1]) if m[-1] == example.answer else RewardResult.wrong(m[-1])

    def answer_key(self, extracted):
        return None if extracted is None else float(extracted)


class RolloutPolicy(Policy):
    """Rollout i from any prompt writes ``answers[i]``; counts its tokens."""

    name = "rollouts"

    def __init__(self, answers):
        self.answers, self.tokens = answers, 0

    def generate(self, prompts, sampling):
        out = []
        for pi, p in enumerate(prompts):
            for i in range(sampling.n):
                text = self.answers[i % len(self.answers)][:sampling.max_new_tokens]
                self.tokens += len(text)
                out.append(Completion(text=text, token_ids=[1] * len(text), logprobs=None, finish_reason="stop",
                                      prompt_tokens=len(p), prompt_index=pi))
        return out


def ctx_for(policy=None, budget=None):
    return SearchContext(EX, policy or RolloutPolicy(["answer: 2"]), AnswerTask(), budget=budget)


def test_aggregate_against_hand_computed_values():
    s = [0.9, 0.5, 0.8]
    assert aggregate(s, "last") == 0.8
    assert aggregate(s, "min") == 0.5
    assert aggregate(s, "product") == pytest.approx(0.36)
    assert aggregate(s, "mean") == pytest.approx(2.2 / 3)
    with pytest.raises(UsageError, match="aggregation"):
        aggregate(s, "max")
    with pytest.raises(ValueError):
        aggregate([], "min")


def test_confidence_is_exp_mean_logprob():
    ctx = ctx_for()
    cands = [Candidate(text="abcd", tokens=4, logprob=-2.0), Candidate(text="ab", tokens=2, logprob=-0.2)]
    scores = make_scorer("confidence").score(ctx, cands)
    assert scores == pytest.approx([math.exp(-0.5), math.exp(-0.1)])
    with pytest.raises(UsageError, match="log-probs"):  # a backend with no log-probs and no way to score ids
        make_scorer("confidence").score(ctx, [Candidate(text="x", tokens=1, logprob=None)])


def test_agreement_groups_by_answer_key():
    ctx = ctx_for()
    cands = [Candidate(text="answer: 2"), Candidate(text="answer: 2.0"), Candidate(text="answer: 3"),
             Candidate(text="no answer"), Candidate(text="answer: 2", finished=False)]
    ctx.fill_answers(cands[:4])
    scores = make_scorer("agreement").score(ctx, cands)
    assert scores == pytest.approx([1 / 4, 1 / 4, 0.0, 0.0, 0.0])  # 2 and 2.0 agree; of 4 others, 1 each
    assert math.isnan(make_scorer("agreement").score(ctx, cands[:1])[0])


def test_oracle_is_labelled_and_reports_failed_checks_as_nan():
    scorer = make_scorer("verifier-oracle")
    assert "oracle" in scorer.name
    scores = scorer.score(ctx_for(), [Candidate(text="answer: 2"), Candidate(text="answer: 5"),
                                      Candidate(text="answer: boom")])
    assert scores[:2] == [1.0, 0.0] and math.isnan(scores[2])


def test_mc_rollout_value_and_its_tokens_are_counted():
    policy = RolloutPolicy(["answer: 2", "answer: 3", "answer: 2", "answer: boom"])
    ctx = ctx_for(policy, budget=1000)
    scorer = ctx.scorer = make_scorer("mc-rollout", k=4, max_new_tokens=20)
    cands = [Candidate(text="1+1=", finished=False), Candidate(text="answer: 2"), Candidate(text="answer: 7")]
    scores = ctx.score(cands)
    # Rollouts: 2 correct, 1 wrong, 1 unjudgeable (left out) -> 2/3; finished candidates judged directly.
    assert scores == pytest.approx([2 / 3, 1.0, 0.0])
    assert ctx.compute.generated_tokens == policy.tokens == 9 + 9 + 9 + 12
    assert ctx.compute.generations == 4 and ctx.compute.scorer_calls == 3
    assert isinstance(scorer, RolloutScorer) and scorer.last_rollouts[0][0] == "1+1=answer: 2"


def test_mc_rollout_respects_the_budget():
    policy = RolloutPolicy(["answer: 2"])
    ctx = ctx_for(policy, budget=25)
    ctx.scorer = make_scorer("mc-rollout", k=4, max_new_tokens=10)
    scores = ctx.score([Candidate(text="a", finished=False), Candidate(text="b", finished=False)])
    assert policy.tokens <= 25 and scores[0] == 1.0
    scores = ctx.score([Candidate(text="c", finished=False)])  # nothing affordable: cannot rate
    assert math.isnan(scores[0]) and ctx.compute.generated_tokens <= 25


def test_prm_adapter_aggregates_step_scores():
    class LengthPRM:
        def step_scores(self, example, steps):
            return [1.0 / len(s) for s in steps]

    scorer = make_scorer("prm", prm=LengthPRM(), how="min")
    cand = Candidate(text="ab\nabcd\n", steps=("ab", "abcd"))
    assert scorer.score(ctx_for(), [cand]) == [0.25]
    assert PRMScorer(prm=LengthPRM(), how="product").score(ctx_for(), [cand]) == [0.5 * 0.25]

    class Broken:
        def step_scores(self, example, steps):
            return [0.5]

    with pytest.raises(BackendError, match="2 steps"):
        make_scorer("prm", prm=Broken()).score(ctx_for(), [cand])
    with pytest.raises(UsageError, match="process reward model"):
        make_scorer("prm", prm=object())


def test_registry_and_errors():
    assert {"confidence", "self-eval", "agreement", "verifier-oracle", "mc-rollout", "rm", "prm"} <= set(SCORERS)
    with pytest.raises(UsageError, match="unknown scorer"):
        make_scorer("nope")
    with pytest.raises(UsageError, match="unknown setting"):
        make_scorer("mc-rollout", depth=3)
    with pytest.raises(UsageError, match="no argument"):
        make_scorer("agreement:x")
    with pytest.raises(UsageError, match="needs the reward model"):
        make_scorer("rm")
    with pytest.raises(UsageError, match="cannot load"):
        make_scorer("rm:/nonexistent/rm")
    assert make_scorer("mc-rollout", k="3").k == 3


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    """A randomly initialised tiny LlamaForSequenceClassification with tiny's tokenizer (no downloads)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from reasonlab.policies.tiny import build_tokenizer

    tok = build_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, num_labels=1,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(cfg)
    d = tmp_path_factory.mktemp("rm")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d, model, tok


def test_reward_model_scorer_matches_the_model(reward_model_dir):
    d, model, tok = reward_model_dir
    scorer = make_scorer(f"rm:{d}", device="cpu", batch_size=2)
    cands = [Candidate(text="1+1=2\nanswer: 2"), Candidate(text="answer: 3"), Candidate(text="12")]
    scores = scorer.score(ctx_for(), cands)
    with torch.inference_mode():
        want = [model(**tok(EX.prompt + c.text, return_tensors="pt")).logits[0, 0].item() for c in cands]
    assert scores == pytest.approx(want, abs=1e-4)  # padding in a batch changes nothing
    squashed = make_scorer(f"rm:{d}", device="cpu", sigmoid=True).score(ctx_for(), cands)
    assert squashed == pytest.approx([1 / (1 + math.exp(-w)) for w in want], abs=1e-4)


def test_self_eval_is_renormalised_yes_probability(random_tiny_dir):
    from reasonlab.policies.hf import HFPolicy

    policy = HFPolicy(random_tiny_dir, device="cpu")
    ctx = SearchContext(EX, policy, AnswerTask())
    scorer = make_scorer("self-eval", yes=" yes", no=" no")
    cands = [Candidate(text="1+1=2\n"), Candidate(text="answer: 3")]
    scores = scorer.score(ctx, cands)
    tok = policy.tokenizer
    for c, s in zip(cands, scores):
        prompt = tok(scorer.template.format(prompt=EX.prompt, solution=c.text))["input_ids"]
        ly, ln = (float(policy.logprobs_of([prompt], [tok(w, add_special_tokens=False)["input_ids"]])[0].sum())
                  for w in (" yes", " no"))
        assert s == pytest.approx(math.exp(ly) / (math.exp(ly) + math.exp(ln)), rel=1e-4)
        assert 0 < s < 1
    with pytest.raises(UsageError, match="scores token ids"):
        scorer.score(ctx_for(), cands)
