"""Outcome reward model (ORM) training, and the BCE loop that PRM training shares.

An ORM (Cobbe et al. 2021, "Training Verifiers to Solve Math Word Problems") is a causal LM with a
scalar head (``rewards/reward_model.py``) trained to predict whether a solution is correct:

    L = -(1/N) * sum_i [ y_i log sigmoid(z_i) + (1 - y_i) log(1 - sigmoid(z_i)) ]

with ``z_i`` the head's logit at the solution's last token and ``y_i`` the task verifier's verdict on
the policy's own samples (``N`` labels in the accumulated batch). A PRM (``learn/prm.py``) is the
same loss at every step separator, so :func:`fit` below serves both: it sees only token ids, the
positions to read and their targets.

``objective="implicit"`` trains the implicit-reward parametrisation instead (PRIME, Cui et al. 2025;
``rewards/implicit_prm.py``): no head; the logit is ``z = beta * sum_t log(pi(y_t) / pi_ref(y_t))``
over the completion's tokens, ``pi_ref`` a frozen copy of the starting model. The result is an
implicit PRM whose per-token log-ratios are process rewards.

Data: ``--data rows.jsonl`` with ``{"prompt", "completion", "label"}`` rows (label 1/0 or true/false),
or, without it, ``samples_per_problem`` samples of the policy on ``problems`` training problems of
``--task``, labelled by its verifier (a verifier timeout or error drops the sample: it is no label).
The sampled rows are kept in the run directory (``samples.jsonl``), so a resumed run trains on the
same data. A slice of the problems (``eval_fraction``, split by problem) is held out for loss and
AUROC. Checkpoints resume exactly and Ctrl-C saves first, as in ``learn/sft.py``.

Run::

    reasonlab train orm --model tiny --task arith --out runs/orm --problems 256 --samples-per-problem 8
    reasonlab train orm --data rows.jsonl --model smollm2 --lora
    reasonlab train orm --model tiny --task arith --objective implicit --beta 0.05   # implicit PRM
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reasonlab import config as config_lib
from reasonlab.errors import UsageError, print_error
from reasonlab.learn.sft import (
    TrainLoopConfig,
    adamw,
    add_lora,
    epoch_permutation,
    load_model,
    lr_multiplier,
)

OBJECTIVES = ("head", "implicit")


@dataclass(frozen=True)
class RewardTrainConfig(TrainLoopConfig):
    """Settings every reward-model trainer shares: SFT's loop settings, the value head and held-out evaluation."""

    model: str = "tiny"
    """Backbone to start from: a built-in name ("tiny", "smollm2") or a local Hugging Face checkpoint directory."""
    out: str = "runs/rm"
    """Run directory: config, metrics, checkpoints, final reward model (out/final), summary."""
    lr: float = 1e-4
    """Peak learning rate of AdamW for the backbone."""
    max_seq_len: int = 512
    """Longest prompt+solution in tokens (at most the backbone's position range); longer rows are dropped and counted."""
    save_final: bool = True
    """Save the trained reward model to out/final."""
    head_lr_scale: float = 10.0
    """The fresh value head learns at lr times this."""
    freeze_backbone: bool = False
    """Train only the value head (a linear probe of the backbone's features)."""
    eval_fraction: float = 0.1
    """Fraction of problems held out for evaluation (split by problem, so no problem is in both)."""
    eval_every: int = 50
    """Evaluate held-out loss and AUROC every this many steps (and at the end); 0: only at the end."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.lora and self.freeze_backbone:
            raise ValueError("choose lora or freeze_backbone, not both")


@dataclass(frozen=True)
class ORMConfig(RewardTrainConfig):
    """Train an outcome reward model (or, with --objective implicit, an implicit PRM) on verifier-labelled samples."""

    out: str = "runs/orm"
    """Run directory: config, samples, metrics, checkpoints, final reward model (out/final), summary."""
    data: str = ""
    """JSONL rows {"prompt", "completion", "label"} to train on; empty: sample them from the policy on --task."""
    task: str = "arith"
    """Task whose training problems are sampled and whose verifier labels the samples."""
    split: str = "train"
    """Task split the problems come from."""
    problems: int = 256
    """Training problems to sample."""
    samples_per_problem: int = 8
    """Policy samples per problem."""
    strict_labels: bool = True
    """Label the samples with the task's strict verifier where it has one, as RL rewards are judged: a hedged or
    ambiguous answer is labelled wrong, so the reward model does not learn to accept hedges."""
    sampler: str = ""
    """Policy that writes the samples (default: --model itself)."""
    backend: str = "auto"
    """Backend of the sampling policy: auto, hf, llamacpp, openai."""
    temperature: float = 0.8
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    max_new_tokens: int = 256
    """Longest sample, in tokens."""
    objective: str = "head"
    """head: a value head read at the last token (an ORM); implicit: beta * log-ratio against the starting model (an implicit PRM)."""
    beta: float = 0.05
    """Implicit objective: the scale of the log-ratio reward (PRIME uses 0.05)."""
    separator: str = "auto"
    """Implicit objective: step separator the implicit PRM splits solutions at (auto: newline for arith, else a blank line)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.objective == "implicit" and self.freeze_backbone:
            raise ValueError("the implicit objective trains the LM itself; it cannot freeze the backbone")
        if self.problems < 1 or self.samples_per_problem < 1:
            raise ValueError("problems and samples_per_problem must be >= 1")


