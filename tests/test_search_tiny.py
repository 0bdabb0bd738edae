"""Search strategies end to end on the shipped ``tiny`` model and its arithmetic task (a few seconds each).

Searches are deterministic (seeded per example and call), so the accuracy comparisons are fixed
numbers on fixed problems, not samples of a noisy process.
"""

import json

import pytest

from reasonlab.policies import load_policy
from reasonlab.policies.base import Policy
from reasonlab.search import REFLECTION, Tree, annotate, make_scorer, make_strategy
from reasonlab.tasks import load_task

LINES = {"separator": "\n", "max_step_tokens": 16, "max_steps": 6, "max_new_tokens": 48}


class Counting(Policy):
    """Passes calls to a policy and adds up the tokens it really generated (an independent count)."""

    def __init__(self, inner):
        self.inner, self.name, self.tokenizer = inner, inner.name, inner.tokenizer
        self.tokens = 0
        self.prompts: list[str] = []

    def generate(self, prompts, sampling):
        out = self.inner.generate(prompts, sampling)
        self.tokens += sum(len(c.token_ids) for c in out)
        self.prompts += list(prompts)
        return out

    def render(self, prompt):
        return self.inner.render(prompt)


@pytest.fixture(scope="module")
def tiny():
    return Counting(load_policy("tiny", device="cpu")), load_task("arith")


def accuracy(strategy, policy, task, examples, scorer=None, budget=None):
    results = [strategy.search(ex, policy, task, scorer, budget=budget) for ex in examples]
    return sum(task.score(ex, r.text).correct for ex, r in zip(examples, results)) / len(examples), results


def test_self_consistency_is_accurate_and_counts_tokens_exactly(tiny):
    policy, task = tiny
    examples = task.examples(limit=20)
    greedy_acc, _ = accuracy(make_strategy("greedy", max_new_tokens=48), policy, task, examples)
    before = policy.tokens
    sc_acc, results = accuracy(make_strategy("sc", n=8, max_new_tokens=48), policy, task, examples)
    # On 20 problems one flipped answer moves accuracy by 5 points, and on tiny's task the vote does
    # not beat greedy over 500 problems either (BENCHMARKS.md): check it is in greedy's league.
    assert sc_acc >= 0.6 and sc_acc >= greedy_acc - 0.1
    assert sum(r.compute.generated_tokens for r in results) == policy.tokens - before
    for r in results:
        assert r.compute.generations == 8 and r.compute.generated_tokens == sum(n.tokens for n in r.tree.nodes)
        votes = max(n.meta["votes"] for n in r.tree.nodes[1:])
        assert r.tree[r.tree.chosen_path()[-1]].meta["votes"] == votes  # the chosen sample has the top answer


def test_beam_search_with_rollout_values_beats_greedy(tiny):
    policy, task = tiny
    examples = task.examples(limit=6)  # greedy gets 3 of these 6 right
    greedy_acc, _ = accuracy(make_strategy("greedy", max_new_tokens=48), policy, task, examples)
    beam = make_strategy("beam", beams=4, width=2, **LINES)
    beam_acc, results = accuracy(beam, policy, task, examples, make_scorer("mc-rollout", k=2, max_new_tokens=48),
                                 budget=1500)
    assert beam_acc > greedy_acc
    for ex, r in zip(examples, results):
        assert r.compute.generated_tokens <= 1500 and r.compute.scorer_calls > 0
        chosen = r.tree[r.tree.chosen_path()[-1]]
        assert chosen.terminal and r.text == r.tree.solution(chosen.id)
        assert all(n.text.endswith("\n") for n in r.tree.path(chosen.id)[1:-1])  # steps are lines
        annotate(r, task, ex)
        back = Tree.from_json(r.tree.to_json())
        assert back.to_dict() == r.tree.to_dict() and back[chosen.id].correct == task.score(ex, r.text).correct


@pytest.mark.parametrize("name,options", [
    ("rebase", {"width": 4}),
    ("mcts", {"iterations": 5, "expand_k": 2, "evaluation": "mix"}),
])
def test_tree_searches_run_within_budget(tiny, name, options):
    policy, task = tiny
    scorer = make_scorer("mc-rollout", k=2, max_new_tokens=48)
    for ex in task.examples(limit=2):
        r = make_strategy(name, **options, **LINES).search(ex, policy, task, scorer, budget=1200)
        assert 0 < r.compute.generated_tokens <= 1200
        assert len(r.tree) > 3 and r.tree.chosen_path()[0] == 0
        json.loads(json.dumps(r.to_dict()))
        if name == "mcts":
            assert r.tree.root.visits == sum(c.visits for c in r.tree.children(0)) > 0


def test_revision_runs_on_a_raw_text_model(tiny):
    policy, task = tiny
    ex = task.examples(limit=1)[0]
    policy.prompts.clear()
    r = make_strategy("revise", rounds=3, max_new_tokens=48).search(ex, policy, task)
    assert r.tree.mode == "revisions" and len(r.tree) == 4
    assert policy.prompts[1].startswith(ex.prompt + r.tree[1].text) and REFLECTION in policy.prompts[1]
    assert r.compute.generations == 3


def test_self_eval_and_confidence_scorers_on_tiny(tiny):
    policy, task = tiny[0].inner, tiny[1]  # self-eval scores token ids: the transformers policy itself
    ex = task.examples(limit=1)[0]
    for scorer in (make_scorer("self-eval", yes=" yes", no=" no"), make_scorer("confidence")):
        r = make_strategy("bon", n=4, max_new_tokens=48, separator="\n").search(ex, policy, task, scorer)
        scores = [c.score for c in r.candidates]
        assert len(scores) == 4 and all(0 < s <= 1 for s in scores)
        assert r.tree[r.tree.chosen_path()[-1]].score == max(scores)
