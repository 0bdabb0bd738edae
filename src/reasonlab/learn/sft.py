"""Supervised fine-tuning (SFT): teach a causal LM to write the completion that follows a prompt.

Objective: minimise the cross-entropy of completion tokens given the prompt,
``L = -(1/N) * sum_{completion tokens t} log p(y_t | prompt, y_<t)``, with ``N`` the number of
completion tokens in the (accumulated) batch; prompt tokens are masked (``learn/data.py``). Full
fine-tuning or LoRA (peft), AdamW, warmup + cosine/linear/constant schedule, gradient clipping,
gradient accumulation, checkpoints that resume exactly, and Ctrl-C that saves before it stops.

The loop is written out in :func:`train` (no framework Trainer), so every step can be read here.

Run::

    reasonlab train sft --model tiny --data rows.jsonl --out runs/sft --max-steps 200
    reasonlab train sft --config sft.yaml --lora          # flags override the YAML
    python -m reasonlab.learn.sft --help

The run directory gets ``config.yaml``, ``metrics.jsonl`` (+ ``tensorboard/``), ``checkpoints/``,
``final/`` (a normal Hugging Face checkpoint with the tokenizer; LoRA weights merged in) and
``summary.json``. Running the same command again resumes from the latest checkpoint. Resume is
bit-exact on CPU; on GPU some CUDA kernels are not deterministic, so it is exact only up to them.
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from reasonlab import config as config_lib
from reasonlab.errors import UsageError, print_error


@dataclass(frozen=True)
class TrainLoopConfig:
    """Settings every supervised training loop shares (SFT, reward models): model, optimisation, LoRA, checkpoints."""

    model: str = "tiny"
    """Model to start from: a built-in name ("tiny", "smollm2") or a local Hugging Face checkpoint directory."""
    out: str = "runs/train"
    """Run directory: config, metrics, checkpoints, final model, summary."""
    epochs: int = 1
    """Passes over the data (used when max_steps is 0)."""
    max_steps: int = 0
    """Optimizer steps to run; 0 means as many as `epochs` passes take."""
    batch_size: int = 16
    """Rows per micro-batch (one forward/backward)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; the effective batch is batch_size * grad_accum rows."""
    lr: float = 3e-4
    """Peak learning rate of AdamW."""
    lr_schedule: str = "cosine"
    """Learning-rate decay after warmup: cosine, linear, wsd (the peak for 80% of the steps, then linear; all three
    reach 0 at the last step) or constant."""
    warmup_steps: int = 0
    """Optimizer steps of linear warmup from 0 to lr."""
    weight_decay: float = 0.0
    """AdamW weight decay, applied to matrices only (not to biases and norm weights)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping (the norm is still logged)."""
    max_seq_len: int = 512
    """Longest row in tokens."""
    lora: bool = False
    """Train LoRA adapters (peft) instead of all weights; the final model has them merged in."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA branch."""
    lora_targets: str = "all-linear"
    """Modules that get adapters: "all-linear" or comma-separated module names (e.g. q_proj,v_proj)."""
    save_every: int = 100
    """Save a checkpoint every this many optimizer steps (0: only at the end and on Ctrl-C)."""
    keep_last: int = 2
    """Checkpoints kept on disk (older ones are deleted; 0 keeps all)."""
    log_every: int = 10
    """Log metrics every this many optimizer steps; the logged loss is the mean over those steps."""
    seed: int = 0
    """Seed of the data order (a function of seed and epoch), LoRA init and any dropout."""
    device: str = "auto"
    """Device to train on: auto (cuda if available, else cpu), cpu, cuda, cuda:1, ..."""
    dtype: str = "auto"
    """Compute dtype (autocast): auto (bfloat16 on cuda, float32 on cpu), float32, bfloat16, float16.
    Trained weights stay float32; LoRA base weights are stored in this dtype."""
    resume: bool = True
    """Resume from the latest checkpoint in `out`; with --no-resume an existing run directory is refused."""
    save_final: bool = True
    """Save the final model (with the tokenizer) to out/final."""

    def __post_init__(self) -> None:
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {self.lr_schedule!r}")
        if self.dtype not in DTYPES and self.dtype != "auto":
            raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for name in ("batch_size", "grad_accum", "max_seq_len", "log_every", "lora_r"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("epochs", "max_steps", "warmup_steps", "save_every", "keep_last", "weight_decay", "max_grad_norm",
                     "lora_dropout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.epochs == 0 and self.max_steps == 0:
            raise ValueError("set epochs or max_steps")


@dataclass(frozen=True)
class SFTConfig(TrainLoopConfig):
    """Supervised fine-tuning on prompt/completion rows (loss on completion tokens only)."""

    model: str = "tiny"
    """Model to fine-tune: a built-in name ("tiny", "smollm2") or a local Hugging Face checkpoint directory."""
    out: str = "runs/sft"
    """Run directory: config, metrics, checkpoints, final model, summary."""
    max_seq_len: int = 512
    """Longest prompt+completion in tokens; longer rows lose the end of the completion."""
    save_final: bool = True
    """Save the final model (with the tokenizer) to out/final as a Hugging Face checkpoint."""
    data: str = ""
    """JSONL training rows: {"prompt": text or messages, "completion": text} or {"messages": [...]}."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% slower."""


# -- learning-rate schedules: multipliers of the peak lr, by fraction of the decay phase done ---------

WSD_DECAY = 0.2  # the share of the run that "wsd" spends decaying

SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda progress: 1.0,
    "linear": lambda progress: 1.0 - progress,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
    # Warmup-stable-decay (MiniCPM's WSD): the peak rate for the first 80%, then a linear fall to 0. It keeps
    # the rate up for longer than a cosine does and still ends with the quiet, annealed weights of a decay.
    "wsd": lambda progress: min(1.0, (1.0 - progress) / WSD_DECAY),
}
DTYPES = ("float32", "bfloat16", "float16")


def adamw(groups: list[dict], lr: float):
    """AdamW with torch's fused kernel, on a CPU too (it has one since torch 2.4). On 2 CPU cores it steps
    smollm2's 135M parameters in 0.14 s, against 0.91 s for the default per-tensor loop and 0.39 s for
    ``foreach``, and its weights agree with the loop's to 1e-8."""
    import torch

    return torch.optim.AdamW(groups, lr=lr, fused=True)


def lr_multiplier(schedule: str, warmup_steps: int, total_steps: int,
                  progress: Callable[[], float] | None = None) -> Callable[[int], float]:
    """``f(s)``: the lr multiplier for optimizer step ``s`` (0-based), for ``torch.optim.lr_scheduler.LambdaLR``.

    ``progress``, if given, returns another measure of how far the run is, in [0, 1] (the RL trainers' share of
    their time limit); the decay then follows whichever of it and the step count is further along, so a run
    that its clock ends still finishes its decay.
    """
    decay = SCHEDULES[schedule]

    def f(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps  # the first step already moves, at lr / warmup_steps
        done = (s - warmup_steps) / max(1, total_steps - warmup_steps)
        if progress is not None:
            done = max(done, progress())
        return decay(min(1.0, done))

    return f


def completion_loss_sum(logits, labels):
    """Summed next-token cross-entropy over completion tokens, and their count.

    logits: (B, T, V); labels: (B, T) with -100 on prompt and padding. Position t predicts
    labels[t + 1]. Returns (scalar sum, int count); the caller divides by the batch's count.
    """
    import torch.nn.functional as F

    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100, reduction="sum")
    return loss, int((targets != -100).sum())


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The data order of an epoch: a function of (seed, epoch) only, so a resumed run replays it."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


# -- model ---------------------------------------------------------------------------------------


def resolve_model_path(spec: str) -> str:
    """A local Hugging Face checkpoint directory for ``spec`` (a directory, or a name models.py knows)."""
    if Path(spec).is_dir():
        return spec
    try:
        from reasonlab.policies.models import resolve_model
    except ImportError as e:  # pragma: no cover - models.py ships with the package
        raise UsageError(f"model {spec!r} is not a directory and model names cannot be resolved ({e})") from e
    ms = resolve_model(spec)
    path = ms.hf_checkpoint() if hasattr(ms, "hf_checkpoint") else ms.hf_path
    if path is None:
        raise UsageError(f"model {spec!r} has no Hugging Face checkpoint to train")
    return str(path)


def load_model(spec: str, weights_dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=weights_dtype)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load model {spec!r} from {path}: {str(e).splitlines()[0]}") from e
    return model, tokenizer


def add_lora(model, cfg: SFTConfig):
    """Wrap ``model`` with LoRA adapters (peft); only the adapters require grad."""
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora_targets if cfg.lora_targets == "all-linear" else [t.strip() for t in cfg.lora_targets.split(",")]
    lc = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                    target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, lc)


