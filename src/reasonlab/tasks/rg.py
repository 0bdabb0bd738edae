"""Any reasoning-gym dataset as a task (Stojanovski et al. 2025, "Reasoning Gym").

reasoning-gym generates over a hundred procedural reasoning tasks offline (arithmetic, logic,
puzzles, graphs, ...) from a name and a config, each with its own answer scorer. This task prompts
the generated questions in one of the ``tasks.prompts`` formats, extracts the final answer with
``rewards.extract.extract_answer`` and scores it with the dataset's own ``score_answer``:

- status ``OK`` when the score is 1.0 (full credit), ``WRONG`` otherwise, with ``value`` always the
  dataset's score, so datasets that give partial credit (0.0 < score < 1.0) keep it as a reward;
- ``UNPARSABLE`` (value 0.0) when no answer can be read from the completion;
- ``ERROR`` (value ``None``) when the dataset's scorer raises.

Answers are read leniently by default, for evaluation (the last stated answer wins; for a numeric gold,
the last number in the text if no answer is stated). Rewards must not be gameable, so RL trainers call
:meth:`use_strict_verifier` (or the task option ``verifier: {strict: true}`` asks for it): the answer is
then read with ``extract_answer(strict=True)`` (answers that disagree, nested boxes and the like give
none; no last-number fallback), and an answer that hedges, negates itself or is prose where the gold is
a number (``rewards.math.strict_prediction``, for numeric golds) is refused before the dataset's scorer sees it.
Strict scoring also drops the partial credit of reasoning-gym's generic scorer, which pays
``len(gold) / len(answer)`` for any answer that merely contains the gold ("380" for 38, a list of
candidates), and accepts a number equal to the gold ("38.0"), which that scorer compares as a string.
Datasets with a scorer of their own keep their partial credit.

Splits: ``test`` is the dataset generated with ``seed``; ``train`` is generated with
``seed + TRAIN_SEED_OFFSET`` (reasoning-gym derives item ``i`` from ``seed + i``, so the two ranges
of generator seeds never meet), and train items whose question also appears in the test split are
dropped, because small problem spaces can produce the same question from different seeds. Each split
has at most ``size`` items. Ids are ``rg/<name>/<split>/<index>``.

    task = ReasoningGymTask("basic_arithmetic", config={"max_terms": 3}, size=200)
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Any, Hashable, Iterator, Mapping, Sequence

import yaml

from reasonlab.errors import UsageError
from reasonlab.rewards.extract import extract_answer
from reasonlab.tasks.base import Task
from reasonlab.tasks.io import as_text
from reasonlab.tasks.jsonl import AnswerTask, Record
from reasonlab.tasks.prompts import worked_solution
from reasonlab.types import Example, RewardResult, Status

#: Added to ``seed`` for the train split; far beyond any ``size``, so generator seeds never overlap.
TRAIN_SEED_OFFSET = 1_000_000_007
SPLITS = ("test", "train")

_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def _is_number(text: str) -> bool:
    return bool(_NUMBER.fullmatch(text.replace(",", "").strip()))


def dataset_names() -> list[str]:
    """Names of every registered reasoning-gym dataset."""
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


class ReasoningGymTask(AnswerTask):
    """One reasoning-gym dataset, by name and config, scored by its own ``score_answer``.

    ``config`` holds the dataset's config fields (a dict, or YAML/JSON text such as
    ``'{max_terms: 3}'``); ``size`` and ``seed`` may also be given there.
    """

    name = "rg"

    def __init__(
        self,
        name: str,
        config: Mapping[str, Any] | str | None = None,
        size: int = 500,
        seed: int = 0,
        prompt_format: str = "chat",
        num_fewshot: int = 4,
        verifier: Any = None,
    ):
        super().__init__(prompt_format, num_fewshot, verifier)
        cfg = _parse_config(name, config)
        self.size = int(cfg.pop("size", size))
        self.seed = int(cfg.pop("seed", seed))
        if self.size < 1:
            raise UsageError(f"rg:{name}: size must be >= 1, got {self.size}")
        self.dataset_name = name
        self.config = cfg
        self.name = f"rg/{name}"
        self._datasets = {"test": self._create(self.seed)}  # created now so a bad config fails early
        self._cache: dict[tuple[str, int], Record] = {}

    def _create(self, seed: int) -> Any:
        import reasoning_gym
        from reasoning_gym.factory import DATASETS

        if self.dataset_name not in DATASETS:
            close = difflib.get_close_matches(self.dataset_name, DATASETS, n=5, cutoff=0.5)
            hint = f"did you mean: {', '.join(close)}?" if close else f"e.g. {', '.join(sorted(DATASETS)[:8])}, ..."
            raise UsageError(f"unknown reasoning-gym dataset {self.dataset_name!r} ({len(DATASETS)} known; {hint})")
        try:
            return reasoning_gym.create_dataset(self.dataset_name, size=self.size, seed=seed, **self.config)
        except (TypeError, ValueError, AssertionError) as e:  # unknown field, or the config's own validation
            config_cls = DATASETS[self.dataset_name][1]
            fields = ", ".join(f.name for f in dataclasses.fields(config_cls) if f.name not in ("size", "seed"))
            raise UsageError(f"rg:{self.dataset_name}: bad config {self.config} ({e or type(e).__name__}); fields: {fields}") from e

    def dataset(self, split: str) -> Any:
        """The reasoning-gym dataset object behind ``split``."""
        if split not in SPLITS:
            raise UsageError(f"rg:{self.dataset_name} has splits {', '.join(SPLITS)}, not {split!r}")
        if split not in self._datasets:
            self._datasets[split] = self._create(self.seed + (TRAIN_SEED_OFFSET if split == "train" else 0))
        return self._datasets[split]

    def _record(self, split: str, i: int) -> Record:
        """Item ``i`` of ``split``; generated once (some generators are slow) and then kept."""
        key = (split, i)
        if key not in self._cache:
            entry = self.dataset(split)[i]
            question = as_text(entry["question"])
            # A few datasets accept many answers and store none: their scorer alone decides.
            answer = as_text(entry["answer"]) if entry.get("answer") is not None else None
            solution = worked_solution("", answer) if answer is not None else ""
            self._cache[key] = Record(f"{split}/{i}", question, answer, solution, {"entry": entry, "split": split})
        return self._cache[key]

    def _records(self, split: str) -> Iterator[Record]:
        # Lazy, so that examples("test", limit=10) generates 10 items, not `size`.
        # Train questions that also occur in the test split are dropped: the splits never share one.
        exclude = {self._record("test", i).question for i in range(self.size)} if split == "train" else set()
        for i in range(len(self.dataset(split))):
            record = self._record(split, i)
            if record.question not in exclude:
                yield record

    def examples(self, split: str = "test", limit: int | None = None) -> list[Example]:
        self.dataset(split)  # validates the split name before any work
        return super().examples(split, limit)

    def _fewshot_records(self) -> Iterator[Record]:
        return self._records("train")

    def score(self, example: Example, completion: str) -> RewardResult:
        entry = example.meta.get("entry")
        if entry is None:
            raise UsageError(f"example {example.id} carries no reasoning-gym entry to score against")
        gold = as_text(entry["answer"]) if entry.get("answer") is not None else ""
        numeric = _is_number(gold)
        if self.strict:
            extracted = extract_answer(completion, strict=True)
            if extracted is None or not extracted.strip():
                return RewardResult.unparsable("no unambiguous answer found in the completion")
        else:
            # The last-number fallback only makes sense when the gold answer is a number; for a word or a
            # list it would turn "no answer given" into a wrong answer.
            extracted = extract_answer(completion, last_number_fallback=numeric)
        if extracted is not None and numeric:
            from reasonlab.rewards.math import strict_prediction, strip_math_delimiters

            # Extraction keeps math delimiters inside a box (``\\boxed{$38$}`` gives ``$38$``): the dataset's
            # string scorer would pay that partial credit, and strict_prediction would refuse it as not a number.
            extracted = strip_math_delimiters(extracted)
            if self.strict:  # its refusals (prose, "19 = 18", "\\neg 5") are about numeric answers
                extracted, refused = strict_prediction(gold, extracted)
                if refused is not None:
                    return refused
        if extracted is None:
            return RewardResult.unparsable("no answer found in the completion")
        ds = self.dataset(example.meta.get("split", "test"))
        try:
            value = float(ds.score_answer(answer=extracted, entry=entry))
        except Exception as e:  # a scorer bug on odd input is reported, never turned into a 0
            return RewardResult.error(f"{self.dataset_name}.score_answer raised {type(e).__name__}: {e}", extracted)
        details = f"reasoning-gym score {value:g}"
        if self.strict and value < 1.0:
            if numeric and _is_number(extracted) and self.answer_key(extracted) == self.answer_key(gold):
                value, details = 1.0, details + "; numerically equal to the gold"  # "38.0" is 38
            elif _substring_scorer(ds):
                # reasoning-gym's generic scorer gives len(gold)/len(answer) to any answer *containing* the gold:
                # "380", "38.5" or a list of candidates would earn part of the reward.
                value, details = 0.0, details + "; partial credit for containing the gold is not a reward"
        status = Status.OK if value >= 1.0 else Status.WRONG
        return RewardResult(value, status, extracted, details)

    def score_many(self, examples: Sequence[Example], completions: Sequence[str]) -> list[RewardResult]:
        return Task.score_many(self, examples, completions)

    def answer_key(self, extracted: str | None) -> Hashable | None:
        if extracted is not None and _is_number(extracted):
            return super().answer_key(extracted)  # numeric equivalence: "-4.0" votes with "-4"
        return Task.answer_key(self, extracted)


def _substring_scorer(ds: Any) -> bool:
    """Whether ``ds`` scores with reasoning-gym's generic ``score_answer`` (exact match, else partial credit
    for an answer that contains the gold) rather than a scorer of its own."""
    from reasoning_gym.dataset import ProceduralDataset

    return getattr(type(ds), "score_answer", None) is ProceduralDataset.score_answer


def _parse_config(name: str, config: Mapping[str, Any] | str | None) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, str):  # from the command line: YAML or JSON text
        try:
            config = yaml.safe_load(config) if config.strip() else {}
        except yaml.YAMLError as e:
            raise UsageError(f"rg:{name}: config is not valid YAML/JSON: {' '.join(str(e).split())}") from e
    if not isinstance(config, Mapping):
        raise UsageError(f"rg:{name}: config must be a mapping of field -> value, got {type(config).__name__}")
    return dict(config)
