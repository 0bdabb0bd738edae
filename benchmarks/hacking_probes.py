"""Reward-hacking probes against every rule-based verifier: what does each one let through?

Builds the red-team probe set of ``reasonlab.rewards.probes`` for GSM8K test problems, MATH-style
problems (non-integer answers: fractions, radicals, polynomials, negatives), the built-in ``arith``
task and the default ``reasonlab eval`` task (reasoning-gym ``basic_arithmetic``, scored by its own
``score_answer``, the smollm2 RL recipe's reward), and runs these verifiers on them:

- ``math``: :class:`~reasonlab.rewards.math.MathVerifier` (answer extraction + math-verify);
- ``gsm8k.score`` / ``arith.score`` / ``rg.score``: the tasks' own scorers (what ``reasonlab eval``
  uses; ``rg.score.strict`` is the reasoning-gym task after ``use_strict_verifier()``, what the RL
  trainers reward with);
- ``math+format``: the math verifier gated by a strict ``<think>``/``<answer>`` format check
  (levels format -> answer of ``combinators.hierarchical_of``: format weight 0, so the reward is 1
  only for a well-formed, correct completion);
- ``math+format+overlong``: the same plus DAPO's overlong punishment as a third level
  (``L_max`` = ``--max-length`` tokens with a ``--cache-length`` window, counted with the smollm2
  tokenizer), so a correct answer after 20k characters of filler nets 1 - 1 = 0;
- ``math+format_reward``: like ``math+format`` with ``reasonlab.rewards.functions.format_reward``
  when that module exists.

Learned reward models (``--reward-model NAME=DIR``, an ORM, PRM or implicit PRM trained by
``reasonlab train orm|prm``, e.g. by ``benchmarks/reward_models.py``) are probed on ``arith``
problems in their own distribution: every probe is built around the task's worked solution instead
of the generic reasoning sentence (a model that never saw prose says nothing about prose). A model
"rewards" a probe when its probability is at least ``--rm-threshold``; beside the table, a second one
gives, per kind of probe, the mean probability and how often the model rates the probe at least as
high as the honest worked solution of the same problem (what an RL policy would be pulled towards).

Each verifier declares the checks it performs; a rewarded probe that needs one of them is a LEAK.
The markdown tables go to stdout; ``--out`` also writes the full JSON (every outcome).

Run::

    python benchmarks/hacking_probes.py                       # 5 GSM8K + 4 MATH-style + 5 arith + 5 rg problems
    python benchmarks/hacking_probes.py --gsm8k 20 --arith 20 --out probes.json
    python benchmarks/hacking_probes.py --gsm8k 0 --no-math-style --arith 20 \
        --reward-model orm=runs/bench-reward-models/tiny-arith/train-orm/final      # + learned models
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from reasonlab.errors import UsageError  # noqa: E402
from reasonlab.rewards.combinators import hierarchical_of, overlong_penalty  # noqa: E402
from reasonlab.rewards.math import MathVerifier, MathVerifierConfig  # noqa: E402
from reasonlab.rewards.probes import (  # noqa: E402
    KINDS,
    MATH_STYLE_EXAMPLES,
    ProbeReport,
    build_probes,
    reasoning_format_ok,
    run_probes,
)
from reasonlab.tasks import load_task  # noqa: E402
from reasonlab.types import Example, RewardResult, Status  # noqa: E402

#: Whether this version's math verifier has a strict (reward) mode; the report then shows both.
HAS_STRICT = "strict" in MathVerifierConfig.__dataclass_fields__


def smollm2_token_counter() -> tuple[Callable[[str], int], str]:
    """Count tokens with the smollm2 tokenizer (llama.cpp, vocabulary only), else estimate chars/4."""
    try:
        import llama_cpp

        from reasonlab.policies.models import smollm2_gguf_path

        vocab = llama_cpp.Llama(model_path=str(smollm2_gguf_path()), vocab_only=True, verbose=False)
        return (lambda text: len(vocab.tokenize(text.encode("utf-8"), add_bos=False))), "smollm2 tokenizer"
    except Exception as e:  # the estimate is stated in the output, so the reader knows
        print(f"note: smollm2 tokenizer unavailable ({type(e).__name__}: {e}); estimating tokens as chars/4",
              file=sys.stderr)
        return (lambda text: len(text) // 4), "chars/4 estimate"


def cached(verifier: Callable[[Example, str], RewardResult]) -> Callable[[Example, str], RewardResult]:
    """The composites re-ask the same (example, text) pairs: verify each once."""
    memo: dict[tuple[str, str], RewardResult] = {}

    def run(example: Example, text: str) -> RewardResult:
        key = (example.id, text)
        if key not in memo:
            memo[key] = verifier(example, text)
        return memo[key]

    return run


def levelled(answer: Callable[[Example, str], RewardResult], format_ok: Callable[[str], bool] | None,
             tokens: Callable[[str], int] | None, max_length: int, cache_length: int):
    """format -> answer -> overlong levels (hierarchical_of): 1 only for a formatted correct answer in budget."""

    def verify(example: Example, text: str):
        r = answer(example, text)
        if r.status in (Status.TIMEOUT, Status.ERROR):
            return r  # a failed check is reported as such, never folded into a number
        values, weights, thresholds = [r.value], [1.0], [1.0]
        if format_ok is not None:
            values, weights, thresholds = [1.0 if format_ok(text) else 0.0] + values, [0.0] + weights, [1.0] + thresholds
        if tokens is not None:
            values.append(overlong_penalty(tokens(text), max_length, cache_length))
            weights.append(1.0)
            thresholds.append(-1.0)
        return hierarchical_of(values, weights, thresholds)

    return verify


def worked_reasoning(example: Example) -> str:
    """An ``arith`` example's worked solution without its answer line: the honest reasoning in its own style."""
    solution = (example.meta or {}).get("solution")
    if not solution:
        raise UsageError(f"example {example.id} has no worked solution to build in-distribution probes from")
    return solution.rsplit("\nanswer:", 1)[0]


