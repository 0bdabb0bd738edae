"""How much of a GRPO step's rollouts repeat each other: the room twin merging and shared histories work in.

Samples a few steps of the GRPO trainer's own rollouts (``prompts_per_step`` x ``group_size`` at the recipe's
temperature) from a policy and counts:

- **distinct trained rows**: among the samples of groups whose rewards differ (those the trainer trains on),
  the share that are distinct (prompt, completion) pairs. Twin merging (``GRPOConfig.merge_twins``) trains
  only these.
- **distinct decode histories**: over every decode step, the share of live samples whose history (prompt and
  tokens so far) is distinct. The sampler with shared histories (``HFPolicy(share_histories=True)``) runs the
  model on only these rows (before the cost of forking).

Run::

    python benchmarks/rollout_sharing.py                                   # the built-in tiny on arith
    python benchmarks/rollout_sharing.py --model runs/bench-rl-s15b/grpo/final   # a trained checkpoint
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="tiny, or a checkpoint directory of a tiny-vocabulary model")
    ap.add_argument("--task", default="arith")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()

    import torch

    from reasonlab.learn.grpo import GRPOConfig, Trainer

    torch.set_num_threads(1)
    kw = {}
    model_name = args.model
    if args.model != "tiny":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kw = dict(model=AutoModelForCausalLM.from_pretrained(args.model, local_files_only=True),
                  tokenizer=AutoTokenizer.from_pretrained(args.model, local_files_only=True))
        model_name = "tiny"  # the trainer's name for the model's family; the weights are the checkpoint's
    cfg = GRPOConfig(model=model_name, task=args.task, prompts_per_step=args.prompts, group_size=args.group,
                     temperature=args.temperature, max_new_tokens=args.max_new_tokens, monitor="off",
                     out="/tmp/reasonlab-rollout-sharing", save_final=False)
    tr = Trainer(cfg, **kw)
    trained = distinct_trained = row_steps = histories = 0
    for step in range(args.steps):
        tr.step_no = step
        for group in tr.collect_groups().groups:
            comps = [tuple(s.completion_ids) for s in group]
            rewards = [s.reward for s in group]
            if max(rewards) - min(rewards) > 1e-9:
                trained += len(comps)
                distinct_trained += len(set(comps))
            for t in range(max(len(c) for c in comps)):
                live = [c[:t] for c in comps if len(c) > t]
                row_steps += len(live)
                histories += len(set(live))
    print(f"model {args.model}, {args.steps} steps of {args.prompts} x {args.group} at T = {args.temperature}")
    print(f"distinct trained rows:    {distinct_trained} of {trained} ({distinct_trained / max(trained, 1):.1%})")
    print(f"distinct decode histories: {histories} of {row_steps} row-steps ({histories / max(row_steps, 1):.1%})")


if __name__ == "__main__":
    main()