# ----------------------------------------------------------------------------------------------
# Pure pieces: loss, batches, split
# ----------------------------------------------------------------------------------------------

def bce_sum(logits, targets):
    """Summed binary cross-entropy of logits against (hard or soft) targets in [0, 1]: ``(N,), (N,) -> ()``."""
    import torch.nn.functional as F

    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="sum")


def collate(items: list[dict], pad_id: int) -> dict:
    """Right-pad items ``{"ids", "pos", "y", "start"}`` into tensors.

    ``input_ids``/``attention_mask`` (B, T); ``label_mask`` (B, T) true at read positions with
    ``targets`` (B, T) there; ``completion_mask`` (B, T) 1.0 on completion tokens (t >= start);
    ``y`` (B,) the first target of each row (the outcome label of the implicit objective).
    """
    import torch

    from reasonlab.rewards.reward_model import pad_batch

    input_ids, mask = pad_batch([it["ids"] for it in items], pad_id)
    targets = torch.zeros(input_ids.shape, dtype=torch.float32)
    label_mask = torch.zeros(input_ids.shape, dtype=torch.bool)
    comp = torch.zeros(input_ids.shape, dtype=torch.float32)
    for i, it in enumerate(items):
        for p, y in zip(it["pos"], it["y"]):
            targets[i, p], label_mask[i, p] = float(y), True
        comp[i, max(it["start"], 1):len(it["ids"])] = 1.0
    return {"input_ids": input_ids, "attention_mask": mask, "targets": targets, "label_mask": label_mask,
            "completion_mask": comp, "y": torch.tensor([float(it["y"][0]) for it in items])}


def held_out(key: str, fraction: float, seed: int) -> bool:
    """Whether a problem (by its key) is in the held-out slice: a stable hash, the same on every resume."""
    return (zlib.crc32(f"{seed}/{key}".encode()) % 10_000) < fraction * 10_000


def group_key(row: dict) -> str:
    return str(row.get("id") or json.dumps(row.get("prompt"), sort_keys=True))


# ----------------------------------------------------------------------------------------------
# Objectives: batch -> (logits, targets)
# ----------------------------------------------------------------------------------------------

def head_logits(rm, batch: dict):
    """Value-head logits at the labelled positions and their targets: ``(N,), (N,)``."""
    z = rm(batch["input_ids"], batch["attention_mask"])
    return z[batch["label_mask"]], batch["targets"][batch["label_mask"]]


