"""Where does a model still go wrong on ``arith``? Greedy accuracy by problem length, pass@k, and the first slip.

Written to read what GRPO leaves on the table (BENCHMARKS "Online RL learns"): run it on the shipped ``tiny`` and
on a trained checkpoint, side by side in one process, on the same held-out problems and the same seeds.

For each model it prints:
- greedy accuracy on the first ``--limit`` test problems, overall and by number of operands;
- pass@1 / pass@8 / pass@N of ``--samples`` samples at temperature ``--temperature``;
- on the problems greedy gets wrong: the mean accuracy of a sample there, and how many have no right sample at all
  (what sampling-based RL can learn from on the problems greedy decoding misses);
- the first line where greedy's solution leaves the worked one, by kind: a step with a negative operand or result,
  a step with a carry or borrow, another step, or a broken line.

With ``--probe-rollouts`` it instead asks what GRPO's rollouts would teach under several sampling settings, on
training problems: sample accuracy, the share of groups whose samples all agree (no signal), and how often a group
holds a right sample where greedy is wrong (signal greedy decoding needs) or a wrong sample where greedy is right.

    python benchmarks/arith_errors.py --models tiny,runs/bench-rl-s11e/grpo/final
    python benchmarks/arith_errors.py --probe-rollouts --limit 400
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from typing import Any

STEP_RE = re.compile(r"^(-?\d+)([+-])(\d+)=(-?\d+)$")


def slip_kind(gold_line: str) -> str:
    """What kind of step the gold line is: negative (an operand or the result below 0), carry (a carry or borrow in
    the units), plain; 'answer' for the answer line."""
    m = STEP_RE.match(gold_line.strip())
    if not m:
        return "answer"
    a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
    if a < 0 or c < 0:
        return "negative"
    carry = (a % 10 + b % 10 >= 10) if op == "+" else (a % 10 < b % 10)
    return "carry" if carry else "plain"


def first_slip(gold: str, got: str) -> tuple[int, str, str] | None:
    """(line index, gold line, model line) of the first line that differs, or None."""
    g, m = gold.strip().split("\n"), got.strip().split("\n")
    for k, line in enumerate(g):
        mine = m[k].strip() if k < len(m) else ""
        if mine != line.strip():
            return k, line.strip(), mine
    return None


class Problems:
    """A model on the first ``limit`` problems of an ``arith`` split: its greedy answers, and samples on demand."""

    def __init__(self, model: str, split: str, limit: int):
        from reasonlab.policies import load_policy
        from reasonlab.tasks.arith import ArithTask
        from reasonlab.types import SamplingParams

        self.policy, self.task = load_policy(model, backend="hf"), ArithTask()
        self.examples = self.task.examples(split, limit)
        self.greedy = self.draw(SamplingParams(n=1, temperature=0.0, max_new_tokens=64, stop=self.task.stop))
        self.greedy_ok = [ok[0] for ok in self.right(self.greedy, 1)]

    def draw(self, sampling):
        return self.policy.generate([e.prompt for e in self.examples], sampling)

    def right(self, completions, n: int) -> list[list[bool]]:
        """Per problem, whether each of its ``n`` completions is right."""
        return [[self.task.score(e, completions[i * n + j].text).value == 1.0 for j in range(n)]
                for i, e in enumerate(self.examples)]

    def sample(self, n: int, seed: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0):
        from reasonlab.types import SamplingParams

        return self.right(self.draw(SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=top_k,
                                                   max_new_tokens=64, stop=self.task.stop, seed=seed)), n)


def measure(model: str, limit: int, samples: int, temperature: float, seed: int) -> dict[str, Any]:
    p = Problems(model, "test", limit)
    examples, greedy, g_ok = p.examples, p.greedy, p.greedy_ok
    by_ops: dict[int, list[bool]] = collections.defaultdict(list)
    for e, ok in zip(examples, g_ok):
        by_ops[len(re.findall(r"(?<=\d)[+-]", e.question)) + 1].append(ok)
    s_ok = p.sample(samples, seed, temperature)
    wrong = [i for i, ok in enumerate(g_ok) if not ok]
    kinds = collections.Counter()
    for i in wrong:
        slip = first_slip(examples[i].meta["solution"], greedy[i].text)
        kinds["broken line" if slip and slip[2] and not STEP_RE.match(slip[2]) and not slip[2].startswith("answer")
              else slip_kind(slip[1]) if slip else "other"] += 1
    n = len(examples)
    ks = sorted({1, min(8, samples), samples})
    return {
        "model": model,
        "greedy": sum(g_ok) / n,
        "greedy_by_operands": {k: {"accuracy": sum(v) / len(v), "problems": len(v)} for k, v in sorted(by_ops.items())},
        **{f"pass@{k}": sum(any(o[:k]) for o in s_ok) / n if k > 1 else sum(map(sum, s_ok)) / (n * samples)
           for k in ks},
        "greedy_wrong": len(wrong),
        "greedy_wrong_sample_accuracy": sum(sum(s_ok[i]) / samples for i in wrong) / max(len(wrong), 1),
        "greedy_wrong_no_right_sample": sum(not any(s_ok[i]) for i in wrong),
        "first_slip": dict(kinds.most_common()),
    }


PROBE_SETTINGS = ((1.0, 1.0, 0), (1.0, 0.9, 0), (1.0, 0.8, 0), (1.0, 1.0, 2), (0.7, 1.0, 0))  # (T, top_p, top_k)


def probe_rollouts(model: str, limit: int, group: int, seed: int) -> list[dict[str, Any]]:
    """What groups of ``group`` rollouts hold under each of PROBE_SETTINGS, on the first ``limit`` training problems."""
    p = Problems(model, "train", limit)
    g_ok, examples = p.greedy_ok, p.examples
    g_wrong = [i for i, ok in enumerate(g_ok) if not ok]
    g_right = [i for i, ok in enumerate(g_ok) if ok]
    rows = []
    for t, top_p, top_k in PROBE_SETTINGS:
        ok = p.sample(group, seed, t, top_p, top_k)
        rows.append({"temperature": t, "top_p": top_p, "top_k": top_k, "greedy": sum(g_ok) / len(examples),
                     "sample_accuracy": sum(map(sum, ok)) / (group * len(examples)),
                     "groups_all_agree": sum(all(o) or not any(o) for o in ok) / len(examples),
                     "greedy_wrong_with_right_sample": sum(any(ok[i]) for i in g_wrong) / max(len(g_wrong), 1),
                     "greedy_right_with_wrong_sample": sum(not all(ok[i]) for i in g_right) / max(len(g_right), 1)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny", help="comma-separated models or checkpoints (tiny's tokenizer)")
    ap.add_argument("--limit", type=int, default=500, help="held-out test problems")
    ap.add_argument("--samples", type=int, default=32, help="samples per problem for pass@k")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="", help="also write the figures here")
    ap.add_argument("--probe-rollouts", action="store_true",
                    help="probe rollout settings on training problems instead (groups of 8, the first model)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.probe_rollouts:
        rows = probe_rollouts(args.models.split(",")[0], args.limit, 8, args.seed)
        print(f"greedy {rows[0]['greedy']:.1%} on {args.limit} training problems; groups of 8")
        for r in rows:
            print(f"T={r['temperature']} top_p={r['top_p']} top_k={r['top_k']}: sample accuracy {r['sample_accuracy']:.1%}, "
                  f"groups all agree {r['groups_all_agree']:.1%}, greedy-wrong with a right sample "
                  f"{r['greedy_wrong_with_right_sample']:.1%}, greedy-right with a wrong sample "
                  f"{r['greedy_right_with_wrong_sample']:.1%}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return 0
    out = [measure(m, args.limit, args.samples, args.temperature, args.seed) for m in args.models.split(",")]
    for r in out:
        print(f"\n{r['model']}: greedy {r['greedy']:.1%} ("
              + ", ".join(f"{k} operands {v['accuracy']:.1%} of {v['problems']}" for k, v in r["greedy_by_operands"].items())
              + ")")
        print("  " + ", ".join(f"{k} {v:.1%}" for k, v in r.items() if k.startswith("pass@")))
        print(f"  greedy wrong on {r['greedy_wrong']}: a sample there is right {r['greedy_wrong_sample_accuracy']:.1%} "
              f"of the time; {r['greedy_wrong_no_right_sample']} have no right sample")
        print("  first slip: " + ", ".join(f"{k} {v}" for k, v in r["first_slip"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
