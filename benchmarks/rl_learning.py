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
    python benchmarks/rl_learning.py --algos "grpo,grpo:downsample=4" --repeats 3  # medians of 3 runs each, interleaved

Prints a markdown table (accuracy before -> after, steps, minutes; with ``--repeats``, every run's gain and their
median), writes ``results.json`` and overlays the runs' curves (``val_accuracy.png``, ``reward_mean.png``) in
``--out``. Runs of one setting differ by 2-3 points on ``tiny`` (the host's speed, and a learning rate that decays
with the clock), so comparing two settings takes several runs of each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
    ap.add_argument("--repeats", type=int, default=1,
                    help="run every algorithm this many times, interleaved: each one's first run, then each one's second...")
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
    results: dict[str, list[dict]] = {}
    runs: dict[str, Path] = {}
    specs = [a.strip() for a in args.algos.split(",") if a.strip()]
    # Checked before any run: a typo must not wait for 15 minutes of training.
    unknown = [s.partition(":")[0] for s in specs if s.partition(":")[0] not in table]
    if unknown:
        sys.exit(f"unknown algorithm {unknown[0]!r}; choose from {', '.join(table)}")
    if args.repeats < 1:
        sys.exit(f"--repeats must be >= 1, got {args.repeats}")
    for rep, spec in [(r, s) for r in range(1, args.repeats + 1) for s in specs]:
        algo, _, variant = spec.partition(":")
        cls, trainer_cls = table[algo]
        recipe = REPO / "recipes" / f"{algo}-{args.recipe_suffix}.yaml"
        values = config_lib.load_yaml(recipe)
        for kv in args.set + [v for v in variant.split(";") if v]:
            k, _, v = kv.partition("=")
            values[k.replace("-", "_")] = yaml.safe_load(v)
        name = spec.replace(":", "-").replace(";", "-").replace("=", "-") + (f"-r{rep}" if args.repeats > 1 else "")
        values.update(out=str(out / name), max_minutes=args.minutes, resume=False)
        cfg = config_lib.build(cls, values)
        if Path(cfg.out).exists():
            import shutil

            shutil.rmtree(cfg.out)
        t0 = time.time()
        summary = train(cfg, trainer_cls=trainer_cls)
        run = {"run": name, "recipe": str(recipe.relative_to(REPO)), "minutes": (time.time() - t0) / 60,
               "steps": summary["steps"], "before": summary["val_accuracy_first"],
               "after": summary["val_accuracy_last"], "gain": summary["val_accuracy_gain"],
               "by_step": summary["val_accuracy_by_step"], "eval_limit": cfg.eval_limit}
        results.setdefault(spec, []).append(run)
        runs[name] = out / name
        print(json.dumps({spec: run}), flush=True)

    for key in ("val_accuracy", "reward_mean"):
        try:
            plot_runs(runs, key, out / f"{key}.png")
        except Exception as e:  # a missing plot must not lose the measured figures
            print(f"warning: no {key} plot: {e}", file=sys.stderr)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n| algorithm | recipe | held-out greedy accuracy before -> after | gain (points) | steps | minutes |")
    print("|---|---|---|---|---|---|")
    for a, rs in results.items():
        after = ", ".join(f"{r['after']:.1%}" for r in rs)
        gains = ", ".join(f"{100 * r['gain']:+.1f}" for r in rs)
        if len(rs) > 1:
            gains += f" (median {100 * statistics.median(r['gain'] for r in rs):+.1f})"
        steps = ", ".join(str(r["steps"]) for r in rs)
        minutes = ", ".join(f"{r['minutes']:.1f}" for r in rs)
        print(f"| {a} | {rs[0]['recipe']} | {rs[0]['before']:.1%} -> {after} | {gains} | {steps} | {minutes} |")
    print(f"\n(held-out problems per evaluation: {next(iter(results.values()))[0]['eval_limit'] if results else '-'}; "
          f"torch threads {args.threads}; curves in {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
