"""Step labels for process reward models: Math-Shepherd auto-labelling, and PRM800K's human labels.

**Math-Shepherd** (Wang et al. 2024, "Math-Shepherd: Verify and Reinforce LLMs Step-by-step without
Human Annotations"): sample solutions from the policy and cut them into steps at a separator. From
the prefix ending after each step, sample ``k`` completions and let the task's verifier judge them
against the gold answer. The step's

- **hard label** is 1 if *any* completion reaches the gold answer (the step still leaves a way to the
  right answer), else 0 (the paper's HE);
- **soft label** is the *fraction* that do (the paper's SE).

The last step's prefix is the whole solution, so its labels are the solution's own correctness (no
sampling needed). Completions the verifier could not judge (timeout, error) are left out of the
fraction; a step with none judged gets ``None`` labels, which training skips. The completions of all
prefixes of all solutions of ``batch_problems`` problems are sampled in ONE ``generate`` call.

**PRM800K** (Lightman et al. 2023, "Let's Verify Step by Step"; github.com/openai/prm800k): each JSONL
line is one labelled solution: ``question.problem`` / ``ground_truth_answer``, and ``label.steps``,
each with ``completions`` rated -1 / 0 / +1 and the ``chosen_completion`` (or a ``human_completion``).
:func:`read_prm800k` follows the chosen trajectory; at a step where none was chosen (phase 2 stops
at the first error) it takes the pre-generated step (or the first one rated -1) and ends there.
A rating of +1 is label 1, -1 is 0, and a neutral 0 counts as ``neutral`` says (positive by default,
as OpenAI's and OpenR's PRM training do). Human labels have no fraction: soft = hard.

Both write the same step-labelled rows, one JSON object per line::

    {"id", "prompt", "question", "answer", "completion", "steps": [...], "separator",
     "hard_labels": [1, 1, 0], "soft_labels": [1.0, 0.5, 0.0], "final_correct": false, "source", "k"}

Run::

    reasonlab label --task arith --model tiny --out steps.jsonl --problems 200 --k 8
    reasonlab label --prm800k prm800k/data/phase2_train.jsonl --out steps.jsonl
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reasonlab import config as config_lib
from reasonlab.errors import DataError, UsageError, print_error
from reasonlab.rewards.reward_model import unescape
from reasonlab.rewards.steps import split_steps
from reasonlab.types import Example, SamplingParams, Status


@dataclass(frozen=True)
class LabelConfig:
    """Label solution steps: Math-Shepherd rollouts from a policy, or convert PRM800K's human labels."""

    task: str = "arith"
    """Task whose problems are solved and whose verifier judges the rollouts (e.g. arith, gsm8k, rg:basic_arithmetic)."""
    model: str = "tiny"
    """Policy that writes the solutions and the rollouts (a built-in name, checkpoint directory or GGUF)."""
    out: str = "steps.jsonl"
    """Output JSONL of step-labelled rows. Sampling appends to an existing file, skipping problems already in
    it (so an interrupted run continues); a PRM800K conversion replaces it."""
    split: str = "train"
    """Task split to take problems from."""
    problems: int = 64
    """Problems to label (after `offset`)."""
    offset: int = 0
    """Skip this many problems of the split first (e.g. to label a held-out range)."""
    samples_per_problem: int = 4
    """Solutions sampled per problem (duplicates dropped when `dedup`)."""
    k: int = 8
    """Completions sampled from each step prefix."""
    temperature: float = 0.8
    """Sampling temperature of solutions and completions."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    max_new_tokens: int = 256
    """Longest solution or completion, in tokens."""
    separator: str = "auto"
    """Step separator: auto (a newline for arith, whose steps are lines; a blank line otherwise) or a string; escapes like \\n work."""
    dedup: bool = True
    """Label each distinct solution of a problem once."""
    strict_labels: bool = True
    """Judge the rollouts with the task's strict verifier where it has one, as RL rewards are judged: a hedged or
    ambiguous answer is no positive label (a reward model trained on lenient labels learns to accept hedges)."""
    batch_problems: int = 8
    """Problems whose rollouts go into one generate call."""
    backend: str = "auto"
    """Policy backend: auto, hf, llamacpp, openai."""
    device: str = "auto"
    """Device for the hf backend."""
    seed: int = 0
    """Sampling seed (each batch derives its own from it)."""
    threads: int = 0
    """CPU threads for torch (0: torch's default). On a busy machine 1 is often fastest for small models."""
    prm800k: str = ""
    """Instead of sampling: convert this PRM800K JSONL file (the task and model are not used)."""
    neutral: str = "positive"
    """PRM800K: how a neutral (0) rating counts: positive or negative."""
    prompt_format: str = "{problem}\n\n"
    """PRM800K: the prompt written for each problem ({problem} is its text)."""

    def __post_init__(self) -> None:
        for name in ("problems", "samples_per_problem", "k", "max_new_tokens", "batch_problems"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.offset < 0:
            raise ValueError(f"offset must be >= 0, got {self.offset}")
        if self.neutral not in ("positive", "negative"):
            raise ValueError(f"neutral must be positive or negative, got {self.neutral!r}")


def resolve_separator(separator: str, task_name: str) -> str:
    """The step separator: ``auto`` is a newline for ``arith`` (one step per line), else a blank line."""
    if separator == "auto":
        return "\n" if task_name == "arith" else "\n\n"
    sep = unescape(separator)
    if not sep:
        raise UsageError("the step separator may not be empty")
    return sep


# ----------------------------------------------------------------------------------------------
# Math-Shepherd
# ----------------------------------------------------------------------------------------------

def math_shepherd_labels(verdicts: Sequence[bool | None]) -> tuple[int | None, float | None]:
    """``(hard, soft)`` of one step from its completions' verdicts (None: the verifier could not judge)."""
    judged = [v for v in verdicts if v is not None]
    if not judged:
        return None, None
    right = sum(1 for v in judged if v)
    return int(right > 0), right / len(judged)


def step_prefixes(steps: Sequence[str], separator: str) -> list[str]:
    """The solution text after each step but the last: ``SEP.join(steps[:i+1]) + SEP``."""
    return [separator.join(steps[:i + 1]) + separator for i in range(len(steps) - 1)]


def _verdict(result) -> bool | None:
    return None if result.status in (Status.TIMEOUT, Status.ERROR) else result.correct


def label_solutions(policy: Any, task: Any, examples: Sequence[Example], solutions: Sequence[Sequence[str]], *,
                    separator: str, k: int, sampling: SamplingParams, source: str = "math-shepherd") -> list[dict]:
    """Math-Shepherd labels for given solution texts (``solutions[i]`` are example ``i``'s), one row each.

    All step prefixes of all solutions are continued ``k`` times in ONE ``policy.generate`` call.
    Solutions with no non-empty step are skipped.
    """
    jobs = []  # (example index, solution text, steps)
    for i, sols in enumerate(solutions):
        for text in sols:
            steps = list(split_steps(text, separator))
            if steps:
                jobs.append((i, text, steps))
    prompts, owners = [], []
    for j, (i, _, steps) in enumerate(jobs):
        for s, prefix in enumerate(step_prefixes(steps, separator)):
            prompts.append(policy.render(examples[i].prompt) + prefix)
            owners.append((j, s, prefix))
    rollouts = policy.generate(prompts, sampling.replace(n=k)) if prompts else []
    if len(rollouts) != len(prompts) * k:
        raise UsageError(f"policy {policy.name} returned {len(rollouts)} completions for {len(prompts)} prompts x k={k}")
    # Judge every rollout and every whole solution in one batch (tasks with worker pools batch it).
    pairs = []
    for p, (j, _, prefix) in enumerate(owners):
        pairs += [(examples[jobs[j][0]], prefix + c.text) for c in rollouts[p * k:(p + 1) * k]]
    pairs += [(examples[i], text) for i, text, _ in jobs]
    results = task.score_many([e for e, _ in pairs], [t for _, t in pairs])
    verdicts = [_verdict(r) for r in results]
    finals = verdicts[len(verdicts) - len(jobs):]
    per_step: dict[tuple[int, int], list[bool | None]] = {}
    for p, (j, s, _) in enumerate(owners):
        per_step[(j, s)] = verdicts[p * k:(p + 1) * k]
    rows = []
    for j, (i, text, steps) in enumerate(jobs):
        hard, soft = [], []
        for s in range(len(steps) - 1):
            h, f = math_shepherd_labels(per_step[(j, s)])
            hard.append(h)
            soft.append(f)
        final = finals[j]
        hard.append(None if final is None else int(final))  # the last prefix is the whole solution
        soft.append(None if final is None else float(final))
        ex = examples[i]
        rows.append({"id": ex.id, "prompt": ex.prompt, "question": ex.question, "answer": ex.answer,
                     "completion": text, "steps": steps, "separator": separator, "hard_labels": hard,
                     "soft_labels": soft, "final_correct": final, "source": source, "k": k})
    return rows


def sample_solutions(policy: Any, examples: Sequence[Example], n: int, sampling: SamplingParams,
                     dedup: bool = True) -> list[list[str]]:
    """``n`` sampled solution texts per example (one generate call), distinct ones only when ``dedup``."""
    comps = policy.generate([e.prompt for e in examples], sampling.replace(n=n))
    out = []
    for i in range(len(examples)):
        texts = [c.text for c in comps[i * n:(i + 1) * n]]
        out.append(list(dict.fromkeys(texts)) if dedup else texts)
    return out


def label_task(policy: Any, task: Any, examples: Sequence[Example], cfg: LabelConfig) -> Iterator[list[dict]]:
    """Sample and label ``examples`` in batches of ``cfg.batch_problems``; yields each batch's rows."""
    separator = resolve_separator(cfg.separator, getattr(task, "name", ""))
    for b, start in enumerate(range(0, len(examples), cfg.batch_problems)):
        batch = examples[start:start + cfg.batch_problems]
        sampling = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                                  stop=tuple(task.stop), seed=cfg.seed * 1_000_003 + 2 * b)
        sols = sample_solutions(policy, batch, cfg.samples_per_problem, sampling, cfg.dedup)
        yield label_solutions(policy, task, batch, sols, separator=separator, k=cfg.k,
                              sampling=sampling.replace(seed=cfg.seed * 1_000_003 + 2 * b + 1))


# ----------------------------------------------------------------------------------------------
# PRM800K
# ----------------------------------------------------------------------------------------------

def _rating_label(rating: Any, neutral: str) -> int:
    if rating not in (-1, 0, 1):
        raise ValueError(f"rating must be -1, 0 or 1, got {rating!r}")
    return 1 if rating == 1 or (rating == 0 and neutral == "positive") else 0


def prm800k_row(record: Any, neutral: str = "positive", prompt_format: str = "{problem}\n\n",
                separator: str = "\n") -> dict | None:
    """One PRM800K line as a step-labelled row; None for a problem reported broken. ValueError if malformed."""
    if not isinstance(record, dict) or not isinstance(record.get("question"), dict) \
            or not isinstance(record.get("label"), dict):
        raise ValueError("expected an object with 'question' and 'label' objects")
    q, label = record["question"], record["label"]
    if label.get("finish_reason") == "bad_problem":
        return None
    problem = q.get("problem")
    if not isinstance(problem, str):
        raise ValueError("'question.problem' must be a string")
    steps_in = label.get("steps")
    if not isinstance(steps_in, list):
        raise ValueError("'label.steps' must be a list")
    pre = q.get("pre_generated_steps") or []
    steps, hard, ratings = [], [], []
    for n, st in enumerate(steps_in):
        if not isinstance(st, dict) or not isinstance(st.get("completions"), list):
            raise ValueError(f"step {n}: expected an object with a 'completions' list")
        comps, chosen, human = st["completions"], st.get("chosen_completion"), st.get("human_completion")
        last = False
        if chosen is not None:
            if not isinstance(chosen, int) or not 0 <= chosen < len(comps):
                raise ValueError(f"step {n}: chosen_completion {chosen!r} is not an index of its completions")
            pick = comps[chosen]
        elif human is not None:  # phase 1: the labeller wrote the step; it counts as correct
            text = human.get("text") if isinstance(human, dict) else human
            pick = {"text": text, "rating": human.get("rating", 1) if isinstance(human, dict) else 1}
            if pick["rating"] is None:
                pick["rating"] = 1
        else:  # labelling stopped here: the pre-generated step (phase 2) or the first one rated wrong
            same = [c for c in comps if isinstance(c, dict) and n < len(pre) and c.get("text") == pre[n]]
            wrong = [c for c in comps if isinstance(c, dict) and c.get("rating") == -1]
            if not (same or wrong):
                break
            pick, last = (same or wrong)[0], True
        if not isinstance(pick, dict) or not isinstance(pick.get("text"), str):
            raise ValueError(f"step {n}: the completion has no 'text'")
        if pick.get("rating") is None:  # unrated (flagged) step: the trajectory's labels end before it
            break
        steps.append(pick["text"])
        ratings.append(pick["rating"])
        hard.append(_rating_label(pick["rating"], neutral))
        if last:
            break
    if not steps:
        return None
    finish = label.get("finish_reason")
    final = True if finish == "solution" else (False if finish == "found_error" and hard[-1] == 0 else None)
    return {"id": f"prm800k/{record.get('labeler', '')}/{record.get('timestamp', '')}",
            "prompt": prompt_format.format(problem=problem), "question": problem,
            "answer": q.get("ground_truth_answer"), "completion": separator.join(steps), "steps": steps,
            "separator": separator, "hard_labels": hard, "soft_labels": [float(h) for h in hard],
            "ratings": ratings, "final_correct": final, "source": "prm800k", "k": 0}


def read_prm800k(path: str | Path, neutral: str = "positive", prompt_format: str = "{problem}\n\n",
                 separator: str = "\n") -> list[dict]:
    """All labelled solutions of a PRM800K JSONL file (phase 1 or 2) as step-labelled rows.

    Problems reported broken (``bad_problem``) and solutions with no rated step are skipped; malformed
    lines raise one :class:`DataError` listing them.
    """
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"PRM800K file not found: {p}")
    rows, problems, total = [], [], 0
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            total += 1
            try:
                row = prm800k_row(json.loads(line), neutral, prompt_format, separator)
            except json.JSONDecodeError as e:
                problems.append((lineno, f"invalid JSON ({e.msg})"))
                continue
            except (ValueError, AttributeError, TypeError) as e:
                problems.append((lineno, str(e)))
                continue
            if row is not None:
                rows.append(row)
    if problems:
        raise DataError(str(p), problems, total=total)
    return rows


