"""``arith``: the built-in step-by-step arithmetic task that the ``tiny`` model is trained on.

A problem chains 2-4 integers with ``+`` and ``-`` (evaluated left to right), e.g.
``Q: 37+45-18=?`` and its worked solution writes one partial result per line::

    37+45=82
    82-18=64
    answer: 64

Each step is a two-number addition or subtraction, so a small model can learn the procedure, but
carries and borrows make single steps fail sometimes and errors compound over steps: exactly the
room search (more samples, step-level selection) and RL need to show gains. Difficulty grows with
the number of operands; the test split mixes all lengths.

Splits are generated deterministically from their own seeds; test problems never appear in train
(train is filtered against test). Scoring reads the last ``answer: <int>`` line.
"""

from __future__ import annotations

import random
import re
from typing import Hashable

from reasonlab.errors import UsageError
from reasonlab.tasks.base import Task
from reasonlab.types import Example, RewardResult

# The integer must be all that is left of its line: "answer: 64.5" or "answer: 64+1" is not 64.
ANSWER_RE = re.compile(r"answer:[ \t]*(-?\d+)[ \t]*$", re.MULTILINE)
_SPLIT_SEEDS = {"test": 1_000_003, "train": 7}


def make_problem(rng: random.Random, min_ops: int, max_ops: int, max_value: int) -> tuple[str, str, int]:
    """One random problem: ``(question, worked solution, answer)``."""
    k = rng.randint(min_ops, max_ops)
    nums = [rng.randint(1, max_value) for _ in range(k)]
    ops = [rng.choice("+-") for _ in range(k - 1)]
    question = str(nums[0]) + "".join(f"{o}{x}" for o, x in zip(ops, nums[1:]))
    acc, lines = nums[0], []
    for o, x in zip(ops, nums[1:]):
        new = acc + x if o == "+" else acc - x
        lines.append(f"{acc}{o}{x}={new}")
        acc = new
    lines.append(f"answer: {acc}")
    return question, "\n".join(lines), acc


def format_prompt(question: str) -> str:
    return f"Q: {question}=?\nA: "


class ArithTask(Task):
    """Left-to-right ``+``/``-`` chains of 2-4 numbers up to ``max_value``, with plain-text prompts."""

    name = "arith"
    stop = ("\nQ:",)
    step_separator = "\n"

    def __init__(self, min_ops: int = 2, max_ops: int = 4, max_value: int = 99, test_size: int = 500,
                 train_size: int = 20000, seed: int = 0, prompt_format: str = "plain"):
        if prompt_format != "plain":
            raise UsageError(f"arith only has the 'plain' prompt format (the tiny model has no chat template), "
                             f"got {prompt_format!r}")
        if not 2 <= min_ops <= max_ops:
            raise UsageError(f"arith needs 2 <= min_ops <= max_ops, got {min_ops}..{max_ops}")
        self.min_ops, self.max_ops, self.max_value = min_ops, max_ops, max_value
        self.sizes = {"test": test_size, "train": train_size}
        self.seed = seed
        self._cache: dict[str, list[tuple[str, str, int]]] = {}

    def _problems(self, split: str) -> list[tuple[str, str, int]]:
        if split not in self.sizes:
            raise UsageError(f"arith has splits {sorted(self.sizes)}, not {split!r}")
        if split not in self._cache:
            rng = random.Random(_SPLIT_SEEDS[split] + 1000 * self.seed)
            held_out = {q for q, _, _ in self._problems("test")} if split == "train" else set()
            seen: set[str] = set()
            out = []
            # Bounded: the space of problems is far larger than any split size we use.
            for _ in range(self.sizes[split] * 20):
                if len(out) == self.sizes[split]:
                    break
                q, sol, ans = make_problem(rng, self.min_ops, self.max_ops, self.max_value)
                if q in seen or q in held_out:
                    continue
                seen.add(q)
                out.append((q, sol, ans))
            self._cache[split] = out
        return self._cache[split]

    def examples(self, split: str = "test", limit: int | None = None) -> list[Example]:
        probs = self._problems(split)[:limit]
        return [Example(id=f"arith/{split}/{i}", prompt=format_prompt(q), answer=str(a), question=q,
                        meta={"solution": sol}) for i, (q, sol, a) in enumerate(probs)]

    def sft_rows(self, limit: int | None = None) -> list[dict]:
        """Training rows ``{"prompt", "completion"}`` with worked step-by-step solutions."""
        return [{"prompt": format_prompt(q), "completion": sol} for q, sol, _ in self._problems("train")[:limit]]

    @staticmethod
    def extract(completion: str) -> str | None:
        found = ANSWER_RE.findall(completion)
        # Several different answer lines are a hedge, not an answer.
        return found[-1] if found and len({int(f) for f in found}) == 1 else None

    def score(self, example: Example, completion: str) -> RewardResult:
        got = self.extract(completion)
        if got is None:
            return RewardResult.unparsable("no 'answer: <integer>' line")
        if example.answer is None:
            return RewardResult.error("example has no gold answer", extracted=got)
        return RewardResult.ok(got) if int(got) == int(example.answer) else RewardResult.wrong(got)

    def step_labels(self, example: Example, steps: list[str]) -> list[bool]:
        """Whether each step (a line of the completion) keeps the solution on the right track.

        Step k is right when lines 1..k all match the worked solution: the same partial sum, written
        the same way, the answer line included. As Math-Shepherd's hard labels, a step after a wrong
        one is wrong too (a slip cannot be taken back); steps beyond the solution's end are wrong.
        This is the process reward of ``--process-rewards steps``.
        """
        gold = [line.strip() for line in example.meta["solution"].split("\n")]
        out, ok = [], True
        for k, step in enumerate(steps):
            ok = ok and k < len(gold) and step.strip() == gold[k]
            out.append(ok)
        return out

    def answer_key(self, extracted: str | None) -> Hashable | None:
        return None if extracted is None else int(extracted)
