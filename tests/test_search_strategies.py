"""Search strategies against a scripted mock policy and a mock scorer (no model).

The mock policy is character-level (token id = ``ord(char)``, EOS = 0): what it writes for a prompt
is scripted, and it honours stop strings and ``max_new_tokens`` the way real backends do, so step
boundaries, terminal steps and token counts can be checked exactly.
"""

import json
import math
import random
import re
from fractions import Fraction

import pytest

from reasonlab.errors import UsageError
from reasonlab.policies.base import Policy, find_stop
from reasonlab.search import (
    REFLECTION,
    STRATEGIES,
    Tree,
    make_scorer,
    make_strategy,
    rebase_allocation,
)
from reasonlab.search.base import Candidate, SearchContext, fit_rows, weighted_vote
from reasonlab.search.beam import top_k
from reasonlab.search.best_of_n import rejected
from reasonlab.search.mcts import backpropagate, dirichlet_noise, puct, uct
from reasonlab.search.scorers import Scorer
from reasonlab.tasks.base import Task
from reasonlab.types import Completion, Example, RewardResult, SamplingParams

PROMPT = "Q: ?\nA: "
EX = Example(id="ex0", prompt=PROMPT, answer="1/2")


class FracTask(Task):
    """Answers are 'answer: <number>'; 1/2, 0.5 and 2/4 share one vote key."""

    name = "frac"

    def examples(self, split="test", limit=None):
        return [EX]

    def score(self, example, completion):
        m = re.findall(r"answer: (\S+)", completion)
        if not m:
            return RewardResult.unparsable("no answer")
        ok = self.answer_key(m[-1]) == self.answer_key(example.answer)
        return RewardResult.ok(m[-1]) if ok else RewardResult.wrong(m[-1])

    def answer_key(self, extracted):
        return None if extracted is None else Fraction(extracted)


class ScriptPolicy(Policy):
    """Writes ``script(solution_so_far, i)`` (+ EOS) for sample ``i`` of each prompt; records its calls."""

    name = "script"

    def __init__(self, script, logprob=-0.1):
        self.script, self.logprob, self.calls = script, logprob, []

    def generate(self, prompts, sampling: SamplingParams):
        self.calls.append((list(prompts), sampling))
        out = []
        for pi, p in enumerate(prompts):
            assert p.startswith(PROMPT)
            for i in range(sampling.n):
                want = self.script(p[len(PROMPT):], i)
                ids, text, finish = [], "", "length"
                for ch in list(want) + [None]:
                    if len(ids) == sampling.max_new_tokens:
                        break
                    if ch is None:
                        ids.append(0)
                        finish = "stop"
                        break
                    ids.append(ord(ch))
                    text += ch
                    k = find_stop(text, sampling.stop)
                    if k != -1:
                        text, finish = text[:k], "stop"
                        break
                out.append(Completion(text=text, token_ids=ids, logprobs=[self.logprob] * len(ids),
                                      finish_reason=finish, prompt_tokens=len(p), prompt_index=pi))
        return out

    def detokenize(self, ids):
        return "".join(chr(i) for i in ids if i)


class FullPolicy(Policy):
    """Always uses every token it may (finish 'length'): the worst case for a budget."""

    name = "full"

    def __init__(self):
        self.tokens = 0

    def generate(self, prompts, sampling):
        out = []
        for pi, p in enumerate(prompts):
            for _ in range(sampling.n):
                m = sampling.max_new_tokens
                text = ("1+1=2\n" * m)[:m]
                self.tokens += m
                out.append(Completion(text=text, token_ids=[ord(c) for c in text], logprobs=[-0.5] * m,
                                      finish_reason="length", prompt_tokens=len(p), prompt_index=pi))
        return out


class TableScorer(Scorer):
    """Scores by the candidate's text through a function; records what it rated."""

    name = "table"

    def __init__(self, fn):
        self.fn, self.seen = fn, []

    def score(self, ctx, candidates):
        self.seen.append([c.text for c in candidates])
        return [self.fn(c.text) for c in candidates]


def fixed(samples):
    return ScriptPolicy(lambda sofar, i: samples[i % len(samples)])


# ------------------------------------------------------------------------------------------------
# votes and best-of-N
# ------------------------------------------------------------------------------------------------

