"""Prompt formats for answer-checked tasks: small functions, picked by name from one table.

Each format is a function ``(question, fewshot) -> Prompt`` where ``fewshot`` is a list of worked
``(question, solution)`` pairs (solutions end with "The answer is X.", see :func:`worked_solution`).
Every format asks for the final answer in a form ``rewards.extract.extract_answer`` reads:

- ``chat``: one user message, the question plus "reason step by step, final answer in \\boxed{}"
  (the instruction Qwen2.5-Math and DeepSeek-R1 evaluations use). Ignores ``fewshot``.
- ``think``: DeepSeek-R1(-Zero) style: a system prompt asking for ``<think> ... </think>``
  ``<answer> ... </answer>``, then the question (DeepSeek-AI 2025, Table 1). Ignores ``fewshot``.
- ``fewshot``: few-shot chain of thought (Wei et al. 2022) as chat turns: each worked example is a
  user question and an assistant solution, then the question.
- ``plain``: raw text ``Question: ...\\nAnswer:`` for base models without a chat template, with the
  worked examples (if any) in the same form before it; stops at the next ``Question:``.

A new format is a new function and a row in ``FORMATS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from reasonlab.errors import UsageError
from reasonlab.types import Message, Prompt

Shot = tuple[str, str]  # (question, worked solution)

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

THINK_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
    "The Assistant first thinks about the reasoning process in the mind and then provides the User with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>. The answer holds only the final result."
)


def worked_solution(reasoning: str, answer: str) -> str:
    """A few-shot solution: the reasoning, then the sentence ``extract_answer`` reads the answer from."""
    reasoning = reasoning.strip()
    return f"{reasoning}\nThe answer is {answer}." if reasoning else f"The answer is {answer}."


def chat_prompt(question: str, fewshot: Sequence[Shot] = ()) -> list[Message]:
    return [{"role": "user", "content": f"{question.strip()}\n{BOXED_INSTRUCTION}"}]


def think_prompt(question: str, fewshot: Sequence[Shot] = ()) -> list[Message]:
    return [{"role": "system", "content": THINK_SYSTEM_PROMPT}, {"role": "user", "content": question.strip()}]


def fewshot_prompt(question: str, fewshot: Sequence[Shot] = ()) -> list[Message]:
    messages: list[Message] = []
    for q, solution in fewshot:
        messages.append({"role": "user", "content": q.strip()})
        messages.append({"role": "assistant", "content": solution.strip()})
    messages.append({"role": "user", "content": question.strip()})
    return messages


def plain_prompt(question: str, fewshot: Sequence[Shot] = ()) -> str:
    shots = "".join(f"Question: {q.strip()}\nAnswer: {s.strip()}\n\n" for q, s in fewshot)
    return f"{shots}Question: {question.strip()}\nAnswer:"


@dataclass(frozen=True)
class PromptFormat:
    """A prompt format: how to build the prompt, and what it implies for sampling."""

    name: str
    build: Callable[[str, Sequence[Shot]], Prompt]
    uses_fewshot: bool
    """Whether ``build`` shows worked examples (the task then loads them from its train split)."""
    stop: tuple[str, ...] = ()
    """Stop strings: where a base model would start inventing the next few-shot question."""


FORMATS: dict[str, PromptFormat] = {
    f.name: f
    for f in (
        PromptFormat("chat", chat_prompt, uses_fewshot=False),
        PromptFormat("think", think_prompt, uses_fewshot=False),
        PromptFormat("fewshot", fewshot_prompt, uses_fewshot=True),
        PromptFormat("plain", plain_prompt, uses_fewshot=True, stop=("\nQuestion:",)),
    )
}


def get_format(name: str, formats: dict[str, PromptFormat] | None = None) -> PromptFormat:
    """The format called ``name`` (from ``formats``, default :data:`FORMATS`); UsageError if unknown."""
    table = FORMATS if formats is None else formats
    try:
        return table[name]
    except KeyError:
        raise UsageError(f"unknown prompt format {name!r}; choose one of: {', '.join(table)}") from None


def format_prompt(name: str, question: str, fewshot: Sequence[Shot] = ()) -> Prompt:
    """Build the prompt for ``question`` in the format called ``name``."""
    return get_format(name).build(question, fewshot)
