"""Can voting over samples beat greedy decoding at all? Majority and confidence picks over N samples.

Issue 3's first target asks self-consistency to beat greedy at its largest budget. Whether any vote can
depends on the policy: if its errors are systematic, its most likely answer is its greedy answer and
sampling only adds wrong votes. This script samples ``--samples`` completions per problem at several
temperatures once and reads off, for N = 4 ... samples, the accuracy of:

- ``single``: one sample (the mean over samples);
- ``majority``: self-consistency's vote over finished samples;
- ``bon-mean`` / ``bon-min``: the sample with the highest mean / minimum token log-prob;
- ``filtered``: majority among the quarter of samples with the highest mean token log-prob
  (DeepConf-style confidence filtering);
- ``weighted``: votes weighted by exp(mean token log-prob).

    python benchmarks/vote_ceiling.py                      # tiny, arith, first 200 test problems
    python benchmarks/vote_ceiling.py --temperatures 0.5 --samples 16 --limit 100
"""

from __future__ import annotations

import argparse
import math
import os
from collections import Counter, defaultdict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--task", default="arith")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--temperatures", default="0.3,0.5,0.8")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from reasonlab.policies import load_policy
    from reasonlab.tasks import load_task
    from reasonlab.types import SamplingParams

    torch.set_num_threads(args.threads)
    task = load_task(args.task)
    examples = task.examples("test", args.limit)
    policy = load_policy(args.model, backend="hf")
    prompts = [e.prompt for e in examples]
    stop = tuple(task.stop or ())
    greedy = policy.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens, stop=stop))
    greedy_acc = sum(task.score(e, c.text).correct for e, c in zip(examples, greedy)) / len(examples)
    print(f"{args.model} on {args.task}, {len(examples)} problems: greedy {greedy_acc:.1%}")
    sizes = [n for n in (4, 8, 16, 32, 64, 128) if n <= args.samples]
    for temp in [float(t) for t in args.temperatures.split(",")]:
        comps = policy.generate(prompts, SamplingParams(n=args.samples, temperature=temp, seed=args.seed,
                                                        max_new_tokens=args.max_new_tokens, stop=stop))
        by_problem = defaultdict(list)
        for c in comps:
            by_problem[c.prompt_index].append(c)
        for n in sizes:
            acc: Counter = Counter()
            for i, ex in enumerate(examples):
                cands = [c for c in by_problem[i][:n] if c.finish_reason != "length"] or by_problem[i][:n]
                right = [task.score(ex, c.text).correct for c in cands]
                answers = [task.extract(c.text) for c in cands]
                mean_lp = [sum(c.logprobs) / max(len(c.logprobs), 1) for c in cands]
                min_lp = [min(c.logprobs, default=0.0) for c in cands]
                acc["single"] += sum(right) / len(right)

                def first_with(answer) -> bool:
                    return right[answers.index(answer)]

                votes = Counter(a for a in answers if a is not None)
                if votes:
                    acc["majority"] += first_with(votes.most_common(1)[0][0])
                acc["bon-mean"] += right[max(range(len(cands)), key=lambda j: mean_lp[j])]
                acc["bon-min"] += right[max(range(len(cands)), key=lambda j: min_lp[j])]
                top = sorted(range(len(cands)), key=lambda j: -mean_lp[j])[:max(1, len(cands) // 4)]
                kept = Counter(answers[j] for j in top if answers[j] is not None)
                if kept:
                    acc["filtered"] += first_with(kept.most_common(1)[0][0])
                weights: dict = defaultdict(float)
                for a, lp in zip(answers, mean_lp):
                    if a is not None:
                        weights[a] += math.exp(lp)
                if weights:
                    acc["weighted"] += first_with(max(weights, key=weights.get))
            row = "  ".join(f"{k} {v / len(examples):6.1%}" for k, v in acc.items())
            print(f"T={temp:<4} N={n:<3} {row}", flush=True)


if __name__ == "__main__":
    main()
