"""Answer-checked tasks from any JSONL file or any (locally available) Hugging Face dataset.

:class:`AnswerTask` is what every task with a gold final answer shares: it formats prompts
(``tasks.prompts``), adds worked few-shot examples from a train split, and scores completions with
the math verifier (``rewards.math``, so ``1/2`` equals ``0.5``). Subclasses only say where the rows
come from (:meth:`AnswerTask._records`). :class:`Columns` maps a row's fields onto question, gold
answer and worked solution, with a small table of gold-answer formats (:data:`GOLD_FORMATS`).

- :class:`JsonlTask`: a JSONL file (every split) or a directory of ``<split>.jsonl`` files.
- :class:`HFDatasetTask`: ``datasets.load_dataset`` on a local path or the local cache, never the hub.

GSM8K (``tasks.gsm8k``) and MATH-style files (``tasks.math_jsonl``) are JSONL tasks with fixed columns.

Few-shot examples are the first ``num_fewshot`` rows of the train split (a stable choice, so runs
compare); a question used as a worked example is never also evaluated, which matters when the
evaluated split *is* the train split (training runs) or a single file serves both.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable, Iterator, Literal, Sequence

from reasonlab.errors import DataError, UsageError
from reasonlab.rewards.extract import extract_boxed
from reasonlab.tasks.base import Task
from reasonlab.tasks.io import as_text, read_jsonl, split_file
from reasonlab.tasks.prompts import Shot, get_format, worked_solution
from reasonlab.types import Example, Prompt, RewardResult

if TYPE_CHECKING:
    from reasonlab.rewards.math import MathVerifier, MathVerifierConfig

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- gold answers


def gsm8k_answer(text: str) -> tuple[str, str] | None:
    """GSM8K's answer field -> (gold after the last ``####``, reasoning without calculator marks)."""
    if "####" not in text:
        return None
    reasoning, gold = text.rsplit("####", 1)
    gold = gold.replace(",", "").strip()
    # "<<48/2=24>>" spans are calculator annotations, not part of the written solution.
    return (gold, re.sub(r"<<[^>]*>>", "", reasoning).strip()) if gold else None


def boxed_answer(text: str) -> tuple[str, str] | None:
    """A solution -> (content of its last ``\\boxed{}``, the solution itself)."""
    gold = extract_boxed(text)
    return (gold, text.strip()) if gold else None


def plain_answer(text: str) -> tuple[str, str] | None:
    """The field is the answer itself; there is no reasoning to show."""
    return (text, "") if text else None


#: How a gold-answer field is written -> a parser returning ``(gold, reasoning)`` or ``None``.
GOLD_FORMATS: dict[str, Callable[[str], tuple[str, str] | None]] = {
    "plain": plain_answer,
    "gsm8k": gsm8k_answer,
    "boxed": boxed_answer,
}


@dataclass(frozen=True)
class Record:
    """One usable row: what an :class:`Example` is built from. ``key`` becomes the id's tail."""

    key: str
    question: str
    answer: str | None
    solution: str
    """A worked solution that states the answer, for few-shot prompts."""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Columns:
    """Which fields of a row hold the question, the gold answer and (optionally) a worked solution."""

    question: str = "question"
    answer: str = "answer"
    """Field holding the gold answer, written as ``answer_format`` says."""
    answer_format: str = "plain"
    """``plain`` (the answer itself), ``gsm8k`` (reasoning then ``#### answer``), ``boxed`` (last \\boxed{})."""
    solution: str | None = None
    """Field with a worked solution; when the answer field is absent or empty, the gold answer is the
    solution's last ``\\boxed{}`` (the MATH convention)."""
    id: str | None = None
    """Field with a stable row id; ``None`` numbers rows by position."""
    keep: tuple[str, ...] = ()
    """Extra fields copied into ``Example.meta`` when present (e.g. MATH's subject and level)."""

    def __post_init__(self) -> None:
        if self.answer_format not in GOLD_FORMATS:
            raise UsageError(f"unknown answer format {self.answer_format!r}; choose one of: {', '.join(GOLD_FORMATS)}")

    def required(self) -> tuple[str, ...]:
        # With a solution column the answer may be absent (read from the solution's \boxed{}).
        fields = (self.question,) + ((self.answer,) if self.solution is None else ())
        return fields + ((self.id,) if self.id else ())

    def parse(self, row: dict) -> tuple[str, str, str] | str:
        """``(question, gold, worked solution)`` of a row, or why the row has no gold answer."""
        question = as_text(row[self.question])
        raw = row.get(self.answer)
        solution_text = as_text(row[self.solution]) if self.solution and row.get(self.solution) is not None else ""
        if raw is not None and as_text(raw):
            parsed = GOLD_FORMATS[self.answer_format](as_text(raw))
            if parsed is None:
                return f"field {self.answer!r} has no gold answer in {self.answer_format} format"
        elif solution_text:
            parsed = boxed_answer(solution_text)
            if parsed is None:
                return f"no {self.answer!r} field and no \\boxed{{}} answer in {self.solution!r}"
        elif self.solution:
            return f"no gold answer: neither {self.answer!r} nor {self.solution!r} field"
        else:
            return f"missing gold answer field {self.answer!r}"
        gold, reasoning = parsed
        reasoning = solution_text or reasoning
        # A solution that already boxes its answer states it; otherwise end with "The answer is X."
        solution = reasoning if extract_boxed(reasoning) else worked_solution(reasoning, gold)
        return question, gold, solution

    def check(self, row: dict) -> str | None:
        parsed = self.parse(row)
        return parsed if isinstance(parsed, str) else None

    def record(self, row: dict, key: str, meta: dict[str, Any]) -> Record:
        question, gold, solution = self.parse(row)  # type: ignore[misc]  # rows were checked
        extra = {k: row[k] for k in self.keep if k in row}
        return Record(key, question, gold, solution, {**meta, **extra})