def test_self_consistency_groups_equivalent_answers():
    samples = ["answer: 0.3", "answer: 0.3", "answer: 1/2", "answer: 0.5", "answer: 2/4"]
    res = make_strategy("sc", n=5).search(EX, fixed(samples), FracTask())
    # "0.3" is the most common string, but 1/2 = 0.5 = 2/4 is the most common answer.
    assert res.key == Fraction(1, 2) and res.text == "answer: 1/2"
    assert [n.meta["votes"] for n in res.tree.nodes[1:]] == [2, 2, 3, 3, 3]
    assert res.tree.chosen_path() == [0, 3]
    assert res.compute.scorer_calls == 0 and res.compute.generations == 5


def test_best_of_n_and_weighted_vote_pick_differently():
    samples = ["answer: 7", "answer: 1/2", "answer: 0.5"]
    table = {"answer: 7": 0.9, "answer: 1/2": 0.6, "answer: 0.5": 0.5}
    bon = make_strategy("bon", n=3).search(EX, fixed(samples), FracTask(), TableScorer(table.get))
    assert bon.text == "answer: 7"
    wmv = make_strategy("wmv", n=3).search(EX, fixed(samples), FracTask(), TableScorer(table.get))
    assert wmv.key == Fraction(1, 2) and wmv.text == "answer: 1/2"  # 0.6 + 0.5 > 0.9; best of the group
    assert wmv.compute.scorer_calls == 3


def test_best_of_n_never_picks_a_sample_cut_off_by_the_budget():
    """Spending a budget leaves a last, shortened row: unfinished, short and confident. It must not win."""
    policy = ScriptPolicy(lambda sofar, i: "answer: 1/2 because a half is one of two equal parts", logprob=-0.5)
    confident = TableScorer(lambda text: 0.1 if text.endswith("equal parts") else 1.0)  # the cut-off text rates best
    res = make_strategy("bon", n=0, batch=2, max_new_tokens=60).search(EX, policy, FracTask(), confident, budget=130)
    ends = [n.meta.get("end") for n in res.tree.nodes[1:]]
    assert ends.count("length") == 1 and ends.count("stop") == 2  # 2 full rows, then 10 tokens for a third
    assert res.text.endswith("equal parts") and res.key == Fraction(1, 2)
    only_cut = make_strategy("bon", n=1, max_new_tokens=5).search(EX, policy, FracTask(), confident)
    assert only_cut.text == "answe"  # nothing finished: the cut-off sample is all there is


def test_self_consistency_counts_only_finished_samples():
    """Cut off at max_new_tokens, "answer: 1000" reads as 10: three such made-up votes must not outvote two real ones."""
    policy = ScriptPolicy(lambda sofar, i: "answer: 1000" if i < 3 else "answer: 7")
    res = make_strategy("sc", n=5, max_new_tokens=10).search(EX, policy, FracTask())
    leaves = res.tree.nodes[1:]
    assert [n.meta.get("end") for n in leaves] == ["length"] * 3 + ["stop"] * 2
    assert res.key == 7 and res.text == "answer: 7"
    assert [n.meta["votes"] for n in leaves] == [0, 0, 0, 2, 2]
    only_cut = make_strategy("sc", n=3, max_new_tokens=10).search(EX, policy, FracTask())
    assert only_cut.key == 10     # nothing finished: the cut-off samples are all there is


def test_weighted_vote_function():
    key, totals = weighted_vote([1, 2, 1, None], [0.2, 0.3, 0.2, 5.0])
    assert key == 1 and totals == pytest.approx({1: 0.4, 2: 0.3})
    assert weighted_vote([1, 2], [0.5, 0.5])[0] == 1  # ties: first seen
    assert weighted_vote([1, 2], [float("nan"), 0.1])[0] == 2  # unrated adds nothing
    with pytest.raises(UsageError, match="non-negative"):
        weighted_vote([1], [-0.5])


