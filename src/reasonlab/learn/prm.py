"""Process reward model (PRM) training: binary cross-entropy at every step separator.

A PRM (Lightman et al. 2023, "Let's Verify Step by Step"; Wang et al. 2024, "Math-Shepherd") is a
causal LM with a scalar head (``rewards/reward_model.py``) read at the last token of the separator
after each step; it learns ``P(the solution is still correct after step i)``:

    L = -(1/N) * sum_{steps i} [ y_i log sigmoid(z_i) + (1 - y_i) log(1 - sigmoid(z_i)) ]

over the ``N`` labelled steps of the accumulated batch. The labels ``y_i`` come from
``reasonlab label`` (``rewards/labels.py``): Math-Shepherd's **hard** labels (1 if any rollout from
the step reaches the gold answer) or **soft** labels (the fraction that does; BCE takes them as
targets in [0, 1]), or PRM800K's human ratings. Steps with no label (``null``) are not trained on.

The loop, checkpoints, held-out AUROC and Ctrl-C are the ORM's (:func:`reasonlab.learn.orm.fit`);
only the data differs. The trained PRM plugs into search as ``ProcessScorer(prm, "min")`` (or
``PRMScorer``) and into RL as ``RewardModelReward(prm, "min")`` (outcome) or ``PRMStepReward(prm)`` (per step).

Run::

    reasonlab label --task arith --model tiny --out steps.jsonl --problems 256
    reasonlab train prm --model tiny --data steps.jsonl --out runs/prm --labels soft
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reasonlab.errors import UsageError
from reasonlab.learn.orm import RewardTrainConfig, fit
from reasonlab.learn.orm import main as _main

LABELS = ("hard", "soft")


@dataclass(frozen=True)
class PRMConfig(RewardTrainConfig):
    """Train a process reward model on step-labelled JSONL (from `reasonlab label`)."""

    out: str = "runs/prm"
    """Run directory: config, metrics, checkpoints, final reward model (out/final), summary."""
    data: str = ""
    """Step-labelled JSONL: {"prompt", "steps", "hard_labels", "soft_labels", ...} rows (`reasonlab label` writes them)."""
    labels: str = "hard"
    """Which labels to train on: hard (any rollout reaches the answer) or soft (the fraction that does)."""
    separator: str = "auto"
    """Step separator the PRM reads at: auto (the one the rows were labelled with) or a string (escapes like \\n work)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.labels not in LABELS:
            raise ValueError(f"labels must be one of {', '.join(LABELS)}, got {self.labels!r}")


def rows_separator(rows: list[dict], setting: str) -> str:
    """The separator to train with: the setting, or (auto) the one every row was labelled with."""
    from reasonlab.rewards.reward_model import unescape

    if setting != "auto":
        sep = unescape(setting)
        if not sep:
            raise UsageError("the step separator may not be empty")
        return sep
    found = {r.get("separator") for r in rows} - {None}
    if len(found) > 1:
        raise UsageError(f"the rows were labelled with different separators {sorted(found)!r}; choose one with --separator")
    return found.pop() if found else "\n\n"


def step_encoder(separator: str, labels: str) -> Callable[[Any, dict], dict | None]:
    """Row -> item: the PRM input and the labelled steps' read positions and targets."""
    from reasonlab.rewards.reward_model import encode_steps

    key = f"{labels}_labels"

    def encode(tokenizer, row: dict) -> dict | None:
        ys = row.get(key)
        if ys is None:
            raise UsageError(f"row {row.get('id', '?')} has no {key!r}; train on the other labels (--labels)")
        e = encode_steps(tokenizer, row["prompt"], row["steps"], separator)
        kept = [(p, float(y)) for p, y in zip(e.positions, ys) if y is not None]
        if not kept:
            return None
        return {"ids": e.ids, "pos": [p for p, _ in kept], "y": [y for _, y in kept], "start": e.start}

    return encode


def train(cfg: PRMConfig, rows: list[dict] | None = None, *, model=None, tokenizer=None,
          on_step: Callable[[int, dict, Any], None] | None = None) -> dict:
    """Train a PRM on ``rows`` (or the step-labelled JSONL ``cfg.data``); returns the summary."""
    from reasonlab.rewards.labels import check_step_row, load_step_rows, summarize
    from reasonlab.runtime import RunDir

    run = RunDir(cfg.out, config=cfg, resume=cfg.resume)
    if rows is not None:
        rows = [check_step_row(r) for r in rows]
    elif cfg.data:
        rows = load_step_rows(cfg.data)
    else:
        raise UsageError("no training data: pass --data steps.jsonl (written by `reasonlab label`)")
    separator = rows_separator(rows, cfg.separator)
    stats = summarize(rows) if all("hard_labels" in r for r in rows) else {"rows": len(rows)}
    info = {"data": cfg.data or "<rows>", "labels": cfg.labels, **stats}
    return fit(cfg, run, rows, kind="prm", separator=separator, encode_row=step_encoder(separator, cfg.labels),
               model=model, tokenizer=tokenizer, info=info, on_step=on_step)


def main(argv: list[str] | None = None) -> int:
    """``reasonlab train prm``: parse flags (and --config YAML), train, print the summary."""
    return _main(argv, config_cls=PRMConfig, prog="reasonlab train prm", train_fn=train)


if __name__ == "__main__":
    sys.exit(main())