# ----------------------------------------------------------------------------- shared base


class AnswerTask(Task):
    """A task whose examples have a gold final answer, checked for mathematical equivalence."""

    def __init__(
        self,
        prompt_format: str = "chat",
        num_fewshot: int = 4,
        verifier: "MathVerifierConfig | None" = None,
    ):
        self.format = get_format(prompt_format)
        if num_fewshot < 0:
            raise UsageError(f"num_fewshot must be >= 0, got {num_fewshot}")
        if self.format.name == "fewshot" and num_fewshot == 0:
            raise UsageError("prompt format 'fewshot' needs num_fewshot >= 1")
        # Formats that show no worked examples ignore num_fewshot, so no train split is needed.
        self.num_fewshot = num_fewshot if self.format.uses_fewshot else 0
        self.stop = self.format.stop
        if isinstance(verifier, dict):  # from YAML task options: {verifier: {strict: true}}
            from reasonlab.rewards.math import MathVerifierConfig

            try:
                verifier = MathVerifierConfig(**verifier)
            except TypeError as e:
                raise UsageError(f"bad verifier options {verifier}: {e}") from e
        self._verifier_config = verifier
        self._verifier: "MathVerifier | None" = None
        self._shots: list[Shot] | None = None

    # Subclasses say where rows come from.
    def _records(self, split: str) -> Iterable[Record]:
        """The usable rows of ``split`` in order; may be lazy, ``examples`` stops at its limit."""
        raise NotImplementedError

    def _fewshot_records(self) -> Iterable[Record] | None:
        """Rows to draw worked examples from (the train split), or ``None`` if there is none."""
        return None

    def fewshot(self) -> list[Shot]:
        """The worked ``(question, solution)`` examples shown in every prompt (empty for zero-shot)."""
        if self._shots is None:
            if self.num_fewshot == 0:
                self._shots = []
            else:
                pool = self._fewshot_records()
                if pool is None:
                    raise UsageError(
                        f"prompt format {self.format.name!r} shows worked examples but {self.name} has no train "
                        "split to take them from: pass fewshot_path (or fewshot_split), or num_fewshot=0 (plain), or prompt_format='chat'"
                    )
                shots = [(r.question, r.solution) for r in itertools.islice(pool, self.num_fewshot)]
                if len(shots) < self.num_fewshot:
                    raise UsageError(f"num_fewshot={self.num_fewshot} but only {len(shots)} worked examples exist")
                self._shots = shots
        return self._shots

    def build_prompt(self, question: str) -> Prompt:
        return self.format.build(question, self.fewshot())

    def examples(self, split: str = "test", limit: int | None = None) -> list[Example]:
        if limit is not None and limit < 0:
            raise UsageError(f"limit must be >= 0, got {limit}")
        shown = {q for q, _ in self.fewshot()}
        out: list[Example] = []
        for r in self._records(split):
            if limit is not None and len(out) >= limit:
                break
            if r.question in shown:  # a worked example is never also a question to answer
                continue
            prompt = self.build_prompt(r.question)
            meta = dict(r.meta)  # each Example owns its meta
            out.append(Example(id=f"{self.name}/{r.key}", prompt=prompt, answer=r.answer, question=r.question, meta=meta))
        return out

    def use_strict_verifier(self) -> None:
        """Score with the strict verifier from now on (``MathVerifierConfig.strict``): hedged, ambiguous or
        several answers get nothing. RL trainers call this, since a reward must not be gameable."""
        import dataclasses

        from reasonlab.rewards.math import MathVerifierConfig

        cfg = self._verifier_config or MathVerifierConfig()
        if not cfg.strict:
            self._verifier_config = dataclasses.replace(cfg, strict=True)
            if self._verifier is not None:
                self._verifier.close()
                self._verifier = None

    @property
    def strict(self) -> bool:
        """Whether answers are scored strictly (rewards) rather than leniently (evaluation)."""
        return bool(self._verifier_config is not None and self._verifier_config.strict)

    @property
    def verifier(self) -> "MathVerifier":
        if self._verifier is None:  # created on first use: it may start a worker pool
            from reasonlab.rewards.math import MathVerifier, MathVerifierConfig

            self._verifier = MathVerifier(self._verifier_config or MathVerifierConfig())
        return self._verifier

    def score(self, example: Example, completion: str) -> RewardResult:
        return self.verifier.score(_gold(example), completion)

    def score_many(self, examples: Sequence[Example], completions: Sequence[str]) -> list[RewardResult]:
        if len(examples) != len(completions):
            raise ValueError(f"{len(examples)} examples but {len(completions)} completions")
        return self.verifier.score_many([_gold(e) for e in examples], list(completions))

    def answer_key(self, extracted: str | None) -> Hashable | None:
        from reasonlab.rewards.math import answer_key

        return answer_key(extracted)

    def close(self) -> None:
        if self._verifier is not None:
            self._verifier.close()
            self._verifier = None