def test_speculative_rejection_prunes_the_worst_partials():
    # Sample i writes a 4-char head "h{i}..", then "answer: {i}"; the scorer likes higher i.
    policy = ScriptPolicy(lambda sofar, i: sofar and "answer: " + sofar[1] or f"h{i}..answer: {i}")
    scorer = TableScorer(lambda t: int(t[1]) / 10)
    res = make_strategy("bon", n=6, reject_after=4, reject_fraction=0.5, max_new_tokens=40).search(
        EX, policy, FracTask(), scorer)
    first, second = scorer.seen[0], scorer.seen[1]
    assert first == [f"h{i}.." for i in range(6)]  # the partial samples were rated
    assert sorted(t[:2] for t in second) == ["h3", "h4", "h5"]  # the top half was continued
    pruned = [n.text for n in res.tree.nodes if n.meta.get("pruned")]
    assert pruned == ["h0..", "h1..", "h2.."]
    assert res.text == "h5..answer: 5"
    # 6 chunks of 4 tokens, then 3 continuations of len("answer: 5") + EOS tokens.
    assert res.compute.generated_tokens == 6 * 4 + 3 * 10
    assert rejected([0.5, 0.1, float("nan"), 0.9], 0.5) == {1, 2}


# ------------------------------------------------------------------------------------------------
# beam search and REBASE
# ------------------------------------------------------------------------------------------------

def step_script(sofar, i):
    """Two steps 's<i>' (i = the sample index), then the answer: the first step's digit."""
    return f"s{i}\n" if sofar.count("\n") < 2 else f"answer: {sofar[1]}"


def test_beam_keeps_top_n_over_m():
    scorer = TableScorer(lambda t: int(t.split("\n")[-2][1]) / 10)  # the digit of the last step "sK\n"
    res = make_strategy("beam", beams=6, width=2, separator="\n").search(EX, ScriptPolicy(step_script), FracTask(), scorer)
    tree = res.tree
    depth1 = tree.children(0)
    assert [n.text for n in depth1] == [f"s{i}\n" for i in range(6)]
    expanded = [n.text for n in depth1 if tree.children(n.id)]
    assert expanded == ["s3\n", "s4\n", "s5\n"]  # top N/M = 3 by score, each expanded M = 2 ways
    assert all(len(tree.children(n.id)) == 2 for n in depth1 if tree.children(n.id))
    assert sum(1 for n in depth1 if n.meta.get("pruned")) == 3
    assert top_k([0.1, 0.9, float("nan"), 0.9], 2) == [1, 3]


def test_mini_steps_cut_every_k_tokens():
    full = "12+34=46\nanswer: 46"
    policy = ScriptPolicy(lambda sofar, i: full[len(sofar):])  # continues whatever was written
    res = make_strategy("beam", beams=2, width=1, step_tokens=4).search(EX, policy, FracTask(), TableScorer(len))
    path = res.tree.path(res.tree.chosen_path()[-1])[1:]
    assert [n.text for n in path] == ["12+3", "4=46", "\nans", "wer:", " 46"]
    assert [n.terminal for n in path] == [False] * 4 + [True] and path[-1].meta["end"] == "eos"
    assert res.text == "12+34=46\nanswer: 46" and res.extracted == "46"


def test_step_end_when_the_backend_cannot_say_why_it_stopped():
    class NoDecode(ScriptPolicy):
        detokenize = None  # like a server that reports finish_reason "stop" for EOS and stop strings alike

    policy = NoDecode(lambda sofar, i: "" if "answer" in sofar else ("s\n" if not sofar else "answer: 1"))
    res = make_strategy("beam", beams=1, width=1, separator="\n").search(EX, policy, FracTask(), TableScorer(len))
    # "answer: 1" ended at EOS, but that cannot be told from a separator: one more, empty step ends it.
    assert [n.text for n in res.tree.nodes[1:]] == ["s\n", "answer: 1\n", ""]
    assert res.tree.nodes[-1].terminal and res.extracted == "1"