# ----------------------------------------------------------------------------------------------
# Reading step-labelled rows (for PRM training)
# ----------------------------------------------------------------------------------------------

def check_step_row(row: Any) -> dict:
    """Validate one step-labelled row; ValueError says what is wrong."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    for key in ("prompt", "steps"):
        if key not in row:
            raise ValueError(f"missing {key!r}")
    steps = row["steps"]
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise ValueError("'steps' must be a non-empty list of strings")
    if not isinstance(row["prompt"], (str, list)):
        raise ValueError("'prompt' must be text or chat messages")
    for key in ("hard_labels", "soft_labels"):
        labels = row.get(key)
        if labels is None:
            continue
        if not isinstance(labels, list) or len(labels) != len(steps):
            raise ValueError(f"{key!r} must be a list with one label per step ({len(steps)})")
        for x in labels:
            if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x <= 1):
                raise ValueError(f"{key!r} holds {x!r}; labels are numbers in [0, 1] or null")
    if row.get("hard_labels") is None and row.get("soft_labels") is None:
        raise ValueError("no 'hard_labels' or 'soft_labels'")
    return row


def load_step_rows(path: str | Path) -> list[dict]:
    """Read a step-labelled JSONL file; every malformed line is reported in one :class:`DataError`."""
    from reasonlab.tasks.io import read_jsonl

    return [row for _, row in read_jsonl(path, parse=check_step_row)]


def summarize(rows: Sequence[dict]) -> dict[str, Any]:
    """Counts a labelling run reports: rows, steps, positive step fraction, solution accuracy."""
    hard = [h for r in rows for h in r["hard_labels"] if h is not None]
    finals = [r["final_correct"] for r in rows if r.get("final_correct") is not None]
    return {"rows": len(rows), "steps": sum(len(r["steps"]) for r in rows), "labelled_steps": len(hard),
            "positive_steps": sum(hard) / len(hard) if hard else None,
            "solution_accuracy": sum(finals) / len(finals) if finals else None}


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def _append(path: Path, rows: Sequence[dict]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        f.flush()


def run(cfg: LabelConfig) -> dict[str, Any]:
    """Label as ``cfg`` says and append to ``cfg.out``; returns the summary of what this call wrote."""
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if cfg.prm800k:
        rows = read_prm800k(cfg.prm800k, cfg.neutral, unescape(cfg.prompt_format),
                            "\n" if cfg.separator == "auto" else unescape(cfg.separator))
        out.write_text("")
        _append(out, rows)
        return {**summarize(rows), "out": str(out), "wall_time_s": round(time.time() - t0, 1)}

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from reasonlab.policies import hf_options, load_policy
    from reasonlab.tasks import load_task

    task = load_task(cfg.task)
    if cfg.strict_labels:
        task.use_strict_verifier()
    examples = task.examples(cfg.split, cfg.offset + cfg.problems)[cfg.offset:]
    done = set()
    if out.exists():  # resume: problems already labelled are skipped
        done = {r["id"] for r in load_step_rows(out)} if out.stat().st_size else set()
    todo = [e for e in examples if e.id not in done]
    if done:
        print(f"{out}: {len(examples) - len(todo)} of {len(examples)} problems already labelled; continuing",
              file=sys.stderr)
    if cfg.threads > 0:
        import torch

        torch.set_num_threads(cfg.threads)
    options = hf_options(cfg.device) if cfg.backend in ("auto", "hf") else {}
    policy = load_policy(cfg.model, backend=cfg.backend, **options)
    written: list[dict] = []
    progress = Progress(TextColumn("[bold]label"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with progress:
            bar = progress.add_task("", total=len(todo))
            for rows in label_task(policy, task, todo, cfg):
                _append(out, rows)  # a batch at a time: an interrupted run keeps what it labelled
                written += rows
                progress.update(bar, advance=len({r["id"] for r in rows}) or cfg.batch_problems)
    finally:
        policy.close()
        task.close()
    return {**summarize(written), "out": str(out), "problems": len(todo), "wall_time_s": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    """``reasonlab label``: write step-labelled JSONL (Math-Shepherd rollouts, or converted PRM800K)."""
    try:
        cfg = config_lib.parse(LabelConfig, argv, prog="reasonlab label")
        summary = run(cfg)
    except UsageError as e:
        print_error(e)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue where it stopped", file=sys.stderr)
        return 130
    pos = summary["positive_steps"]
    acc = summary["solution_accuracy"]
    print(f"wrote {summary['rows']} solutions, {summary['steps']} steps to {summary['out']}"
          f" ({'n/a' if pos is None else f'{pos:.1%}'} of labelled steps positive, solution accuracy "
          f"{'n/a' if acc is None else f'{acc:.1%}'}) in {summary['wall_time_s']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