def _gold(example: Example) -> str:
    if example.answer is None:
        raise UsageError(f"example {example.id} has no gold answer to check against")
    return example.answer


# ----------------------------------------------------------------------------- JSONL


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return name


class JsonlTask(AnswerTask):
    """Questions and gold answers from JSONL, with a column mapping.

    ``path`` is one file (it serves every split) or a directory of ``<split>.jsonl`` files. Example
    ids are ``<name>/<file stem>/<0-based line index>`` (``<name>/<id>`` with ``id_field``), so they
    stay the same when rows are added after them or bad rows are skipped.
    """

    name = "jsonl"

    def __init__(
        self,
        path: str | os.PathLike,
        question_field: str = "question",
        answer_field: str = "answer",
        id_field: str | None = None,
        solution_field: str | None = None,
        answer_format: str = "plain",
        prompt_format: str = "chat",
        num_fewshot: int = 4,
        fewshot_path: str | os.PathLike | None = None,
        on_bad: Literal["error", "skip"] = "error",
        verifier: "MathVerifierConfig | None" = None,
    ):
        columns = Columns(question_field, answer_field, answer_format, solution_field, id_field)
        self._init(path, columns, prompt_format, num_fewshot, fewshot_path, on_bad, verifier)

    def _init(self, path, columns: Columns, prompt_format, num_fewshot, fewshot_path, on_bad, verifier) -> None:
        super().__init__(prompt_format, num_fewshot, verifier)
        self.path = Path(path).expanduser() if path is not None else None
        self.columns = columns
        self.fewshot_path = Path(fewshot_path).expanduser() if fewshot_path is not None else None
        self.on_bad = on_bad
        self._cache: dict[Path, list[Record]] = {}

    def data_path(self) -> Path:
        """The file or directory the splits are read from."""
        if self.path is None:
            raise UsageError(f"{self.name}: no data path given")
        return self.path

    def split_path(self, split: str) -> Path:
        return split_file(self.data_path(), split)

    def _records(self, split: str) -> list[Record]:
        return self._read(self.split_path(split))

    def _fewshot_records(self) -> list[Record] | None:
        if self.fewshot_path is not None:
            return self._read(split_file(self.fewshot_path, "train"))
        base = self.data_path()
        train = [base / "train.jsonl", base / "train.jsonl.gz"] if base.is_dir() else []
        return next((self._read(p) for p in train if p.is_file()), None)

    def _read(self, path: Path) -> list[Record]:
        if path not in self._cache:
            c = self.columns
            rows = read_jsonl(path, c.required(), on_bad=self.on_bad, check=c.check)
            if c.id:
                _check_unique_ids(path, rows, c.id)
            stem = _stem(path)
            self._cache[path] = [
                c.record(row, as_text(row[c.id]) if c.id else f"{stem}/{lineno - 1}", {"source": str(path), "line": lineno})
                for lineno, row in rows
            ]
        return self._cache[path]


def _check_unique_ids(path: Path, rows: list[tuple[int, dict]], id_field: str) -> None:
    first: dict[str, int] = {}
    dupes: list[tuple[int, str]] = []
    for lineno, row in rows:
        key = as_text(row[id_field])
        if key in first:
            dupes.append((lineno, f"duplicate {id_field} {key!r} (first on line {first[key]})"))
        else:
            first[key] = lineno
    if dupes:
        raise DataError(str(path), dupes, total=len(rows))


# ----------------------------------------------------------------------------- Hugging Face datasets