def test_rebase_allocation_matches_the_formula_and_sums_to_budget():
    # Hand computation: softmax([.9,.5,.1]/.2) = [.8668, .1173, .0159]; x8 = [6.93, .94, .13] -> 7, 1, 0.
    assert rebase_allocation([0.9, 0.5, 0.1], 8, 0.2) == [7, 1, 0]
    assert rebase_allocation([1.0, 1.0, 1.0], 2, 0.5) == [1, 1, 0]  # round() would give 1+1+1 = 3
    assert rebase_allocation([float("nan"), 0.3], 4, 1.0) == [0, 4]  # unrated nodes get no share
    assert rebase_allocation([None, None], 3, 1.0) == [2, 1]
    rng = random.Random(0)
    for _ in range(300):
        k, b, t = rng.randint(1, 7), rng.randint(0, 20), rng.choice([0.05, 0.2, 1.0, 5.0])
        scores = [rng.random() for _ in range(k)]
        alloc = rebase_allocation(scores, b, t)
        w = [math.exp(s / t) for s in scores]
        shares = [b * x / sum(w) for x in w]
        assert sum(alloc) == b
        assert all(math.floor(s) <= a <= math.ceil(s) for a, s in zip(alloc, shares))
        if sum(round(s) for s in shares) == b and all(abs(s - math.floor(s) - 0.5) > 1e-9 for s in shares):
            assert alloc == [round(s) for s in shares]


def test_rebase_expands_by_allocation_and_shrinks_budget_per_finished():
    # Depth 1: samples 0 and 1 finish at once ("answer"), the others are open steps.
    def script(sofar, i):
        if not sofar:
            return "answer: 1/2" if i < 2 else f"s{i}\n"
        return "answer: 0.5"

    scorer = TableScorer(lambda t: 0.9 if t.startswith("s5") else 0.1)
    res = make_strategy("rebase", width=6, separator="\n", balance_temperature=0.1).search(
        EX, ScriptPolicy(script), FracTask(), scorer)
    tree = res.tree
    open1 = [n for n in tree.children(0) if not n.terminal]
    alloc = rebase_allocation([n.score for n in open1], 6 - 2, 0.1)
    assert [n.meta["allotted"] for n in open1] == alloc
    assert [len(tree.children(n.id)) for n in open1] == alloc
    assert alloc[open1.index(next(n for n in open1 if n.text == "s5\n"))] == max(alloc)
    finished = [n for n in tree.nodes if n.terminal]
    assert len(finished) == 6 and res.key == Fraction(1, 2)


# ------------------------------------------------------------------------------------------------
# MCTS
# ------------------------------------------------------------------------------------------------

def test_uct_puct_and_backprop_pure_functions():
    assert uct(0.5, 10, 0, 1.4) == math.inf
    assert uct(0.5, 10, 2, 1.4) == pytest.approx(0.5 + 1.4 * math.sqrt(math.log(10) / 2))
    assert puct(0.5, 0.25, 9, 2, 2.0) == pytest.approx(0.5 + 2.0 * 0.25 * 3 / 3)
    tree = Tree()
    a = tree.add(0, "a")
    b = tree.add(a.id, "b")
    for v in (1.0, 0.0, 0.5):
        backpropagate(tree, b.id, v)
    backpropagate(tree, a.id, 1.0)
    assert (tree.root.visits, b.visits, a.visits) == (4, 3, 4)
    assert b.value == pytest.approx(0.5) and a.value == pytest.approx(2.5 / 4)
    noisy = dirichlet_noise([0.5, 0.5], 0.3, 0.25, random.Random(0))
    assert sum(noisy) == pytest.approx(1.0) and noisy != [0.5, 0.5]


def test_mcts_visits_and_values_after_known_evaluations():
    # Root steps: A (value .8), B (.2). Below A: "answer: 1/2" (1.0) and "answer: 3" (0.0).
    def script(sofar, i):
        return ("A\n", "B\n")[i] if not sofar else ("answer: 1/2", "answer: 3")[i]

    values = {"A\n": 0.8, "B\n": 0.2, "A\nanswer: 1/2": 1.0, "A\nanswer: 3": 0.0}
    res = make_strategy("mcts", iterations=2, expand_k=2, separator="\n", c=1.0).search(
        EX, ScriptPolicy(script), FracTask(), TableScorer(values.get))
    t = res.tree
    root, a, b = t[0], *t.children(0)
    a1, a2 = t.children(a.id)
    # Iteration 1 expands the root; iteration 2 selects A by PUCT (.8 + .5*sqrt(2)/2 > .2 + same).
    assert (root.visits, a.visits, b.visits, a1.visits, a2.visits) == (4, 3, 1, 1, 1)
    assert a.value == pytest.approx((0.8 + 1.0 + 0.0) / 3)
    assert root.value == pytest.approx((0.8 + 0.2 + 1.0 + 0.0) / 4)
    assert a.prior == pytest.approx(0.5) and b.prior == pytest.approx(0.5)
    assert a1.terminal and a1.extracted == "1/2" and a1.meta["end"] == "eos"
    assert res.text == "A\nanswer: 1/2" and t.chosen_path() == [0, a.id, a1.id]
    # Iteration 3 selects A again, then its best child: a terminal node, backed up at no token cost.
    res3 = make_strategy("mcts", iterations=3, expand_k=2, separator="\n", c=1.0).search(
        EX, ScriptPolicy(script), FracTask(), TableScorer(values.get))
    assert res3.tree[a1.id].visits == 2 and res3.compute.generated_tokens == res.compute.generated_tokens


