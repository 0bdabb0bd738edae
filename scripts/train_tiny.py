"""Train the built-in ``tiny`` model from scratch and ship it in ``src/reasonlab/assets/tiny``.

This is reasonlab's policy-initialisation stage in miniature: a fresh ~1.8M-parameter Llama with a
character tokenizer (``reasonlab.policies.tiny``) is SFT-ed with reasonlab's own SFT loop on
synthetic step-by-step arithmetic traces (``reasonlab.tasks.arith``), then its held-out greedy
accuracy is measured with the transformers backend and written beside the weights.

The target is a held-out greedy accuracy between 30% and 80%, so that search and RL have room to
show gains. Learning is sudden here (carries are picked up between steps 600 and 1000, when the
loss falls from 0.2 to 0.07), so rather than guess a step count, the run saves a checkpoint every
250 steps (``--save-every``), measures each one's held-out greedy accuracy, and ships the *latest* checkpoint whose
accuracy lies in the band (the best-trained model that still leaves room). Training is seeded and
deterministic on a CPU: two runs of the same code give bit-identical weights. The shipped checkpoint
came from the first version of the SFT loop, whose path the current one does not retrace (BENCHMARKS.md,
"A weaker starting checkpoint"). Run (about 30 minutes on one CPU core)::

    python scripts/train_tiny.py            # writes src/reasonlab/assets/tiny/
    python scripts/train_tiny.py --steps 600 --out /tmp/tiny   # a quick experiment elsewhere
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from reasonlab.learn.sft import SFTConfig, train
from reasonlab.policies.hf import HFPolicy
from reasonlab.policies.tiny import ASSET_DIR, new_tiny_model
from reasonlab.tasks.arith import ArithTask
from reasonlab.types import SamplingParams


def held_out_accuracy(model_dir: str, limit: int, task: ArithTask, tokenizer) -> float:
    from transformers import AutoModelForCausalLM

    examples = task.examples("test", limit)
    policy = HFPolicy(model_dir, model=AutoModelForCausalLM.from_pretrained(model_dir), tokenizer=tokenizer,
                      device="cpu", max_batch_size=128)
    comps = policy.generate([e.prompt for e in examples], SamplingParams(temperature=0, max_new_tokens=64,
                                                                         stop=task.stop))
    return sum(task.score(e, c.text).correct for e, c in zip(examples, comps)) / len(examples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500, help="optimizer steps")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ASSET_DIR), help="where the finished checkpoint goes")
    ap.add_argument("--run-dir", default="runs/train-tiny", help="SFT run directory (checkpoints, metrics)")
    ap.add_argument("--eval-limit", type=int, default=500)
    ap.add_argument("--save-every", type=int, default=250, help="checkpoint (and later measure) every N steps")
    ap.add_argument("--select-only", action="store_true",
                    help="skip training: measure the checkpoints already in --run-dir and ship from them")
    ap.add_argument("--band", default="0.3,0.8", help="held-out greedy accuracy band to ship from")
    ap.add_argument("--max-value", type=int, default=ArithTask().max_value, help="largest operand of the task")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; the model is so small that one thread wastes little and a second "
                         "one mostly spins when the machine is shared")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.time()
    model, tok = new_tiny_model(seed=args.seed)
    task = ArithTask(max_value=args.max_value)
    rows = task.sft_rows()
    cfg = SFTConfig(model="tiny", out=args.run_dir, max_steps=args.steps, batch_size=args.batch_size,
                    lr=args.lr, warmup_steps=50, lr_schedule="cosine", weight_decay=0.01, max_seq_len=128,
                    save_every=args.save_every, keep_last=0, log_every=50, seed=args.seed)
    if not args.select_only:
        train(cfg, rows, model=model, tokenizer=tok)

    low, high = (float(x) for x in args.band.split(","))
    accuracies = {}
    for ckpt in sorted(Path(args.run_dir, "checkpoints").glob("step_*"), key=lambda p: int(p.name[5:])):
        accuracies[int(ckpt.name[5:])] = acc = held_out_accuracy(str(ckpt / "model"), args.eval_limit, task, tok)
        print(f"{ckpt.name}: held-out greedy accuracy {acc:.1%}")
    in_band = [s for s, a in accuracies.items() if low <= a <= high]
    if not in_band:
        raise SystemExit(f"no checkpoint reached the {low:.0%}-{high:.0%} band: {accuracies}")
    step = max(in_band)
    acc = accuracies[step]

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(Path(args.run_dir, "checkpoints", f"step_{step}", "model"), out)
    tok.save_pretrained(out)
    card = {
        "description": "reasonlab tiny: a Llama-architecture decoder trained from scratch on arith traces",
        "parameters": sum(p.numel() for p in model.parameters()),
        "task": {"min_ops": task.min_ops, "max_ops": task.max_ops, "max_value": task.max_value},
        "train_rows": len(rows), "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "seed": args.seed, "shipped_step": step, "heldout_accuracy_by_step": accuracies,
        "heldout_greedy_accuracy": acc, "heldout_examples": args.eval_limit,
        "train_seconds": None if args.select_only else round(time.time() - t0, 1), "torch": torch.__version__,
    }
    (out / "reasonlab_card.json").write_text(json.dumps(card, indent=2) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(json.dumps(card, indent=2))
    print(f"wrote {out} ({size / 1e6:.1f} MB); held-out greedy accuracy {acc:.1%}")


if __name__ == "__main__":
    main()
