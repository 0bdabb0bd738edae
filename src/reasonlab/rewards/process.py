"""Process rewards: one reward per reasoning step, for online RL with process supervision.

An outcome reward says whether a whole completion is right; a process reward says which step went
wrong, so the policy gradient can lower the tokens that led to the mistake and leave the right steps
before it alone (DeepSeekMath's process-supervised GRPO; ``learn.losses.process_advantages`` turns
the step rewards into token advantages).

A step reward function is ``f(prompts, completions, **columns) -> list[list[float | None] | None]``:
for each completion, one value per step of :func:`step_spans` ``(completion, separator)``, or None
when it cannot rate that completion at all (a None step is left out of the advantage, never a 0).
The sources:

- :class:`TaskStepReward` (``steps``): the task's own step checker, ``task.step_labels(example,
  steps)``. It is a rule-based process verifier: ``arith`` compares each line with the worked
  solution, so like the outcome verifier it uses the gold problem, and it is exact there.
- :class:`PRMStepReward` (``prm:DIR``): a trained process reward model (``reasonlab train prm``),
  P(step correct) at each step separator. The general source: any task, no gold needed.
- ``module:function``: any function of the shape above, steps cut at the task's separator.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from reasonlab.errors import UsageError
from reasonlab.rewards.steps import step_spans

StepRewardFn = Callable[..., "list[list[float | None] | None]"]


class TaskStepReward:
    """The task's step checker as a step reward: 1.0 for a step it accepts, 0.0 for one it rejects."""

    def __init__(self, task: Any, separator: str):
        if not hasattr(task, "step_labels"):
            raise UsageError(f"task {getattr(task, 'name', task)!r} has no step checker (step_labels); "
                             "use a trained PRM (prm:DIR) for process rewards on it")
        self.task, self.separator = task, separator
        self.__name__ = "steps"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], **columns: Any):
        out = []
        for ex, c in zip(columns["example"], completions):
            steps = [c[a:b] for a, b in step_spans(c, self.separator)]
            labels = self.task.step_labels(ex, steps)
            out.append([None if v is None else float(v) for v in labels])
        return out


class PRMStepReward:
    """A trained PRM's step probabilities as step rewards (its own separator cuts the steps)."""

    def __init__(self, model: Any):
        if model.kind != "prm":
            raise UsageError(f"process rewards need a PRM; this reward model is an {model.kind!r} "
                             "(use it as an outcome reward: --rewards orm:DIR)")
        self.model, self.separator = model, model.separator
        self.__name__ = "prm"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], **columns: Any):
        steps = [[c[a:b] for a, b in step_spans(c, self.separator)] for c in completions]
        rated = [i for i, st in enumerate(steps) if st]
        scores = self.model.score_steps([prompts[i] for i in rated], [steps[i] for i in rated]) if rated else []
        out: list[list[float | None] | None] = [[] for _ in completions]
        for i, sc in zip(rated, scores):
            out[i] = [None if math.isnan(v) else float(v) for v in sc]
        return out


@dataclass
class ProcessReward:
    """A step reward function, the separator its steps are cut at, and the name it reports under."""

    fn: StepRewardFn
    separator: str
    name: str

    def score(self, prompts: Sequence[Any], completions: Sequence[str], examples: Sequence[Any]):
        """Per completion: ``(spans, rewards)``, one reward (or None) per step span. Raises
        :class:`~reasonlab.rewards.functions.RewardError` naming the function when it fails."""
        from reasonlab.rewards.functions import RewardError, failure_message

        columns = {"example": list(examples), "answer": [getattr(e, "answer", None) for e in examples]}
        spans = [step_spans(c, self.separator) for c in completions]
        try:
            vals = list(self.fn(list(prompts), list(completions), **columns))
            if len(vals) != len(completions):
                raise ValueError(f"returned {len(vals)} lists for {len(completions)} completions")
            out = []
            for i, (sp, v) in enumerate(zip(spans, vals)):
                v = [None] * len(sp) if v is None else list(v)
                if len(v) != len(sp):
                    raise ValueError(f"completion {i} has {len(sp)} steps but got {len(v)} step rewards")
                for x in v:
                    if x is not None and not (isinstance(x, (int, float)) and math.isfinite(x)):
                        raise ValueError(f"returned {x!r}; step rewards must be finite numbers or None")
                out.append((sp, [None if x is None else float(x) for x in v]))
            return out
        except Exception as e:  # noqa: BLE001 - a user function may raise anything; we name it
            raise RewardError(failure_message(f"step reward function {self.name!r}", e)) from e


def build_process_reward(spec: str, task: Any) -> ProcessReward:
    """``steps`` (the task's step checker), ``prm:DIR`` (a trained PRM) or ``module:function``."""
    spec = spec.strip()
    separator = getattr(task, "step_separator", "\n")
    if spec == "steps":
        return ProcessReward(TaskStepReward(task, separator), separator, "steps")
    if spec.startswith("prm:"):
        from reasonlab.rewards.reward_model import load_reward_model

        fn = PRMStepReward(load_reward_model(spec[4:]))
        return ProcessReward(fn, fn.separator, "prm")
    if ":" in spec:
        mod, _, attr = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise UsageError(f"cannot import step reward function {spec!r}: {e}") from e
        return ProcessReward(fn, separator, spec)
    raise UsageError(f"unknown process reward {spec!r}; use steps, prm:DIR or module:function")