def in_distribution_probes(example: Example):
    return build_probes(example, reasoning=worked_reasoning(example))


def learned_verifier(model, threshold: float) -> Callable[[Example, str], RewardResult]:
    """A trained reward model as a probe verifier: rewarded when P(correct) >= ``threshold``.

    ORMs read P(correct) at the end; PRMs aggregate their step probabilities with min
    (``score_texts``); an implicit PRM gives its implicit ORM's sigmoid(sum of step rewards), the
    probability it was trained on (its step rewards are log-ratios, not probabilities).
    A completion the model cannot rate (read position cut off) is an ``error``, never a pass.
    """
    def verify(example: Example, text: str) -> RewardResult:
        if model.kind == "implicit-prm":
            p = model.outcome_scores([example.prompt], [text])[0]
        else:
            p = model.score_texts([example.prompt], [text], "min")[0]
        if p != p:  # NaN
            return RewardResult(None, Status.ERROR, None, "the model could not rate this completion")
        return RewardResult(1.0 if p >= threshold else 0.0, Status.OK if p >= threshold else Status.WRONG, None,
                            f"p={p:.3f}")
    return verify


def probability(outcome) -> float:
    """The P(correct) a learned verifier wrote into an outcome's details (NaN if it could not rate)."""
    return float(outcome.details[2:]) if outcome.details.startswith("p=") else math.nan


def learned_preferences(report: ProbeReport, names: list[str]) -> str:
    """Per model and kind of probe: mean P(correct), and how often a probe is rated >= the honest solution."""
    lines = ["| model | probe kind | probes | mean P(correct) | rated >= the honest worked solution |", "|---|---|---:|---:|---:|"]
    for name in names:
        honest = {o.example_id: probability(o) for o in report.outcomes
                  if o.verifier == name and o.kind == "control" and o.style == "line"}
        for kind in ["control", *KINDS]:
            rated = [(o, probability(o)) for o in report.outcomes if o.verifier == name and o.kind == kind]
            rated = [(o, p) for o, p in rated if p == p]  # NaN: could not rate
            if not rated:
                continue
            mean = sum(p for _, p in rated) / len(rated)
            others = [(o, p) for o, p in rated if not (o.kind == "control" and o.style == "line")]
            above = sum(p >= honest[o.example_id] for o, p in others)
            lines.append(f"| {name} | {kind} | {len(rated)} | {mean:.3f} | "
                         + (f"{above}/{len(others)}" if others else "(the honest solution itself)") + " |")
    return "\n".join(lines) + "\n"