# ------------------------------------------------------------------------------------------------
# revision, greedy
# ------------------------------------------------------------------------------------------------

def test_revision_prompts_carry_previous_attempt_and_reflection():
    answers = iter(["answer: 3", "answer: 1/2", "answer: 0.5"])
    policy = ScriptPolicy(lambda sofar, i: next(answers))
    res = make_strategy("revise", rounds=3, joiner="\n").search(EX, policy, FracTask())
    prompts = [p for ps, _ in policy.calls for p in ps]
    assert prompts[1] == PROMPT + "answer: 3\n" + REFLECTION + "\n"
    assert prompts[2] == PROMPT + "answer: 1/2\n" + REFLECTION + "\n"
    tree = res.tree
    assert tree.mode == "revisions" and [n.parent for n in tree.nodes] == [None, 0, 1, 2]
    assert res.key == Fraction(1, 2) and res.text == "answer: 0.5"  # majority, most revised of the group
    assert make_strategy("revise", pick="last").needs_scorer() is False
    assert make_strategy("revise", pick="best").needs_scorer() is True


def test_revision_best_pick_skips_an_attempt_cut_off_by_the_budget():
    policy = ScriptPolicy(lambda sofar, i: "answer: 1/2 because a half is one of two equal parts", logprob=-0.5)
    confident = TableScorer(lambda text: 0.1 if text.endswith("equal parts") else 1.0)  # the cut-off text rates best
    res = make_strategy("revise", rounds=2, pick="best", max_new_tokens=60).search(
        EX, policy, FracTask(), confident, budget=70)
    assert [n.meta.get("end") for n in res.tree.nodes[1:]] == ["stop", "length"]  # 53 tokens, then 17 of them
    assert res.text.endswith("equal parts")


def test_revision_majority_counts_only_finished_attempts():
    # Attempts cut off at max_new_tokens read "answer: 10" (of "answer: 1000"): five (or, among the chains'
    # last attempts, two) such made-up votes must not outvote the one finished attempt.
    for pick in ("majority", "last"):
        script = iter(["answer: 1000"] * 3 + ["answer: 7", "answer: 1000", "answer: 1000"])
        policy = ScriptPolicy(lambda sofar, i: next(script))
        res = make_strategy("revise", rounds=2, chains=3, pick=pick, max_new_tokens=10).search(EX, policy, FracTask())
        assert [n.meta.get("end") for n in res.tree.nodes[1:]] == ["length"] * 3 + ["stop", "length", "length"]
        assert res.key == 7, pick


def test_greedy_is_one_temperature_zero_sample():
    policy = fixed(["answer: 1/2"])
    res = make_strategy("greedy", max_new_tokens=32).search(EX, policy, FracTask())
    assert res.text == "answer: 1/2" and res.extracted == "1/2"
    assert policy.calls[0][1].temperature == 0 and policy.calls[0][1].n == 1
    assert res.compute.generated_tokens == len("answer: 1/2") + 1 and res.compute.prompt_tokens == len(PROMPT)


# ------------------------------------------------------------------------------------------------
# budget, compute, trees, registry
# ------------------------------------------------------------------------------------------------

STRATEGY_OPTIONS = {
    "greedy": {"max_new_tokens": 40},
    "sc": {"n": 0, "max_new_tokens": 40},
    "bon": {"n": 6, "max_new_tokens": 40, "reject_after": 10},
    "wmv": {"n": 0, "max_new_tokens": 40},
    "beam": {"beams": 4, "width": 2, "separator": "\n", "max_step_tokens": 9},
    "rebase": {"width": 4, "separator": "\n", "max_step_tokens": 9},
    "mcts": {"iterations": 50, "expand_k": 2, "separator": "\n", "max_step_tokens": 9, "evaluation": "mix",
             "max_new_tokens": 30},
    "revise": {"rounds": 5, "chains": 2, "review_prompt": "Check:", "max_new_tokens": 40},
}