@contextlib.contextmanager
def _hub_offline(datasets_module: Any) -> Iterator[None]:
    """Force ``datasets`` to use local files and its cache only, even if imported in online mode."""
    import huggingface_hub.constants as hub_constants

    saved = (datasets_module.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    datasets_module.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets_module.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class HFDatasetTask(AnswerTask):
    """Questions and gold answers from a Hugging Face ``datasets`` dataset, offline.

    ``name`` is a local data file (``.jsonl``/``.json``/``.csv``/``.parquet``; it serves every
    split), a directory written by ``save_to_disk``, a local dataset directory, or a hub id that is
    already in the local ``datasets`` cache (nothing is downloaded). ``split`` fixes the dataset
    split to read whatever split is asked for; worked examples come from ``fewshot_split``;
    ``cache_dir`` overrides the ``datasets`` cache directory. Ids are
    ``hf/<dataset>/<split>/<row index>`` (``hf/<dataset>/<id>`` with ``id_field``).
    Needs the optional ``datasets`` package (``pip install 'reasonlab[datasets]'``).
    """

    name = "hf"

    def __init__(
        self,
        name: str,
        split: str | None = None,
        question_field: str = "question",
        answer_field: str = "answer",
        id_field: str | None = None,
        solution_field: str | None = None,
        answer_format: str = "plain",
        config_name: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        prompt_format: str = "chat",
        num_fewshot: int = 4,
        fewshot_split: str = "train",
        on_bad: Literal["error", "skip"] = "error",
        verifier: "MathVerifierConfig | None" = None,
    ):
        super().__init__(prompt_format, num_fewshot, verifier)
        self.dataset = name
        self.split = split
        self.config_name = config_name
        self.cache_dir = str(Path(cache_dir).expanduser()) if cache_dir is not None else None
        self.columns = Columns(question_field, answer_field, answer_format, solution_field, id_field)
        self.fewshot_split = fewshot_split
        self.on_bad = on_bad
        self._cache: dict[str, list[Record]] = {}

    def _load(self, split: str) -> Any:
        try:
            import datasets
        except ImportError:
            raise UsageError("hf: tasks need the optional 'datasets' package: pip install 'reasonlab[datasets]'") from None
        local = Path(self.dataset).expanduser()
        try:
            with _hub_offline(datasets):
                if local.is_file():
                    builder = _FILE_BUILDERS.get(local.suffix)
                    if builder is None:
                        raise UsageError(f"hf:{self.dataset}: unsupported file type (use one of {', '.join(_FILE_BUILDERS)})")
                    # A lone data file is loaded as the builder's single "train" split; it serves every split.
                    return datasets.load_dataset(builder, data_files=str(local), split="train", cache_dir=self.cache_dir)
                if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():
                    saved = datasets.load_from_disk(str(local))
                    if isinstance(saved, datasets.DatasetDict):
                        if split not in saved:
                            raise UsageError(f"hf:{self.dataset} has no split {split!r} (splits: {', '.join(saved)})")
                        return saved[split]
                    return saved
                name = str(local) if local.exists() else self.dataset
                return datasets.load_dataset(name, self.config_name, split=split, cache_dir=self.cache_dir)
        except UsageError:
            raise
        except Exception as e:  # datasets raises many types (FileNotFoundError, ValueError, ConnectionError...)
            msg = " ".join(str(e).split())[:300]
            raise UsageError(f"cannot load dataset {self.dataset!r} split {split!r} offline (local path or cache only): {msg}") from e

    def _read(self, split: str) -> list[Record]:
        if split not in self._cache:
            ds = self._load(split)
            c = self.columns
            label = f"{self.dataset} [{split}]"
            missing = [f for f in c.required() if f not in ds.column_names]
            if missing:
                raise UsageError(f"{label}: no column {', '.join(map(repr, missing))} (columns: {', '.join(ds.column_names)})")
            records, problems = [], []
            for i, row in enumerate(ds):
                empty = [f for f in c.required() if row.get(f) is None or not as_text(row[f])]
                why = f"empty field {', '.join(map(repr, empty))}" if empty else c.check(row)
                if why:
                    problems.append((i + 1, why))  # DataError says "line n": row n, counted from 1
                    continue
                key = f"{_stem(Path(self.dataset))}/" + (as_text(row[c.id]) if c.id else f"{split}/{i}")
                records.append(c.record(row, key, {"source": label, "row": i}))
            if problems and (self.on_bad == "error" or not records):
                raise DataError(label, problems, total=len(ds))
            if problems:
                log.warning("%s: skipped %d of %d malformed rows (rows %s)", label, len(problems), len(ds),
                            ", ".join(str(n) for n, _ in problems[:20]))
            self._cache[split] = records
        return self._cache[split]

    def _records(self, split: str) -> list[Record]:
        return self._read(self.split or split)

    def _fewshot_records(self) -> list[Record] | None:
        return self._read(self.fewshot_split)