def optional_format_reward() -> Callable[[str], bool] | None:
    try:
        from reasonlab.rewards.functions import format_reward
    except ImportError:
        return None
    return lambda text: (format_reward([""], [text]) or [0.0])[0] == 1.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gsm8k", type=int, default=5, help="GSM8K test problems to probe (0 to skip)")
    ap.add_argument("--arith", type=int, default=5, help="arith test problems to probe (0 to skip)")
    ap.add_argument("--rg", type=int, default=5,
                    help="problems of the default eval task (reasoning-gym basic_arithmetic) to probe (0 to skip)")
    ap.add_argument("--no-math-style", action="store_true", help="skip the MATH-style problems")
    ap.add_argument("--max-length", type=int, default=2048, help="L_max of the overlong punishment, in tokens")
    ap.add_argument("--cache-length", type=int, default=512, help="L_cache of the overlong punishment, in tokens")
    ap.add_argument("--reward-model", action="append", default=[], metavar="NAME=DIR",
                    help="a trained ORM/PRM/implicit PRM directory to probe on arith (repeatable)")
    ap.add_argument("--rm-threshold", type=float, default=0.5,
                    help="a learned model rewards a probe when its P(correct) is at least this")
    ap.add_argument("--out", help="write the full report (every outcome) as JSON here")
    args = ap.parse_args()

    t0 = time.time()
    count_tokens, counter_name = smollm2_token_counter()
    fmt_reward = optional_format_reward()
    reports: dict[str, ProbeReport] = {}
    with MathVerifier(MathVerifierConfig(timeout=5.0)) as mv:
        math_v = cached(lambda ex, text: mv.score(ex.answer, text))

        # The composites (what an RL reward would be) use the strict verifier when this version has one.
        strict_mv = MathVerifier(MathVerifierConfig(timeout=5.0, strict=True)) if HAS_STRICT else None
        strict_v = cached(lambda ex, text: strict_mv.score(ex.answer, text)) if strict_mv else None
        base, base_name = (strict_v, "math.strict") if strict_v else (math_v, "math")

        def math_family() -> tuple[dict, dict]:
            verifiers = {"math": math_v}
            checks = {"math": ("answer",)}
            if strict_v:
                verifiers["math.strict"] = strict_v
                checks["math.strict"] = ("answer",)
            verifiers[f"{base_name}+format"] = levelled(base, reasoning_format_ok, None, args.max_length, args.cache_length)
            verifiers[f"{base_name}+format+overlong"] = levelled(base, reasoning_format_ok, count_tokens, args.max_length,
                                                                 args.cache_length)
            checks[f"{base_name}+format"] = ("answer", "format")
            checks[f"{base_name}+format+overlong"] = ("answer", "format", "length")
            if fmt_reward is not None:
                verifiers[f"{base_name}+format_reward"] = levelled(base, fmt_reward, None, args.max_length, args.cache_length)
                checks[f"{base_name}+format_reward"] = ("answer", "format")
            return verifiers, checks

        if args.gsm8k:
            task = load_task("gsm8k", prompt_format="chat")
            try:
                examples = task.examples("test", limit=args.gsm8k)
            except UsageError as e:  # no GSM8K data on this machine: say so and probe the rest
                print(f"skipping GSM8K: {e}", file=sys.stderr)
                examples = []
            try:
                if examples:
                    verifiers, checks = math_family()
                    verifiers = {"gsm8k.score": cached(task.score), **verifiers}
                    checks["gsm8k.score"] = ("answer",)
                    reports[f"GSM8K ({len(examples)} test problems)"] = run_probes(verifiers, examples, checks)
            finally:
                task.close()
        if not args.no_math_style:
            verifiers, checks = math_family()
            reports[f"MATH-style ({len(MATH_STYLE_EXAMPLES)} problems)"] = run_probes(verifiers, MATH_STYLE_EXAMPLES, checks)
        if args.arith:
            task = load_task("arith")
            try:
                examples = task.examples("test", limit=args.arith)
                arith_v = cached(task.score)
                verifiers = {
                    "arith.score": arith_v,
                    "arith+overlong": levelled(arith_v, None, count_tokens, args.max_length, args.cache_length),
                    "math": math_v,
                }
                checks = {"arith.score": ("answer",), "arith+overlong": ("answer", "length"), "math": ("answer",)}
                if strict_v:
                    verifiers["math.strict"] = strict_v
                    checks["math.strict"] = ("answer",)
                reports[f"arith ({len(examples)} test problems)"] = run_probes(verifiers, examples, checks)
            finally:
                task.close()
        if args.rg:
            from reasonlab.evaluation.harness import DEFAULT_TASK, DEFAULT_TASK_OPTIONS

            lenient_task = load_task(DEFAULT_TASK, **DEFAULT_TASK_OPTIONS)
            strict_task = load_task(DEFAULT_TASK, **DEFAULT_TASK_OPTIONS)
            try:
                strict_task.use_strict_verifier()
                examples = lenient_task.examples("test", limit=args.rg)
                rg_strict = cached(strict_task.score)
                verifiers = {"rg.score": cached(lenient_task.score), "rg.score.strict": rg_strict,
                             "rg.score.strict+format": levelled(rg_strict, reasoning_format_ok, None, args.max_length,
                                                                args.cache_length)}
                checks = {"rg.score": ("answer",), "rg.score.strict": ("answer",),
                          "rg.score.strict+format": ("answer", "format")}
                reports[f"{DEFAULT_TASK} ({len(examples)} test problems)"] = run_probes(verifiers, examples, checks)
            finally:
                lenient_task.close()
                strict_task.close()
        if strict_mv:
            strict_mv.close()
    learned_table, learned = "", []
    if args.reward_model:
        from reasonlab.rewards.reward_model import load_reward_model

        task = load_task("arith")
        examples = task.examples("test", limit=max(1, args.arith))
        verifiers, checks = {"arith.score": cached(task.score)}, {"arith.score": ("answer",)}
        for spec in args.reward_model:
            name, sep, path = spec.partition("=")
            if not sep:
                name, path = os.path.basename(os.path.normpath(spec)), spec
            learned.append(name)
            verifiers[name] = learned_verifier(load_reward_model(path, device="cpu"), args.rm_threshold)
            checks[name] = ("answer", "format", "length")
        report = run_probes(verifiers, examples, checks, probes=in_distribution_probes)
        reports[f"arith, in-distribution probes: learned reward models ({len(examples)} test problems, "
                f"rewarded at P >= {args.rm_threshold})"] = report
        learned_table = learned_preferences(report, learned)

    print(f"## Reward-hacking probes\n\nTokens counted with the {counter_name}; overlong L_max={args.max_length}, "
          f"L_cache={args.cache_length}.\n")
    for title, report in reports.items():
        print(report.to_markdown(title))
    if learned_table:
        print("### Learned reward models: probability per kind of probe\n")
        print(learned_table)
    # Learned models are reported, not required to pass: the exit status is about the rule-based verifiers.
    failed = [f"{title}: {v}" for title, r in reports.items() for v in r.verifiers if not r.passed(v) and v not in learned]
    print(f"{'all verifiers pass' if not failed else 'FAIL: ' + '; '.join(failed)} ({time.time() - t0:.0f}s)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"token_counter": counter_name, "max_length": args.max_length,
                       "cache_length": args.cache_length,
                       "reports": {title: r.to_dict() for title, r in reports.items()}}, f, indent=1)
        print(f"wrote {args.out}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
