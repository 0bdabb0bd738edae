"""How much accuracy does test-time search buy per generated token? Every strategy at several budgets.

Issue 3's measures, on ``tiny`` and its arithmetic task (and, with ``--model smollm2``, on a
reasoning-gym arithmetic task):

1. every strategy at its largest budget beats greedy decoding;
2. with the Monte-Carlo rollout scorer (Math-Shepherd's value: the fraction of k rollouts the verifier
   accepts, so it USES THE GOLD ANSWER), REBASE or beam search reaches self-consistency's best
   accuracy with at most half of self-consistency's generated tokens;
3. the search's own overhead (wall time outside generation, scoring and answer reading) is under 10%
   of wall time.

It runs ``reasonlab search`` (:mod:`reasonlab.search.runner`) with one preset per model: sc, bon
(confidence scorer), beam, REBASE and MCTS (mc-rollout scorer) and sequential revision, each at
every budget, plus the greedy baseline; the tree searches' width grows with the budget (a search
sized for 1024 tokens would just be cut short at 128). The run directory holds the table, the
scaling plot, the HTML report with every tree, and ``figures.json``. Re-running resumes.

    python benchmarks/search_scaling.py                 # tiny, 50 problems, budgets 128,256,512 (~15 min on 2 cores)
    python benchmarks/search_scaling.py --quick         # tiny, 12 problems, budgets 64,128,256 (1-2 min)
    python benchmarks/search_scaling.py --model smollm2 --limit 20
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

STRATEGIES = ("sc", "bon", "beam", "rebase", "mcts", "revise")
ROLLOUT = "mc-rollout"


def tiny_preset(budgets: list[int]) -> dict[str, Any]:
    """tiny: 2-4 line solutions of ~30 tokens; steps are lines. Tree searches scale their width with the budget."""
    max_new = 48
    options: dict[str, Any] = {"bon": {"separator": "\n"}, "revise": {"max_new_tokens": max_new}}
    for b in budgets:
        # Measured on tiny with one 32-token rollout per rated node, unconstrained: REBASE and beam
        # spend ~68 tokens per unit of width, MCTS ~26 per iteration. Each call reserves its worst case
        # (rows x max tokens), so a search needs ~1.4x that headroom to finish its solutions within
        # the budget; one cut short answers with an unfinished path, which is wrong.
        width = max(1, b // 96)
        options[f"beam@{b}"] = {"beams": max(2, width - width % 2), "width": 2}
        options[f"rebase@{b}"] = {"width": width}
        options[f"mcts@{b}"] = {"iterations": max(2, b // 32), "expand_k": 2}
        # tiny's context is 256 characters and each revision round appends ~110 (the attempt and the
        # reflection), so a chain holds at most 3 attempts; a larger budget runs more chains side by side.
        attempts = max(1, b // max_new)
        rounds = min(attempts, 3)
        options[f"revise@{b}"] = {"rounds": rounds, "chains": max(1, attempts // rounds)}
    return {"model": "tiny", "task": "arith", "task_options": "", "max_new_tokens": max_new, "separator": "\\n",
            "max_step_tokens": 16, "max_steps": 6, "options": options,
            "scorer": f"bon=confidence,beam={ROLLOUT},rebase={ROLLOUT},mcts={ROLLOUT},*=confidence",
            "scorer_options": {ROLLOUT: {"k": 1, "max_new_tokens": 32}}}


def smollm2_preset(budgets: list[int]) -> dict[str, Any]:
    """smollm2 on reasoning-gym two-term sums, few-shot (the eval harness's default task)."""
    max_new = 96
    options: dict[str, Any] = {"bon": {"separator": "\n"}, "revise": {"max_new_tokens": max_new}}
    for b in budgets:
        width = max(1, b // 192)
        options[f"beam@{b}"] = {"beams": max(2, width - width % 2), "width": 2}
        options[f"rebase@{b}"] = {"width": width}
        options[f"mcts@{b}"] = {"iterations": max(2, b // 128), "expand_k": 2}
        options[f"revise@{b}"] = {"rounds": max(1, b // max_new)}
    return {"model": "smollm2", "task": "rg:basic_arithmetic", "task_options": "", "max_new_tokens": max_new,
            "separator": "\\n", "max_step_tokens": 48, "max_steps": 6, "options": options,
            "scorer": f"bon=confidence,beam={ROLLOUT},rebase={ROLLOUT},mcts={ROLLOUT},*=confidence",
            "scorer_options": {ROLLOUT: {"k": 1, "max_new_tokens": 64}}}


def figures(rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's three figures from the table rows and the per-problem records."""
    greedy = next(r for r in rows if r["budget"] is None)
    by_strategy: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["budget"] is not None:
            by_strategy.setdefault(r["strategy"], []).append(r)
    # 1. every strategy at its largest budget vs greedy
    fig1 = {}
    for name, rs in by_strategy.items():
        top = max(rs, key=lambda r: r["budget"])
        fig1[name] = {"budget": top["budget"], "accuracy": top["accuracy"], "greedy": greedy["accuracy"],
                      "beats_greedy": top["accuracy"] > greedy["accuracy"], "scorer": top["scorer"],
                      "uses_gold": top["uses_gold"]}
    # 2. tree search with the rollout scorer vs self-consistency's best
    fig2: dict[str, Any] = {}
    sc = by_strategy.get("sc", [])
    if sc:
        best = max(r["accuracy"] for r in sc)
        at_best = min((r for r in sc if r["accuracy"] == best), key=lambda r: r["generated_tokens"])
        fig2 = {"sc_best_accuracy": best, "sc_budget": at_best["budget"], "sc_tokens": at_best["generated_tokens"]}
        for name in ("rebase", "beam"):
            reach = sorted((r for r in by_strategy.get(name, []) if r["accuracy"] >= best),
                           key=lambda r: r["budget"])
            if not by_strategy.get(name):
                continue
            top = max(by_strategy[name], key=lambda r: (r["accuracy"], -r["generated_tokens"]))
            fig2[name] = {"reached": bool(reach), "best_accuracy": top["accuracy"], "best_budget": top["budget"],
                          "best_tokens": top["generated_tokens"], "scorer": top["scorer"], "uses_gold": top["uses_gold"]}
            if reach:
                r = reach[0]
                fig2[name].update({"budget": r["budget"], "accuracy": r["accuracy"], "tokens": r["generated_tokens"],
                                   "token_ratio_vs_sc": r["generated_tokens"] / at_best["generated_tokens"]})
        ratios = [fig2[n]["token_ratio_vs_sc"] for n in ("rebase", "beam") if "token_ratio_vs_sc" in fig2.get(n, {})]
        fig2["met"] = bool(ratios) and min(ratios) <= 0.5
    # 3. overhead outside generation and scoring, over all searches
    wall = sum(r["compute"]["wall_time_s"] for r in records)
    over = sum(r["compute"]["overhead_s"] for r in records)
    worst = max(rows, key=lambda r: r["overhead_pct"])
    fig3 = {"overhead_pct": 100 * over / wall if wall else 0.0, "wall_s": wall,
            "worst_row": worst["label"], "worst_row_pct": worst["overhead_pct"]}
    fig3["met"] = fig3["overhead_pct"] < 10.0
    return {"1_vs_greedy": fig1, "2_tree_vs_sc": fig2, "3_overhead": fig3}


def print_figures(fig: dict[str, Any]) -> None:
    pct = lambda x: f"{100 * x:.1f}%"
    print("\n1. every strategy at its largest budget vs greedy:")
    for name, f in fig["1_vs_greedy"].items():
        gold = " [scorer uses the gold answer]" if f["uses_gold"] else ""
        print(f"   {name:7s} @{f['budget']:<5d} {pct(f['accuracy']):>6s} vs greedy {pct(f['greedy'])}: "
              f"{'beats' if f['beats_greedy'] else 'DOES NOT beat'} greedy{gold}")
    f2 = fig["2_tree_vs_sc"]
    if f2:
        print(f"\n2. self-consistency's best: {pct(f2['sc_best_accuracy'])} at budget {f2['sc_budget']} "
              f"({f2['sc_tokens']:.0f} generated tokens per problem). With the {ROLLOUT} scorer "
              "(Math-Shepherd rollouts judged against the GOLD answer):")
        for name in ("rebase", "beam"):
            r = f2.get(name)
            if r is None:
                continue
            best = (f"its best: {pct(r['best_accuracy'])} at budget {r['best_budget']} "
                    f"({r['best_tokens']:.0f} tokens)")
            if not r["reached"]:
                print(f"   {name:7s} does not reach it; {best}")
            else:
                print(f"   {name:7s} reaches {pct(r['accuracy'])} at budget {r['budget']} with {r['tokens']:.0f} tokens "
                      f"= {r['token_ratio_vs_sc']:.2f}x self-consistency's tokens; {best}")
        print(f"   target (at most half of SC's tokens): {'met' if f2['met'] else 'NOT met'}")
    f3 = fig["3_overhead"]
    print(f"\n3. search overhead outside generation, scoring and answer reading: {f3['overhead_pct']:.2f}% of "
          f"{f3['wall_s']:.0f} s wall (worst row {f3['worst_row']}: {f3['worst_row_pct']:.2f}%); "
          f"target < 10%: {'met' if f3['met'] else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=("tiny", "smollm2"), help="which preset")
    ap.add_argument("--task", default=None, help="override the preset's task spec")
    ap.add_argument("--task-options", default=None, help="override the preset's task options (YAML)")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--budgets", default=None, help="comma-separated (default 128,256,512; --quick 64,128,256)")
    ap.add_argument("--limit", type=int, default=None, help="problems (default 50; --quick 12)")
    ap.add_argument("--quick", action="store_true", help="a 1-2 minute run: fewer problems, smaller budgets")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on 2 shared cores tiny ran 10x faster with one thread than two)")
    ap.add_argument("--out", default=None, help="run directory (default runs/bench-search-<model>[-quick])")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from reasonlab import config as config_lib
    from reasonlab.evaluation.harness import task_options
    from reasonlab.runtime import RunDir
    from reasonlab.search import report
    from reasonlab.search.runner import RESULTS, SearchConfig, plan, run_search
    from reasonlab.tasks import load_task

    if args.budgets:
        budgets = [int(b) for b in args.budgets.split(",")]
    else:
        budgets = ([64, 128, 256] if args.quick else [128, 256, 512]) if args.model == "tiny" else \
                  ([128, 256, 512] if args.quick else [256, 512, 1024])
    limit = args.limit or (12 if args.quick else 50)
    preset = (tiny_preset if args.model == "tiny" else smollm2_preset)(budgets)
    if args.task:
        preset["task"] = args.task
    if args.task_options is not None:
        preset["task_options"] = args.task_options
    out = Path(args.out or f"runs/bench-search-{args.model}{'-quick' if args.quick else ''}")
    values = {**preset, "strategies": args.strategies, "budgets": ",".join(map(str, budgets)), "limit": limit,
              "out": str(out), "threads": args.threads,
              "options": json.dumps(preset["options"]), "scorer_options": json.dumps(preset["scorer_options"])}
    cfg = config_lib.build(SearchConfig, values)
    t0 = time.time()
    rows = run_search(cfg)
    minutes = (time.time() - t0) / 60
    # The records behind this table: this grid's cells on these problems (a resumed directory may hold more).
    task = load_task(cfg.task, **task_options(cfg))
    ids = {e.id for e in task.examples(cfg.split, cfg.limit)}
    task.close()
    fingerprints = {c.fingerprint for c in plan(cfg)}
    records = [r for r in RunDir(out).read_jsonl(RESULTS) if r["fingerprint"] in fingerprints and r["example_id"] in ids]
    print(f"\n{cfg.model} on {cfg.task}: {len(ids)} problems, budgets {budgets}, {minutes:.1f} min "
          f"(this invocation; resumed work is not re-timed)\n")
    print(report.markdown_table(rows))
    fig = figures(rows, records)
    print_figures(fig)
    (out / "figures.json").write_text(json.dumps(fig, indent=2) + "\n")
    print(f"\nrun directory: {out}/ (report.html, scaling.png, table.md, figures.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