def implicit_logits(lm, ref, beta: float, batch: dict):
    """PRIME's outcome logit ``beta * sum_t log(pi(y_t) / pi_ref(y_t))`` per row and its label: ``(B,), (B,)``."""
    import torch

    from reasonlab.rewards.implicit_prm import (
        implicit_outcome_logit,
        implicit_token_rewards,
        token_logprobs,
    )

    logp = token_logprobs(lm, batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():
        ref_logp = token_logprobs(ref, batch["input_ids"], batch["attention_mask"])
    r = implicit_token_rewards(logp, ref_logp, beta)
    return implicit_outcome_logit(r, batch["completion_mask"]), batch["y"]


# ----------------------------------------------------------------------------------------------
# The shared training loop
# ----------------------------------------------------------------------------------------------

def fit(cfg: RewardTrainConfig, run, rows: list[dict], *, kind: str, separator: str,
        encode_row: Callable[[Any, dict], dict | None], model=None, tokenizer=None, beta: float = 0.0,
        info: dict | None = None, on_step: Callable[[int, dict, Any], None] | None = None) -> dict:
    """Train a reward model of ``kind`` (orm, prm: value head; implicit-prm: log-ratio) on ``rows``.

    ``encode_row(tokenizer, row)`` turns a row into ``{"ids", "pos", "y", "start"}`` (None: drop it).
    Rows are split into train / held-out by problem. Returns the summary (also ``summary.json``);
    the trained model is saved to ``out/final``.
    """
    import numpy as np
    import torch
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from reasonlab.rewards.reward_model import RewardModel, RewardModelCard, auroc
    from reasonlab.runtime import (
        MetricsLogger,
        latest_checkpoint,
        load_checkpoint,
        save_checkpoint,
    )
    from reasonlab.runtime.interrupt import StopOnCtrlC

    t_start = time.time()
    from reasonlab.policies.hf import pick_device, pick_dtype

    device = pick_device(cfg.device)
    amp_dtype = pick_dtype(cfg.dtype, device)
    weights_dtype = amp_dtype if cfg.lora else torch.float32
    if model is None:
        model, tokenizer = load_model(cfg.model, weights_dtype)
    elif tokenizer is None:
        raise UsageError("fit(model=...) needs its tokenizer too")
    model = model.to(dtype=weights_dtype)
    # Inputs beyond the backbone's position range would be read out of distribution: cap there too.
    max_pos = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    limit = min(cfg.max_seq_len, max_pos) if max_pos else cfg.max_seq_len

    items, dropped = [], 0
    for row in rows:
        it = encode_row(tokenizer, row)
        if it is None or len(it["ids"]) > limit or not it["y"]:
            dropped += 1
            continue
        it["eval"] = held_out(group_key(row), cfg.eval_fraction, cfg.seed)
        items.append(it)
    train_items = [it for it in items if not it["eval"]]
    eval_items = [it for it in items if it["eval"]]
    if not train_items:
        raise UsageError(f"no training rows left of {len(rows)} ({dropped} dropped: no labels, or longer than "
                         f"{limit} tokens)")
    if dropped:
        print(f"dropped {dropped} of {len(rows)} rows (no labels, or longer than {limit} tokens)", file=sys.stderr)
    ys = [y for it in train_items for y in it["y"]]
    if min(ys) >= 0.5 or max(ys) < 0.5:
        print(f"warning: every training label is {'positive' if min(ys) >= 0.5 else 'negative'}; "
              "the reward model cannot learn to tell right from wrong", file=sys.stderr)

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    card = RewardModelCard(kind=kind, separator=separator, base_model=cfg.model, max_length=limit, beta=beta,
                           info=dict(info or {}))
    ref = None
    if kind == "implicit-prm":
        # The reference is the starting model, frozen; the card names it so the PRM can reload it.
        ref = copy.deepcopy(model).to(device).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        ref_name = str(Path(cfg.model).resolve()) if Path(cfg.model).is_dir() else cfg.model
        card = dataclasses.replace(card, reference=ref_name)
    if cfg.lora:
        model = add_lora(model, cfg)
    elif cfg.freeze_backbone:
        for p in model.parameters():
            p.requires_grad_(False)
    model.to(device)

    if kind == "implicit-prm":
        trainable, modules, head_params = model, {}, []
        logits_fn = lambda b: implicit_logits(model, ref, beta, b)
        rm = None
    else:
        rm = RewardModel(model, tokenizer, card).to(device)
        trainable, modules, head_params = model, {"value_head": rm.head}, list(rm.head.parameters())
        logits_fn = lambda b: head_logits(rm, b)
    body = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in body if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in body if p.ndim < 2], "weight_decay": 0.0}]
    if head_params:
        groups.append({"params": head_params, "weight_decay": 0.0, "lr": cfg.lr * cfg.head_lr_scale})
    groups = [g for g in groups if g["params"]]
    params = [p for g in groups for p in g["params"]]
    optimizer = adamw(groups, cfg.lr)
    n = len(train_items)
    chunk = cfg.batch_size * cfg.grad_accum
    total_steps = cfg.max_steps or cfg.epochs * math.ceil(n / chunk)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg.lr_schedule, cfg.warmup_steps, total_steps))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    step, epoch, index = 0, 0, 0
    extra: dict[str, Any] = {"wall_time_s": 0.0, "first_loss": None, "final_loss": None, "win_sum": 0.0,
                             "win_count": 0, "eval": None, "labels": 0}
    ckpt = latest_checkpoint(run.path) if cfg.resume else None
    if ckpt is not None:
        step, data_state, saved = load_checkpoint(ckpt, model=trainable, optimizer=optimizer, scheduler=scheduler,
                                                  modules=modules)
        epoch, index = data_state["epoch"], data_state["index"]
        extra.update(saved)
        if data_state.get("num_examples") != n:
            print(f"warning: the checkpoint was trained on {data_state.get('num_examples')} rows, now there are {n}",
                  file=sys.stderr)
        print(f"resuming from {ckpt} (step {step} of {total_steps})", file=sys.stderr)
    metrics = MetricsLogger(run, resume_step=step)
    wall_before = extra["wall_time_s"]
    autocast = torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32)

    def to_dev(b: dict) -> dict:
        return {k: v.to(device) for k, v in b.items()}

    def evaluate() -> dict | None:
        if not eval_items:
            return None
        trainable.eval()
        zs, ts = [], []
        with torch.no_grad(), autocast:
            for s in range(0, len(eval_items), cfg.batch_size):
                z, t = logits_fn(to_dev(collate(eval_items[s:s + cfg.batch_size], pad_id)))
                zs.append(z.float().cpu())
                ts.append(t.float().cpu())
        trainable.train()
        z, t = torch.cat(zs), torch.cat(ts)
        return {"eval_loss": float(bce_sum(z, t)) / len(t), "eval_auroc": auroc(z.tolist(), (t >= 0.5).tolist()),
                "eval_accuracy": float(((z > 0) == (t >= 0.5)).float().mean())}

    def checkpoint() -> None:
        extra["wall_time_s"] = wall_before + time.time() - t_start
        save_checkpoint(run.path, step, model=trainable, optimizer=optimizer, scheduler=scheduler, modules=modules,
                        data_state={"epoch": epoch, "index": index, "num_examples": n}, extra=extra,
                        keep_last=cfg.keep_last)

    trainable.train()
    perm, perm_epoch, saved_at = None, -1, step
    progress = Progress(TextColumn(f"[bold]{kind}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.description}"), TimeRemainingColumn())
    bar = progress.add_task("", total=total_steps, completed=step)
    try:
        with StopOnCtrlC() as stop, progress:
            while step < total_steps:
                if index >= n:
                    epoch, index = epoch + 1, 0
                if perm_epoch != epoch:
                    perm, perm_epoch = epoch_permutation(n, cfg.seed, epoch), epoch
                ids = perm[index:index + chunk]
                # Normalise by the labels of the whole accumulated batch (as SFT does with tokens), so
                # batch 4 x accum 2 is the same update as batch 8.
                n_labels = sum(len(train_items[j]["y"]) for j in ids)
                loss_sum = 0.0
                for i in range(0, len(ids), cfg.batch_size):
                    b = to_dev(collate([train_items[j] for j in ids[i:i + cfg.batch_size]], pad_id))
                    with autocast:
                        z, t = logits_fn(b)
                    loss = bce_sum(z, t)
                    (loss / n_labels).backward()
                    loss_sum += loss.item()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                index += len(ids)
                loss = loss_sum / n_labels
                extra["labels"] += n_labels
                extra["win_sum"] += loss_sum
                extra["win_count"] += n_labels
                if extra["first_loss"] is None:
                    extra["first_loss"] = loss
                progress.update(bar, completed=step, description=f"loss {loss:.4f}")
                record: dict[str, Any] = {}
                if step % cfg.log_every == 0 or step == total_steps:
                    record.update(loss=extra["win_sum"] / extra["win_count"], lr=lr, grad_norm=float(grad_norm),
                                  epoch=epoch + index / n)
                    extra.update(final_loss=record["loss"], win_sum=0.0, win_count=0)
                if (cfg.eval_every and step % cfg.eval_every == 0) or step == total_steps:
                    ev = evaluate()
                    if ev is not None:
                        record.update(ev)
                        extra["eval"] = ev
                if record:
                    metrics.log(step, record)
                if on_step is not None:
                    on_step(step, {"loss": loss, "lr": lr, "grad_norm": float(grad_norm)}, rm if rm is not None else model)
                if cfg.save_every and step % cfg.save_every == 0:
                    checkpoint()
                    saved_at = step
                if stop.requested and step < total_steps:
                    if saved_at != step:
                        checkpoint()
                    raise KeyboardInterrupt
            if saved_at != step:
                checkpoint()
    except KeyboardInterrupt:
        run.write_json("summary.json", _summary(cfg, run, kind, step, total_steps, train_items, eval_items, dropped,
                                                extra, wall_before, t_start, None, interrupted=True))
        raise
    finally:
        metrics.close()

    final_dir = None
    if cfg.save_final:
        final_dir = run / "final"
        out_model = model.merge_and_unload() if cfg.lora else model
        card = dataclasses.replace(card, info={**card.info, "run": str(run.path), "steps": step, "eval": extra["eval"]})
        if kind == "implicit-prm":
            from reasonlab.rewards.implicit_prm import ImplicitPRM

            ImplicitPRM(out_model, ref, tokenizer, card).save(final_dir)
        else:
            rm.card = card
            rm.save(final_dir, backbone=out_model)
    summary = _summary(cfg, run, kind, step, total_steps, train_items, eval_items, dropped, extra, wall_before,
                       t_start, final_dir)
    run.write_json("summary.json", summary)
    return summary


