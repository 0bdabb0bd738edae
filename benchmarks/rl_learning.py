"""Does online RL learn? Held-out accuracy before and after a time-boxed run, per algorithm.

Issue 4's first measure: on ``tiny``'s arithmetic task, GRPO raises held-out greedy accuracy by at
least 20 points within 15 minutes on 2 CPU cores, with RLOO and PPO beside it; on ``smollm2`` and a
reasoning-gym arithmetic task, at least 15 points within 60 minutes. Each algorithm runs from its
recipe (``recipes/<algo>-<suffix>.yaml``) with a wall-time limit that includes its evaluations; the
runs go one after another (they would only slow each other down on 2 cores).

    python benchmarks/rl_learning.py                                  # grpo, rloo, ppo on tiny, 15 min each
    python benchmarks/rl_learning.py --algos grpo --minutes 5          # a quicker look
    python benchmarks/rl_learning.py --recipe-suffix smollm2-rg --algos grpo --minutes 60
    python benchmarks/rl_learning.py --algos "grpo,grpo:process_rewards=steps"   # a variant: algo:key=value;...

Prints a markdown table (accuracy before -> after, steps, minutes), writes ``results.json`` and
overlays the algorithms' curves (``val_accuracy.png``, ``reward_mean.png``) in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--algos", default="grpo,rloo,ppo",
                    help="comma-separated: grpo, rloo, reinforce, ppo; ALGO:KEY=VALUE;KEY=VALUE runs a variant of a recipe")
    ap.add_argument("--recipe-suffix", default="tiny-arith", help="recipes/<algo>-<suffix>.yaml")
    ap.add_argument("--minutes", type=float, default=15.0, help="wall-time limit per algorithm")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--out", default="runs/bench-rl", help="where the runs and results go")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a recipe setting for every algorithm (repeatable)")
    args = ap.parse_args()

    import torch
    import yaml

    from reasonlab import config as config_lib
    from reasonlab.learn.grpo import GRPOConfig, train
    from reasonlab.learn.ppo import PPOConfig, PPOTrainer
    from reasonlab.learn.reinforce import ReinforceConfig
    from reasonlab.learn.rloo import RLOOConfig
    from reasonlab.runtime.plots import plot_runs

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    table = {"grpo": (GRPOConfig, None), "rloo": (RLOOConfig, None), "reinforce": (ReinforceConfig, None),
             "ppo": (PPOConfig, PPOTrainer)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for spec in [a.strip() for a in args.algos.split(",") if a.strip()]:
        algo, _, variant = spec.partition(":")
        if algo not in table:
            sys.exit(f"unknown algorithm {algo!r}; choose from {', '.join(table)}")
        cls, trainer_cls = table[algo]
        recipe = REPO / "recipes" / f"{algo}-{args.recipe_suffix}.yaml"
        values = config_lib.load_yaml(recipe)
        for kv in args.set + [v for v in variant.split(";") if v]:
            k, _, v = kv.partition("=")
            values[k.replace("-", "_")] = yaml.safe_load(v)
        name = spec.replace(":", "-").replace(";", "-").replace("=", "-")
        algo = spec
        values.update(out=str(out / name), max_minutes=args.minutes, resume=False)
        cfg = config_lib.build(cls, values)
        if Path(cfg.out).exists():
            import shutil

            shutil.rmtree(cfg.out)
        t0 = time.time()
        summary = train(cfg, trainer_cls=trainer_cls)
        results[algo] = {"recipe": str(recipe.relative_to(REPO)), "minutes": (time.time() - t0) / 60,
                         "steps": summary["steps"], "before": summary["val_accuracy_first"],
                         "after": summary["val_accuracy_last"], "gain": summary["val_accuracy_gain"],
                         "by_step": summary["val_accuracy_by_step"], "eval_limit": cfg.eval_limit}
        print(json.dumps({algo: results[algo]}), flush=True)

    runs = {a: out / a.replace(":", "-").replace(";", "-").replace("=", "-") for a in results}
    for key in ("val_accuracy", "reward_mean"):
        try:
            plot_runs(runs, key, out / f"{key}.png")
        except Exception as e:  # a missing plot must not lose the measured figures
            print(f"warning: no {key} plot: {e}", file=sys.stderr)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n| algorithm | recipe | held-out greedy accuracy before -> after | gain (points) | steps | minutes |")
    print("|---|---|---|---|---|---|")
    for a, r in results.items():
        print(f"| {a} | {r['recipe']} | {r['before']:.1%} -> {r['after']:.1%} | {100 * r['gain']:+.1f} | "
              f"{r['steps']} | {r['minutes']:.1f} |")
    print(f"\n(held-out problems per evaluation: {next(iter(results.values()))['eval_limit'] if results else '-'}; "
          f"torch threads {args.threads}; curves in {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
