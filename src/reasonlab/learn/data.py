"""Supervised fine-tuning data: read prompt/completion rows, tokenize them with a loss mask, pad.

Row formats (one JSON object per line), the ones TRL users already have:

- ``{"prompt": "text", "completion": "text"}`` — raw text, used as it is.
- ``{"prompt": [{"role": ..., "content": ...}, ...], "completion": "text"}`` — chat messages,
  rendered with the tokenizer's chat template and the generation prompt; ``completion`` may also
  be ``[{"role": "assistant", "content": "text"}]`` (TRL's conversational prompt-completion form).
- ``{"messages": [..., {"role": "assistant", "content": "text"}]}`` — TRL's conversational form:
  the last (assistant) turn is the completion, the turns before it the prompt.

:func:`load_sft_rows` normalises all of them to ``{"prompt": str | messages, "completion": str}``.
The loss is on completion tokens only (the model is not taught to write the prompt), so
:func:`tokenize_pair` sets ``labels = -100`` on prompt tokens; the completion ends with EOS so that
the model learns to stop.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any, Iterable, Sequence

from reasonlab.errors import DataError, UsageError

IGNORE_INDEX = -100  # the label torch's cross_entropy skips


def _check_messages(msgs: Any, what: str) -> str | None:
    """Why ``msgs`` is not a list of chat messages, or None if it is one."""
    if not isinstance(msgs, list) or not msgs:
        return f"{what} must be a non-empty list of messages"
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return f"{what}[{j}] must be an object with string 'role' and 'content'"
    return None


def normalize_row(row: Any) -> dict[str, Any]:
    """One row as ``{"prompt": str | messages, "completion": str}``; ValueError says what is wrong."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if "messages" in row and "prompt" not in row:
        msgs = row["messages"]
        why = _check_messages(msgs, "'messages'")
        if why:
            raise ValueError(why)
        if msgs[-1]["role"] != "assistant":
            raise ValueError(f"the last message must be the assistant's (the completion), got role {msgs[-1]['role']!r}")
        if len(msgs) < 2:
            raise ValueError("'messages' needs at least one turn before the assistant's completion")
        return {"prompt": msgs[:-1], "completion": msgs[-1]["content"]}
    if "prompt" not in row or "completion" not in row:
        raise ValueError("expected 'prompt' and 'completion' keys, or 'messages'")
    prompt, completion = row["prompt"], row["completion"]
    if not isinstance(prompt, str):
        why = _check_messages(prompt, "'prompt'")
        if why:
            raise ValueError(why + " (or a string)")
    if isinstance(completion, list):  # TRL conversational prompt-completion: one assistant message
        why = _check_messages(completion, "'completion'")
        if why or len(completion) != 1 or completion[0]["role"] != "assistant":
            raise ValueError("a list 'completion' must hold exactly one assistant message")
        completion = completion[0]["content"]
    if not isinstance(completion, str):
        raise ValueError(f"'completion' must be a string, got {type(completion).__name__}")
    if completion == "":
        raise ValueError("'completion' is empty")
    return {"prompt": prompt, "completion": completion}


def normalize_rows(rows: Iterable[Any], source: str = "<rows>") -> list[dict[str, Any]]:
    """Normalise in-memory rows; every malformed row is reported (by 1-based index) in one DataError."""
    out, problems = [], []
    n = 0
    for n, row in enumerate(rows, start=1):
        try:
            out.append(normalize_row(row))
        except ValueError as e:
            problems.append((n, str(e)))
    if problems:
        raise DataError(source, problems, total=n)
    if not out:
        raise UsageError(f"{source}: no training rows")
    return out


def load_sft_rows(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file of SFT rows (formats in the module docstring), normalised.

    Missing or empty file -> UsageError; malformed rows -> DataError listing their line numbers.
    """
    from reasonlab.tasks.io import read_jsonl

    return [row for _, row in read_jsonl(path, parse=normalize_row)]


_ADDS_BOS: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer's own convention puts BOS in front of plain text (Llama does, many don't)."""
    try:
        return _ADDS_BOS[tokenizer]
    except (KeyError, TypeError):
        pass
    bos = tokenizer.bos_token_id
    adds = bos is not None and tokenizer("x", add_special_tokens=True)["input_ids"][:1] == [bos]
    try:
        _ADDS_BOS[tokenizer] = adds
    except TypeError:  # not weak-referenceable: just probe every time
        pass
    return adds


def prompt_ids(tokenizer: Any, prompt: str | list[dict[str, str]]) -> list[int]:
    """Token ids of a prompt: chat messages through the chat template (with the generation
    prompt), raw text as it is, with BOS only if the tokenizer adds one by convention."""
    if isinstance(prompt, str):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return ([tokenizer.bos_token_id] + ids) if _adds_bos(tokenizer) else ids
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError("the data has chat-message prompts but the tokenizer has no chat template; use text prompts")
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    # The rendered template already holds any BOS it wants; adding special tokens again would double it.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_pair(tokenizer: Any, prompt: str | list[dict[str, str]], completion: str,
                  max_len: int) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` for one row; ``labels`` is ``-100`` on prompt tokens.

    The completion is followed by EOS. Sequences longer than ``max_len`` keep the prompt and lose
    the end of the completion; if no completion token survives, every label is -100 (the caller
    drops such rows). Prompt and completion are tokenized separately so that the mask boundary is
    exact (tokenizing the concatenation can merge the last prompt token into the first completion
    token).
    """
    if tokenizer.eos_token_id is None:
        raise UsageError("the tokenizer has no EOS token; SFT needs one to teach the model to stop")
    p = prompt_ids(tokenizer, prompt)
    c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (p + c)[:max_len]
    labels = ([IGNORE_INDEX] * len(p) + c)[:max_len]
    return input_ids, labels


def tokenize_rows(tokenizer: Any, rows: Sequence[dict[str, Any]],
                  max_len: int) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Tokenize normalised rows; returns ``(examples, dropped)`` where dropped rows had no
    completion token left after truncation."""
    examples, dropped = [], 0
    for row in rows:
        ids, labels = tokenize_pair(tokenizer, row["prompt"], row["completion"], max_len)
        if all(lab == IGNORE_INDEX for lab in labels[1:]):  # labels[0] is never predicted
            dropped += 1
            continue
        examples.append((ids, labels))
    return examples, dropped


def collate(batch: Sequence[tuple[list[int], list[int]]], pad_id: int):
    """Right-pad a micro-batch to its longest sequence: ``input_ids``, ``attention_mask``,
    ``labels`` (B, T) long tensors; padding has attention 0 and label -100."""
    import torch

    T = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), T), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    for i, (ids, lab) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
