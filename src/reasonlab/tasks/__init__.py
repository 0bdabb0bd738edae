"""Tasks: where problems come from, how they are prompted, what counts as correct.

``load_task(spec, **options)`` builds a task from a spec string:

==========================  ==================================================================
spec                        task
==========================  ==================================================================
``gsm8k``                   GSM8K from the default data directory (``tasks.gsm8k``)
``gsm8k:<path>``            any JSONL file (or directory of ``<split>.jsonl``) in GSM8K format
``math:<path>``             MATH-style JSONL: ``problem`` + ``solution`` (last \\boxed{}) or ``answer``
``rg:<dataset>``            a reasoning-gym dataset, e.g. ``rg:basic_arithmetic``
``humaneval``               HumanEval's 164 problems, scored by their unit tests
``jsonl:<path>``            any JSONL with a column mapping (``question_field``, ``answer_field``, ...)
``hf:<dataset>``            a Hugging Face dataset from a local path or the local cache
``arith``                   the tiny built-in arithmetic task (``tasks.arith``)
==========================  ==================================================================

``options`` go to the task's constructor (``prompt_format``, ``num_fewshot``, ``seed``, ``size``,
``config`` for reasoning-gym as a dict or YAML text, column names for ``jsonl``/``hf``, ...);
options whose value is ``None`` are dropped so the task's defaults apply (how a CLI passes
"not given"). An unknown spec or an option the task does not take raises :class:`UsageError`.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from reasonlab.errors import UsageError
from reasonlab.tasks.base import Task

__all__ = ["Task", "TaskKind", "TASKS", "load_task", "list_tasks"]


@dataclass(frozen=True)
class TaskKind:
    """One row of the spec table: ``<prefix>[:<argument>]`` -> ``module.cls(<param>=argument, ...)``."""

    prefix: str
    target: str
    """``module:Class``, imported when used (reasoning-gym and datasets are slow to import)."""
    param: str | None
    """Constructor parameter that receives the spec's argument (``None``: the spec takes none)."""
    arg_required: bool
    form: str
    help: str

    def load_class(self) -> type[Task]:
        module, cls = self.target.split(":")
        try:
            return getattr(importlib.import_module(module), cls)
        except ModuleNotFoundError as e:
            if e.name == module:
                raise UsageError(f"task {self.prefix!r} is not available in this installation ({module} missing)") from e
            raise


TASKS: dict[str, TaskKind] = {
    k.prefix: k
    for k in (
        TaskKind("gsm8k", "reasonlab.tasks.gsm8k:GSM8KTask", "path", False, "gsm8k[:<path.jsonl>]",
                 "GSM8K grade-school math (default data, or any file in its format)"),
        TaskKind("math", "reasonlab.tasks.math_jsonl:MathTask", "path", True, "math:<path.jsonl>",
                 "MATH-style JSONL: problem + solution (\\boxed{}) or answer"),
        TaskKind("rg", "reasonlab.tasks.rg:ReasoningGymTask", "name", True, "rg:<dataset>",
                 "a reasoning-gym dataset by name, e.g. rg:basic_arithmetic (option config=...)"),
        TaskKind("humaneval", "reasonlab.tasks.humaneval:HumanEvalTask", None, False, "humaneval",
                 "HumanEval: 164 Python functions judged by unit tests"),
        TaskKind("jsonl", "reasonlab.tasks.jsonl:JsonlTask", "path", True, "jsonl:<path>",
                 "any JSONL with question/answer columns (question_field=, answer_field=)"),
        TaskKind("hf", "reasonlab.tasks.jsonl:HFDatasetTask", "name", True, "hf:<dataset>",
                 "a Hugging Face dataset from a local path or cache (needs 'datasets')"),
        TaskKind("arith", "reasonlab.tasks.arith:ArithTask", None, False, "arith",
                 "tiny built-in arithmetic task, for smoke tests and the tiny model"),
    )
}


def list_tasks() -> list[str]:
    """One line per spec form, for ``--help``."""
    width = max(len(k.form) for k in TASKS.values())
    return [f"{k.form:<{width}}  {k.help}" for k in TASKS.values()]


def _valid_forms() -> str:
    return ", ".join(k.form for k in TASKS.values())


def load_task(spec: str, **options: Any) -> Task:
    """Build the task ``spec`` names (grammar in the module docstring), passing ``options`` on."""
    prefix, sep, arg = spec.strip().partition(":")
    kind = TASKS.get(prefix)
    if kind is None:
        raise UsageError(f"unknown task {spec!r}; valid forms: {_valid_forms()}")
    if sep and kind.param is None:
        raise UsageError(f"task {prefix!r} takes no argument (got {spec!r}); form: {kind.form}")
    if kind.arg_required and not arg:
        raise UsageError(f"task {prefix!r} needs an argument: {kind.form}")

    cls = kind.load_class()
    kwargs = {k: v for k, v in options.items() if v is not None}
    accepted = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = sorted(k for k in kwargs if k not in accepted or k == "self")
    if unknown and not takes_any:
        names = [n for n, p in accepted.items() if n != "self" and n != kind.param and p.kind is not p.VAR_POSITIONAL]
        raise UsageError(f"task {prefix!r} does not take option {', '.join(unknown)} (options: {', '.join(names)})")
    if kind.param is not None and arg:
        if kind.param in kwargs:
            raise UsageError(f"task {spec!r}: {kind.param} is given both in the spec and as an option")
        kwargs[kind.param] = arg
    return cls(**kwargs)