def _summary(cfg, run, kind, step, total_steps, train_items, eval_items, dropped, extra, wall_before, t_start,
             final_dir, interrupted: bool = False) -> dict:
    return {"out": str(run.path), "final_dir": str(final_dir) if final_dir else None, "kind": kind,
            "model": cfg.model, "steps": step, "total_steps": total_steps, "train_rows": len(train_items),
            "eval_rows": len(eval_items), "dropped_rows": dropped, "labels_seen": extra["labels"],
            "first_loss": extra["first_loss"], "final_loss": extra["final_loss"], "eval": extra["eval"],
            "wall_time_s": round(wall_before + time.time() - t_start, 3), "interrupted": interrupted}


# ----------------------------------------------------------------------------------------------
# ORM data: verifier-labelled policy samples, or a JSONL file
# ----------------------------------------------------------------------------------------------

def check_outcome_row(row: Any) -> dict:
    """One ``{"prompt", "completion", "label"}`` row, label as 0.0/1.0 (or a soft value in [0, 1])."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    for key in ("prompt", "completion", "label"):
        if key not in row:
            raise ValueError(f"missing {key!r}")
    if not isinstance(row["prompt"], (str, list)):
        raise ValueError("'prompt' must be text or chat messages")
    if not isinstance(row["completion"], str):
        raise ValueError("'completion' must be a string")
    y = row["label"]
    if isinstance(y, bool):
        y = float(y)
    if not isinstance(y, (int, float)) or not 0 <= y <= 1:
        raise ValueError(f"'label' must be 0/1, true/false or a number in [0, 1], got {y!r}")
    return {**row, "label": float(y)}


def load_outcome_rows(path: str | Path) -> list[dict]:
    """Read ORM rows from JSONL; every malformed line is reported in one :class:`DataError`."""
    from reasonlab.tasks.io import read_jsonl

    return [row for _, row in read_jsonl(path, parse=check_outcome_row)]


def sample_outcome_rows(cfg: ORMConfig, batch_problems: int = 32) -> list[dict]:
    """``samples_per_problem`` policy samples on ``problems`` problems of ``task``, labelled by its verifier."""
    from reasonlab.policies import hf_options, load_policy
    from reasonlab.tasks import load_task
    from reasonlab.types import SamplingParams, Status

    task = load_task(cfg.task)
    if cfg.strict_labels:
        task.use_strict_verifier()
    examples = task.examples(cfg.split, cfg.problems)
    options = hf_options(cfg.device) if cfg.backend in ("auto", "hf") else {}
    policy = load_policy(cfg.sampler or cfg.model, backend=cfg.backend, **options)
    rows, failed = [], 0
    try:
        for b, s in enumerate(range(0, len(examples), batch_problems)):
            batch = examples[s:s + batch_problems]
            sampling = SamplingParams(n=cfg.samples_per_problem, temperature=cfg.temperature, top_p=cfg.top_p,
                                      max_new_tokens=cfg.max_new_tokens, stop=tuple(task.stop),
                                      seed=cfg.seed * 1_000_003 + b)
            comps = policy.generate([e.prompt for e in batch], sampling)
            exs = [batch[c.prompt_index] for c in comps]
            for e, c, r in zip(exs, comps, task.score_many(exs, [c.text for c in comps])):
                if r.status in (Status.TIMEOUT, Status.ERROR):  # no verdict is no label, never a 0
                    failed += 1
                    continue
                rows.append({"id": e.id, "prompt": e.prompt, "completion": c.text, "label": float(r.correct)})
    finally:
        policy.close()
        task.close()
    if failed:
        print(f"dropped {failed} samples the verifier could not judge (timeout or error)", file=sys.stderr)
    if not rows:
        raise UsageError(f"no labelled samples from {cfg.task}")
    return rows


def outcome_encoder(kind: str) -> Callable[[Any, dict], dict]:
    """Row -> item for the ORM (read at the last token) or the implicit objective (all completion tokens)."""
    from reasonlab.rewards.reward_model import encode_outcome

    def encode(tokenizer, row: dict) -> dict:
        e = encode_outcome(tokenizer, row["prompt"], row["completion"])
        return {"ids": e.ids, "pos": e.positions, "y": [row["label"]], "start": e.start}

    return encode


def train(cfg: ORMConfig, rows: list[dict] | None = None, *, model=None, tokenizer=None,
          on_step: Callable[[int, dict, Any], None] | None = None) -> dict:
    """Train an ORM (or implicit PRM) as ``cfg`` says, on ``rows`` / ``cfg.data`` / fresh samples; returns the summary."""
    from reasonlab.rewards.labels import resolve_separator
    from reasonlab.runtime import RunDir

    run = RunDir(cfg.out, config=cfg, resume=cfg.resume)
    if rows is not None:
        rows = [check_outcome_row(r) for r in rows]
    elif cfg.data:
        rows = load_outcome_rows(cfg.data)
    elif cfg.resume and (run / "samples.jsonl").exists():
        rows = run.read_jsonl("samples.jsonl")  # the same data as before the interruption
    else:
        rows = sample_outcome_rows(cfg)
        run.rewrite_jsonl("samples.jsonl", rows)
    kind = "orm" if cfg.objective == "head" else "implicit-prm"
    separator = resolve_separator(cfg.separator, cfg.task) if kind == "implicit-prm" else ""
    pos = sum(r["label"] >= 0.5 for r in rows)
    info = {"data": cfg.data or f"{cfg.task} samples of {cfg.sampler or cfg.model}", "rows": len(rows),
            "positive_rows": pos, "objective": cfg.objective}
    return fit(cfg, run, rows, kind=kind, separator=separator, encode_row=outcome_encoder(kind), model=model,
               tokenizer=tokenizer, beta=cfg.beta if kind == "implicit-prm" else 0.0, info=info, on_step=on_step)


def main(argv: list[str] | None = None, config_cls: type = ORMConfig, prog: str = "reasonlab train orm",
         train_fn: Callable[..., dict] | None = None) -> int:
    """``reasonlab train orm``: parse flags (and --config YAML), train, print the summary."""
    try:
        cfg = config_lib.parse(config_cls, argv, prog=prog)
        summary = (train_fn or train)(cfg)
    except UsageError as e:
        print_error(e)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume from the latest checkpoint", file=sys.stderr)
        return 130
    ev = summary["eval"] or {}
    held = f", held-out AUROC {ev['eval_auroc']:.3f}" if ev.get("eval_auroc") is not None else ""
    print(f"done: {summary['kind']}, {summary['steps']} steps, loss {summary['first_loss']:.4f} -> "
          f"{summary['final_loss']:.4f}{held}, {summary['wall_time_s']:.1f}s; model in "
          f"{summary['final_dir'] or summary['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