@pytest.mark.parametrize("name", sorted(STRATEGY_OPTIONS))
@pytest.mark.parametrize("budget", [1, 7, 50, 333, 2000])
def test_budget_is_never_exceeded(name, budget):
    assert set(STRATEGY_OPTIONS) == set(STRATEGIES)
    policy = FullPolicy()
    scorer = make_scorer("mc-rollout", k=2, max_new_tokens=12)  # its rollouts count too
    res = make_strategy(name, **STRATEGY_OPTIONS[name]).search(EX, policy, FracTask(), scorer, budget=budget)
    assert res.compute.generated_tokens == policy.tokens <= budget
    if budget >= 50:
        assert policy.tokens > 0
    if name in ("sc", "wmv"):  # n=0 spends the budget: nothing affordable is left over
        assert budget - policy.tokens < 1


def test_compute_counts_tokens_generations_and_scorer_calls():
    scorer = TableScorer(lambda t: 0.5)
    res = make_strategy("beam", beams=4, width=2, separator="\n").search(
        EX, ScriptPolicy(step_script), FracTask(), scorer)
    c = res.compute
    assert c.generated_tokens == sum(n.tokens for n in res.tree.nodes)
    assert c.generations == len(res.tree) - 1
    assert c.scorer_calls == sum(len(s) for s in scorer.seen) == len(res.tree) - 1
    assert c.wall_time_s >= c.generation_time_s + c.scorer_time_s + c.answer_time_s - 1e-9
    assert c.overhead_s >= -1e-9 and res.usage["completion_tokens"] == c.generated_tokens
    # Steps keep their separator, so the path's texts join into the solution; ties keep the earliest.
    assert res.text == "s0\ns0\nanswer: 0" and res.tree[res.tree.chosen_path()[-1]].terminal


def test_generate_caps_rows_then_length():
    ctx = SearchContext(EX, FullPolicy(), FracTask(), budget=100)
    got = ctx.generate([PROMPT, PROMPT], SamplingParams(n=4, max_new_tokens=30))
    assert [len(g) for g in got] == [2, 1]  # 3 full rows fit, handed out round-robin
    got = ctx.generate([PROMPT], SamplingParams(n=4, max_new_tokens=30))
    assert len(got[0]) == 1 and got[0][0].completion_tokens == 10  # one shortened row
    assert ctx.remaining == 0 and ctx.generate([PROMPT], SamplingParams(max_new_tokens=5)) == [[]]
    assert fit_rows([3, 1, 2], 4) == [2, 1, 1] and fit_rows([1, 1], 9) == [1, 1]


def test_trees_serialize_and_load():
    scorer = TableScorer(lambda t: float("nan") if t.startswith("s1") else 0.5)
    res = make_strategy("beam", beams=4, width=2, separator="\n").search(
        EX, ScriptPolicy(step_script), FracTask(), scorer)
    text = res.tree.to_json()
    json.loads(text)  # strict JSON: a failed rating is null, not NaN
    back = Tree.from_json(text)
    assert back.to_dict() == res.tree.to_dict()
    assert back.chosen_path() == res.tree.chosen_path() and back.solution(back.chosen_path()[-1]) == res.text
    assert [c.id for c in back.children(0)] == [c.id for c in res.tree.children(0)]
    assert json.loads(json.dumps(res.to_dict()))["compute"]["generated_tokens"] == res.compute.generated_tokens


def test_registry_and_errors():
    with pytest.raises(UsageError, match="unknown search strategy"):
        make_strategy("nope")
    with pytest.raises(UsageError, match="unknown setting"):
        make_strategy("sc", beams=3)
    with pytest.raises(UsageError, match="needs a scorer"):
        make_strategy("bon").search(EX, fixed(["answer: 1"]), FracTask())
    with pytest.raises(UsageError, match="budget"):
        make_strategy("sc", n=0).search(EX, fixed(["answer: 1"]), FracTask())
    assert make_strategy("beam", beams="4", width="2").config.beams == 4  # strings from a command line
    assert Candidate(text="x").mean_logprob is None