# -- training ------------------------------------------------------------------------------------


def train(cfg: SFTConfig, rows: list[dict] | None = None, *, model=None, tokenizer=None,
          on_step: Callable[[int, dict, Any], None] | None = None) -> dict:
    """Fine-tune ``cfg.model`` on ``rows`` (or the JSONL file ``cfg.data``); returns the summary.

    ``model``/``tokenizer`` may be given as objects instead of ``cfg.model`` (e.g. a freshly built
    tiny model). ``on_step(step, record, model)`` is called after every optimizer step. On Ctrl-C a
    checkpoint is saved and KeyboardInterrupt is re-raised; calling ``train`` again resumes.

    Summary: ``first_loss`` (step 1), ``final_loss`` (mean over the last logging window), ``steps``,
    ``tokens`` (non-padding input tokens) and ``loss_tokens`` (completion tokens) trained on,
    ``wall_time_s`` (all sessions of the run), ``out``, ``final_dir``.
    """
    import numpy as np
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from reasonlab.learn.data import IGNORE_INDEX, collate, load_sft_rows, normalize_rows, tokenize_rows
    from reasonlab.runtime import MetricsLogger, RunDir, latest_checkpoint, load_checkpoint, save_checkpoint
    from reasonlab.runtime.interrupt import StopOnCtrlC

    t_start = time.time()
    run = RunDir(cfg.out, config=cfg, resume=cfg.resume)
    if rows is not None:
        rows = normalize_rows(rows)
    elif cfg.data:
        rows = load_sft_rows(cfg.data)
    else:
        raise UsageError("no training data: pass --data rows.jsonl")

    from reasonlab.policies.hf import pick_device, pick_dtype

    device = pick_device(cfg.device)
    amp_dtype = pick_dtype(cfg.dtype, device)
    # Trained weights stay float32 (AdamW updates are far below bf16 resolution); frozen LoRA base
    # weights only need the compute dtype.
    weights_dtype = amp_dtype if cfg.lora else torch.float32
    if model is None:
        model, tokenizer = load_model(cfg.model, weights_dtype)
    elif tokenizer is None:
        raise UsageError("train(model=...) needs its tokenizer too")
    model = model.to(dtype=weights_dtype)

    examples, dropped = tokenize_rows(tokenizer, rows, cfg.max_seq_len)
    if not examples:
        raise UsageError(f"all {len(rows)} rows lost their completion to max_seq_len={cfg.max_seq_len}")
    if dropped:
        print(f"dropped {dropped} of {len(rows)} rows with no completion token within max_seq_len={cfg.max_seq_len}",
              file=sys.stderr)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    n = len(examples)

    # Seed everything before building adapters, so LoRA init (and dropout) is a function of the seed.
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing also works when the inputs need no grad (frozen LoRA embeddings).
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False
    if cfg.lora:
        model = add_lora(model, cfg)
    model.to(device)
    model.train()

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = adamw(groups, cfg.lr)
    chunk = cfg.batch_size * cfg.grad_accum  # rows per optimizer step
    steps_per_epoch = math.ceil(n / chunk)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg.lr_schedule, cfg.warmup_steps, total_steps))

    # Resume: weights, optimizer, scheduler, RNG, data position and the running totals.
    step, epoch, index = 0, 0, 0
    extra: dict[str, Any] = {"tokens": 0, "loss_tokens": 0, "wall_time_s": 0.0, "first_loss": None,
                             "final_loss": None, "win_loss_sum": 0.0, "win_loss_tokens": 0}
    ckpt = latest_checkpoint(run.path) if cfg.resume else None
    if ckpt is not None:
        step, data_state, saved = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler)
        epoch, index = data_state["epoch"], data_state["index"]
        extra.update(saved)
        if data_state.get("num_examples") != n:
            print(f"warning: the checkpoint was trained on {data_state.get('num_examples')} rows, now there are {n}; "
                  "the data order after resuming differs from an uninterrupted run", file=sys.stderr)
        print(f"resuming from {ckpt} (step {step} of {total_steps})", file=sys.stderr)
    resumed_from = step if ckpt is not None else None
    metrics = MetricsLogger(run, resume_step=step)
    wall_before = extra["wall_time_s"]

    def checkpoint() -> None:
        extra["wall_time_s"] = wall_before + time.time() - t_start
        save_checkpoint(run.path, step, model=model, optimizer=optimizer, scheduler=scheduler,
                        data_state={"epoch": epoch, "index": index, "num_examples": n},
                        extra=extra, keep_last=cfg.keep_last)

    autocast = torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32)
    perm, perm_epoch = None, -1
    win_tokens, win_start, saved_at = 0, time.time(), step
    progress = Progress(TextColumn("[bold]sft"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                        TimeRemainingColumn())
    task = progress.add_task("", total=total_steps, completed=step)
    try:
        with StopOnCtrlC() as stop, progress:
            while step < total_steps:
                if index >= n:  # epoch finished: the next one has its own order
                    epoch, index = epoch + 1, 0
                if perm_epoch != epoch:
                    perm, perm_epoch = epoch_permutation(n, cfg.seed, epoch), epoch
                # One optimizer step = the next `chunk` rows of this epoch's order, in grad_accum micro-batches.
                ids = perm[index:index + chunk]
                micro = [collate([examples[j] for j in ids[i:i + cfg.batch_size]], pad_id)
                         for i in range(0, len(ids), cfg.batch_size)]
                # Normalise by the completion tokens of the WHOLE accumulated batch, not per micro-batch:
                # averaging each micro-batch's mean would weight a token in a short micro-batch more than
                # one in a long micro-batch, so batch 4 x accum 2 would not be the same update as batch 8.
                # Summing token losses and dividing once by the total makes every completion token count
                # equally, however the batch is split.
                n_loss_tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro)
                step_loss_sum = 0.0
                for b in micro:
                    b = {k: v.to(device) for k, v in b.items()}
                    with autocast:
                        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                    loss_sum, _ = completion_loss_sum(logits, b["labels"])
                    (loss_sum / n_loss_tokens).backward()
                    step_loss_sum += loss_sum.item()
                    win_tokens += int(b["attention_mask"].sum())
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                index += len(ids)

                loss = step_loss_sum / n_loss_tokens
                extra["tokens"] += sum(int(b["attention_mask"].sum()) for b in micro)
                extra["loss_tokens"] += n_loss_tokens
                extra["win_loss_sum"] += step_loss_sum
                extra["win_loss_tokens"] += n_loss_tokens
                if extra["first_loss"] is None:
                    extra["first_loss"] = loss
                progress.update(task, completed=step, description=f"loss {loss:.4f}")
                if step % cfg.log_every == 0 or step == total_steps:
                    now = time.time()
                    win_loss = extra["win_loss_sum"] / extra["win_loss_tokens"]
                    metrics.log(step, {"loss": win_loss, "lr": lr, "grad_norm": float(grad_norm),
                                       "tokens_per_s": win_tokens / max(now - win_start, 1e-9),
                                       "epoch": epoch + index / n})
                    extra.update(final_loss=win_loss, win_loss_sum=0.0, win_loss_tokens=0)
                    win_tokens, win_start = 0, now
                if on_step is not None:
                    on_step(step, {"loss": loss, "lr": lr, "grad_norm": float(grad_norm)}, model)
                if cfg.save_every and step % cfg.save_every == 0:
                    checkpoint()
                    saved_at = step
                if stop.requested and step < total_steps:  # at the last step, just finish normally
                    if saved_at != step:
                        checkpoint()
                    raise KeyboardInterrupt
            if saved_at != step:
                checkpoint()  # the end state, so that re-running the command finds the run complete
    except KeyboardInterrupt:
        run.write_json("summary.json", _summary(cfg, run, step, total_steps, n, dropped, extra, wall_before, t_start,
                                                resumed_from, None, interrupted=True))
        raise
    finally:
        metrics.close()

    final_dir = None
    if cfg.save_final:
        final_dir = run / "final"
        out_model = model.merge_and_unload() if cfg.lora else model
        if cfg.gradient_checkpointing:
            out_model.config.use_cache = True
        out_model.save_pretrained(str(final_dir))
        tokenizer.save_pretrained(str(final_dir))
    summary = _summary(cfg, run, step, total_steps, n, dropped, extra, wall_before, t_start, resumed_from, final_dir)
    run.write_json("summary.json", summary)
    return summary


def _summary(cfg, run, step, total_steps, n, dropped, extra, wall_before, t_start, resumed_from, final_dir,
             interrupted: bool = False) -> dict:
    return {
        "out": str(run.path), "final_dir": str(final_dir) if final_dir else None, "model": cfg.model,
        "steps": step, "total_steps": total_steps, "examples": n, "dropped_rows": dropped,
        "first_loss": extra["first_loss"], "final_loss": extra["final_loss"],
        "tokens": extra["tokens"], "loss_tokens": extra["loss_tokens"],
        "wall_time_s": round(wall_before + time.time() - t_start, 3),
        "resumed_from_step": resumed_from, "interrupted": interrupted,
    }


def main(argv: list[str] | None = None) -> int:
    """``reasonlab train sft``: parse flags (and --config YAML), train, print the summary."""
    try:
        cfg = config_lib.parse(SFTConfig, argv, prog="reasonlab train sft")
        summary = train(cfg)
    except UsageError as e:
        print_error(e)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume from the latest checkpoint", file=sys.stderr)
        return 130
    print(f"done: {summary['steps']} steps, loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}, "
          f"{summary['wall_time_s']:.1f}s; model in {summary['final_dir'] or summary['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
