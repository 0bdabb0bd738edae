"""Train the built-in ``tiny`` model from scratch and ship it in ``src/reasonlab/assets/tiny``.

This is reasonlab's policy-initialisation stage in miniature: a fresh ~1.8M-parameter Llama with a
character tokenizer (``reasonlab.policies.tiny``) is SFT-ed with reasonlab's own SFT loop on
synthetic step-by-step arithmetic traces (``reasonlab.tasks.arith``), then its held-out greedy
accuracy is measured with the transformers backend and written beside the weights.

The training budget is deliberately small: the target is a held-out greedy accuracy between 30%
and 80%, so that search and RL have room to show gains. Run (about 10 minutes on 2 CPU cores)::

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


def held_out_accuracy(model_dir: str, limit: int, task: ArithTask) -> float:
    examples = task.examples("test", limit)
    policy = HFPolicy(model_dir, device="cpu", max_batch_size=128)
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
                    save_every=250, log_every=50, seed=args.seed)
    summary = train(cfg, rows, model=model, tokenizer=tok)
    acc = held_out_accuracy(summary["final_dir"], args.eval_limit, task)

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(summary["final_dir"], out)
    card = {
        "description": "reasonlab tiny: a Llama-architecture decoder trained from scratch on arith traces",
        "parameters": sum(p.numel() for p in model.parameters()),
        "task": {"min_ops": task.min_ops, "max_ops": task.max_ops, "max_value": task.max_value},
        "train_rows": len(rows), "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "seed": args.seed, "final_loss": summary.get("final_loss"),
        "heldout_greedy_accuracy": acc, "heldout_examples": args.eval_limit,
        "train_seconds": round(time.time() - t0, 1), "torch": torch.__version__,
    }
    (out / "reasonlab_card.json").write_text(json.dumps(card, indent=2) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(json.dumps(card, indent=2))
    print(f"wrote {out} ({size / 1e6:.1f} MB); held-out greedy accuracy {acc:.1%}")


if __name__ == "__main__":
    main()
