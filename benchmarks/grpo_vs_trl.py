"""GRPO training speed: reasonlab's ``learn/grpo.py`` vs TRL's ``GRPOTrainer``, side by side in one run.

Issue 4 ("It is faster than TRL") asks for reasonlab GRPO steps/s ÷ TRL GRPOTrainer steps/s >= 2 on
the same machine with: the same model (``smollm2`` as a normal transformers checkpoint), the same
prompts per step, 8 completions per prompt, at most 64 new tokens, one policy iteration (mu = 1)
and beta = 0. This script measures exactly that. Both sides get:

- the same checkpoint, loaded the same way (``AutoModelForCausalLM.from_pretrained``, float32, CPU,
  full fine-tuning: no LoRA, no gradient checkpointing, no mixed precision);
- the same prompts in the same order: step ``i`` trains on problems ``i*P .. i*P+P-1`` of the task's
  train split (TRL with ``shuffle_dataset=False``, reasonlab's prompt order pinned to the same
  list), rendered by the model's chat template; the workers report a hash of the prompt token ids of
  every step and the table says whether they matched;
- the same reward: the task's own verifier (reasonlab's ``TaskReward``) on the decoded completion;
- the same update: sampling at temperature 1 (no top-k/top-p), group-normalised advantages
  (TRL ``scale_rewards="group"``), token-mean loss over the whole batch (TRL ``loss_type="dapo"``,
  reasonlab ``loss_agg="token_mean"``), clip 0.2, AdamW (torch, not fused) at a constant learning
  rate, gradient-norm clipping at 1.0, and ONE optimizer step per ``P x 8`` completions, in
  micro-batches of ``--micro-batch`` completions (TRL: ``per_device_train_batch_size`` = micro-batch,
  ``gradient_accumulation_steps`` = P*8 / micro-batch, so one generation feeds one optimizer step and
  TRL computes no separate old-log-prob pass; reasonlab: ``micro_batch_size`` = micro-batch);
- the same number of torch threads (``--threads``, also OMP/MKL_NUM_THREADS) and the same OpenMP
  wait policy, ``passive`` by default: on a machine where other jobs run, OpenMP threads that
  spin-wait at every barrier burn the core their partner thread needs, and a step then measures the
  scheduler more than the library (on the 2-core development machine, with other jobs running,
  16 x 24 tokens of smollm2 sampling took 60-105 s spinning and 9-13 s passive, for both samplers).

Each side runs in its own worker process (``_reasonlab_side.py``, ``_trl_side.py``) that loads the
model once and then runs steps on request: one untimed warm-up step each, then ``--rounds`` rounds
of ``--steps`` timed steps, alternating reasonlab, TRL, reasonlab, TRL, ... so that noise from other
work on the machine hits both. The idle worker waits on its pipe and uses no CPU. The figure is the
median step time over all timed steps of a side.

Where a step's time goes is measured the same way on both sides (see :class:`StepProfiler`):
``generation`` is the sampler call (reasonlab ``HFPolicy.generate_ids``, TRL
``GRPOTrainer._generate_single_turn`` = ``model.generate``), and of it, the time inside the model's
forward; ``scoring`` the reward call; ``train fwd`` the model forwards with gradients; ``backward``
``Tensor.backward``; ``optim`` ``optimizer.step``; ``other`` the rest of the step (padding,
advantages, losses, gradient clipping, framework overhead).

TRL is deliberately NOT a dependency of reasonlab: it is installed, without its dependencies (its
runtime needs -- transformers, accelerate, datasets -- are already in a reasonlab environment with
the dev extras), into a private directory that only the TRL worker sees on its ``PYTHONPATH``::

    python benchmarks/grpo_vs_trl.py --setup                 # pip install --no-deps --target benchmarks/.trl trl==1.16.0
    python benchmarks/grpo_vs_trl.py --out grpo_vs_trl.json  # smollm2, 8 prompts x 8, 3 steps x 2 rounds
    python benchmarks/grpo_vs_trl.py --model tiny --prompts 2 --steps 1 --rounds 1   # a quick smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TRL_VERSION = "1.16.0"
#: What TRL itself needs at runtime besides torch and transformers; checked by --setup.
TRL_RUNTIME_DEPS = ("accelerate", "datasets")
#: The default task: the eval harness's default (two-term sums, three worked examples as chat turns).
DEFAULT_TASK = "rg:basic_arithmetic"


@dataclass(frozen=True)
class BenchSettings:
    """What both workers are told; identical for both sides by construction."""

    model_path: str
    """Transformers checkpoint directory both sides load."""
    task: str
    """Task spec (reasonlab.tasks.load_task)."""
    task_options: str
    """Task options as JSON."""
    prompts: int
    """Prompts (groups) per optimizer step."""
    group_size: int
    """Completions per prompt."""
    max_new_tokens: int
    """Longest completion."""
    temperature: float
    """Sampling temperature."""
    lr: float
    """Constant AdamW learning rate."""
    micro_batch: int
    """Completions per forward/backward pass."""
    threads: int
    """torch intra-op threads."""
    seed: int
    """Sampling / init seed (the two libraries consume randomness differently; prompts do not depend on it)."""
    total_steps: int
    """Warm-up plus timed steps: how many prompt batches the workers prepare."""


# ------------------------------------------------------------------------------------------------
# Shared by both workers
# ------------------------------------------------------------------------------------------------

def load_examples(s: BenchSettings) -> tuple[Any, list[Any]]:
    """The task and the ``prompts * total_steps`` training problems, in the order both sides train on them.

    Stop strings are switched off: TRL's ``model.generate`` path cannot stop on strings (it stops at
    EOS), so reasonlab's sampler must not either, or it would generate less.
    """
    from reasonlab.tasks import load_task

    task = load_task(s.task, **json.loads(s.task_options))
    if getattr(task, "stop", ()):
        task.stop = ()
    examples = task.examples("train", limit=s.prompts * s.total_steps)
    if len(examples) < s.prompts * s.total_steps:
        from reasonlab.errors import UsageError

        raise UsageError(f"task {s.task} has {len(examples)} training problems; the benchmark needs "
                         f"{s.prompts * s.total_steps} (fewer --prompts, --steps or --rounds)")
    return task, examples


def prompt_hash(prompt_ids: list[list[int]]) -> str:
    """A short hash of the distinct prompts of a step (order- and repetition-free)."""
    distinct = sorted({tuple(p) for p in prompt_ids})
    return hashlib.sha256(json.dumps(distinct).encode()).hexdigest()[:12]


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


class StepProfiler:
    """Wall-clock split of a training step, measured identically for both libraries.

    Forward time comes from hooks on the model's top-level module (a forward inside the sampler
    counts as generation model time; other forwards count as training forwards when gradients are
    on, as no-grad forwards otherwise); backward time from a wrapper around ``torch.Tensor.backward``;
    generation, scoring and optimizer time from wrappers the workers put around the library's own
    calls (:meth:`wrap`). On a CPU every op runs synchronously, so wall-clock spans are exact.
    """

    def __init__(self, model) -> None:
        import torch

        self.t: dict[str, float] = defaultdict(float)
        self.in_generation = False
        self._t0 = 0.0
        model.register_forward_pre_hook(self._before_forward)
        model.register_forward_hook(self._after_forward)
        original = torch.Tensor.backward
        prof = self

        def backward(tensor, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(tensor, *args, **kwargs)
            finally:
                prof.t["backward_s"] += time.perf_counter() - t0

        torch.Tensor.backward = backward  # this worker process only

    def _before_forward(self, module, args) -> None:
        self._t0 = time.perf_counter()

    def _after_forward(self, module, args, output) -> None:
        import torch

        dt = time.perf_counter() - self._t0
        if self.in_generation:
            self.t["generation_model_s"] += dt
        elif torch.is_grad_enabled():
            self.t["train_forward_s"] += dt
        else:
            self.t["nograd_forward_s"] += dt

    def wrap(self, key: str, fn: Callable, generation: bool = False) -> Callable:
        """``fn`` timed into ``key``; with ``generation`` its model forwards count as generation."""

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            before, self.in_generation = self.in_generation, self.in_generation or generation
            try:
                return fn(*args, **kwargs)
            finally:
                self.in_generation = before
                self.t[key] += time.perf_counter() - t0

        return timed

    def add(self, key: str, seconds: float) -> None:
        self.t[key] += seconds

    def take(self, step_s: float) -> dict[str, float]:
        """This step's split (``other_s`` is what no probe saw) and a reset for the next step."""
        keys = ("generation_s", "generation_model_s", "scoring_s", "train_forward_s", "nograd_forward_s",
                "backward_s", "optimizer_s")
        out = {"step_s": step_s, **{k: self.t.get(k, 0.0) for k in keys}}
        seen = sum(out[k] for k in keys if k != "generation_model_s")  # model time is part of generation_s
        out["other_s"] = step_s - seen
        self.t.clear()
        return out


class Channel:
    """The worker's end of the pipe: JSON lines on the original stdout; everything printed goes to stderr.

    Libraries print to stdout (warnings, progress); moving fd 1 onto stderr keeps the protocol clean.
    """

    def __init__(self) -> None:
        sys.stdout.flush()
        self._out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)

    def send(self, obj: dict[str, Any]) -> None:
        self._out.write(json.dumps(obj) + "\n")
        self._out.flush()

    def recv(self) -> dict[str, Any]:
        line = sys.stdin.readline()
        return json.loads(line) if line else {"cmd": "stop"}


def worker_main(run: Callable[[BenchSettings, Channel], None]) -> None:
    """Entry point of a worker script: parse the settings, run, report a failure as one JSON line."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    chan = Channel()
    settings = BenchSettings(**json.loads(sys.argv[1]))
    set_threads(settings.threads)
    try:
        run(settings, chan)
    except BaseException as e:  # the parent shows the message and points at the worker's log
        import traceback

        traceback.print_exc()
        chan.send({"error": f"{type(e).__name__}: {e}"})
        sys.exit(1)


# ------------------------------------------------------------------------------------------------
# The parent: start both workers, alternate them, summarise
# ------------------------------------------------------------------------------------------------

class WorkerError(RuntimeError):
    pass


class Worker:
    """One side, in its own process; ``steps(n)`` runs n training steps there and returns their records."""

    def __init__(self, name: str, script: str, settings: BenchSettings, log_path: Path, pythonpath: str | None,
                 verbose: bool, omp_wait_policy: str):
        env = dict(os.environ)
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false",
                   OMP_NUM_THREADS=str(settings.threads), MKL_NUM_THREADS=str(settings.threads),
                   PYTHONWARNINGS="ignore")
        if omp_wait_policy != "unset":
            env["OMP_WAIT_POLICY"] = omp_wait_policy.upper()
        # Only the TRL worker sees TRL; the reasonlab worker runs with reasonlab's own environment.
        paths = [p for p in (pythonpath, str(HERE), os.environ.get("PYTHONPATH")) if p]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        self.name, self.log_path = name, log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, str(HERE / script), json.dumps(dataclasses.asdict(settings))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=None if verbose else self._log, text=True, env=env, bufsize=1)
        self.info = self._read()  # the worker says "ready" once its model is loaded

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise WorkerError(f"{self.name} worker exited (code {self.proc.returncode}); see {self.log_path}")
        msg = json.loads(line)
        if "error" in msg:
            raise WorkerError(f"{self.name} worker failed: {msg['error']} (log: {self.log_path})")
        return msg

    def steps(self, n: int) -> list[dict[str, Any]]:
        self.proc.stdin.write(json.dumps({"cmd": "steps", "n": n}) + "\n")
        self.proc.stdin.flush()
        return self._read()["steps"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "stop"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the per-step figures of one side."""
    keys = [k for k in records[0] if isinstance(records[0][k], (int, float)) and not isinstance(records[0][k], bool)]
    med = {k: statistics.median(r[k] for r in records) for k in keys}
    med["steps_per_s"] = 1.0 / med["step_s"]
    med["n_steps"] = len(records)
    return med


def markdown_table(sides: dict[str, dict[str, Any]]) -> str:
    cols = [("s/step", "step_s", "{:.2f}"), ("steps/s", "steps_per_s", "{:.4f}"),
            ("generation", "generation_s", "{:.2f}"), ("(model fwd)", "generation_model_s", "{:.2f}"),
            ("scoring", "scoring_s", "{:.2f}"), ("train fwd", "train_forward_s", "{:.2f}"),
            ("no-grad fwd", "nograd_forward_s", "{:.2f}"), ("backward", "backward_s", "{:.2f}"),
            ("optim", "optimizer_s", "{:.2f}"), ("other", "other_s", "{:.2f}"),
            ("completion len", "completion_len_mean", "{:.1f}"), ("truncated", "truncation_rate", "{:.2f}"),
            ("prompt len", "prompt_len_mean", "{:.1f}"), ("reward", "reward_mean", "{:.3f}")]
    lines = ["| side | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, med in sides.items():
        lines.append(f"| {name} | " + " | ".join(fmt.format(med[k]) for _, k, fmt in cols) + " |")
    return "\n".join(lines)


def setup_trl(trl_path: Path) -> None:
    """Install TRL (no dependencies) into ``trl_path`` and check that what it needs is importable."""
    import importlib.util

    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--upgrade", "--target", str(trl_path),
           f"trl=={TRL_VERSION}"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    missing = [d for d in TRL_RUNTIME_DEPS if importlib.util.find_spec(d) is None]
    if missing:
        print(f"note: TRL also needs {', '.join(missing)} in this environment: pip install {' '.join(missing)}")


def check_trl(trl_path: Path) -> None:
    from reasonlab.errors import UsageError

    meta = list(trl_path.glob("trl-*.dist-info"))
    if not (trl_path / "trl" / "__init__.py").is_file():
        raise UsageError(f"TRL is not installed in {trl_path}; run this script with --setup (or pass --trl-path)")
    if meta and meta[0].name != f"trl-{TRL_VERSION}.dist-info":
        print(f"warning: {trl_path} holds {meta[0].name[:-10]}, the benchmark was written for trl {TRL_VERSION}",
              file=sys.stderr)


def other_load() -> list[str]:
    """Other busy processes on the machine (ps), so that a noisy run says so."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,rss,comm", "--sort=-pcpu"], capture_output=True, text=True,
                             timeout=10, check=False).stdout.splitlines()[1:]
    except (OSError, subprocess.SubprocessError):
        return []
    busy = []
    for line in out:
        pid, pcpu, rss, comm = line.split(None, 3)
        if int(pid) != os.getpid() and float(pcpu) >= 20:
            busy.append(f"pid {pid} {comm} {pcpu}% cpu {int(rss) // 1024} MiB")
    return busy


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="smollm2, tiny or a transformers checkpoint directory")
    ap.add_argument("--task", default=None, help=f"task spec (default {DEFAULT_TASK}; arith for --model tiny)")
    ap.add_argument("--task-options", default=None,
                    help="task options as YAML/JSON (default: the eval harness's options for the default task)")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per optimizer step")
    ap.add_argument("--group-size", type=int, default=8, help="completions per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--micro-batch", type=int, default=16,
                    help="completions per forward/backward on both sides (must divide prompts x group size)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each worker")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per side per round")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of reasonlab-then-TRL")
    ap.add_argument("--omp-wait-policy", choices=("passive", "active", "unset"), default="passive",
                    help="OMP_WAIT_POLICY of both workers (see the module docstring for why passive)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trl-path", type=Path, default=HERE / ".trl",
                    help="directory TRL is installed in (only the TRL worker sees it)")
    ap.add_argument("--setup", action="store_true",
                    help=f"only install TRL: pip install --no-deps trl=={TRL_VERSION} into --trl-path, then exit")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--verbose", action="store_true", help="show the workers' output instead of logging it")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from reasonlab.errors import UsageError

    args = parse_args(argv)
    try:
        return run(args)
    except (UsageError, WorkerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    import yaml

    from reasonlab.errors import UsageError
    from reasonlab.policies.models import resolve_model

    if args.setup:
        setup_trl(args.trl_path)
        return 0
    check_trl(args.trl_path)
    for name in ("prompts", "group_size", "max_new_tokens", "micro_batch", "threads", "steps", "rounds"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    if args.group_size < 2:
        raise UsageError("--group-size must be >= 2 (GRPO normalises rewards within a group)")
    batch = args.prompts * args.group_size
    if batch % args.micro_batch:
        raise UsageError(f"--micro-batch {args.micro_batch} must divide prompts x group size = {batch}")
    if args.task is None:
        args.task = "arith" if args.model == "tiny" else DEFAULT_TASK
    if args.task_options is None:
        from reasonlab.evaluation.harness import DEFAULT_TASK_OPTIONS

        options = dict(DEFAULT_TASK_OPTIONS) if args.task == DEFAULT_TASK else {}
    else:
        options = yaml.safe_load(args.task_options) or {}
        if not isinstance(options, dict):
            raise UsageError(f"--task-options must be a mapping, got {args.task_options!r}")
    model_path = resolve_model(args.model).hf_checkpoint()
    settings = BenchSettings(model_path=str(model_path), task=args.task, task_options=json.dumps(options),
                             prompts=args.prompts, group_size=args.group_size, max_new_tokens=args.max_new_tokens,
                             temperature=args.temperature, lr=args.lr, micro_batch=args.micro_batch,
                             threads=args.threads, seed=args.seed, total_steps=1 + args.steps * args.rounds)
    busy_before = other_load()
    load_before = os.getloadavg()
    print(f"model {args.model} ({model_path}); task {args.task}; {args.prompts} prompts x {args.group_size} "
          f"completions, <= {args.max_new_tokens} new tokens, micro-batch {args.micro_batch}, {args.threads} threads "
          f"(OMP_WAIT_POLICY {args.omp_wait_policy}); "
          f"warm-up 1 step, then {args.rounds} round(s) of {args.steps} step(s) per side", flush=True)
    if busy_before:
        print("note: other busy processes: " + "; ".join(busy_before), flush=True)

    log_dir = Path(tempfile.mkdtemp(prefix="grpo_vs_trl."))
    print(f"worker logs: {log_dir}", flush=True)
    workers: dict[str, Worker] = {}
    records: dict[str, list[dict[str, Any]]] = {"reasonlab": [], "TRL": []}
    warmup: dict[str, dict[str, Any]] = {}
    t_run = time.time()
    try:
        # Load one after the other: loading is not timed, but two loads at once would fight over 2 cores.
        workers["reasonlab"] = Worker("reasonlab", "_reasonlab_side.py", settings, log_dir / "reasonlab.log",
                                      None, args.verbose, args.omp_wait_policy)
        workers["TRL"] = Worker("TRL", "_trl_side.py", settings, log_dir / "trl.log", str(args.trl_path.resolve()),
                                args.verbose, args.omp_wait_policy)
        for name, w in workers.items():
            warmup[name] = w.steps(1)[0]
            print(f"{name}: warm-up step {warmup[name]['step_s']:.1f} s", flush=True)
        for r in range(args.rounds):
            for name, w in workers.items():
                for i in range(args.steps):  # one request per step: a progress line each, same timing
                    rec = w.steps(1)[0]
                    rec["round"] = r
                    records[name].append(rec)
                    print(f"round {r + 1}/{args.rounds} {name} step {i + 1}/{args.steps}: {rec['step_s']:.1f} s "
                          f"(generation {rec['generation_s']:.1f} s, {rec['completion_len_mean']:.1f} tokens/completion)",
                          flush=True)
    finally:
        for w in workers.values():
            w.close()

    sides = {name: summarise(recs) for name, recs in records.items()}
    ratio = sides["reasonlab"]["steps_per_s"] / sides["TRL"]["steps_per_s"]
    same_prompts = all(a["prompt_hash"] == b["prompt_hash"] for a, b in zip(records["reasonlab"], records["TRL"]))
    len_r, len_t = sides["reasonlab"]["completion_len_mean"], sides["TRL"]["completion_len_mean"]
    print()
    print(markdown_table(sides))
    print()
    print(f"reasonlab steps/s / TRL steps/s = {ratio:.2f} (target >= 2: {'met' if ratio >= 2 else 'NOT met'})")
    print(f"same prompt tokens every step on both sides: {same_prompts}; mean completion length "
          f"reasonlab {len_r:.1f} vs TRL {len_t:.1f} tokens")
    if not same_prompts:
        print("WARNING: the two sides trained on different prompt tokens; the comparison is not like for like")
    if abs(len_r - len_t) > 0.15 * max(len_r, len_t):
        print("WARNING: mean completion lengths differ by more than 15%; generation costs are not comparable")
    busy_after = other_load()
    if busy_after:
        print("note: other busy processes at the end: " + "; ".join(busy_after))
    if args.out:
        result = {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "settings": dataclasses.asdict(settings), "model": args.model, "steps": args.steps, "rounds": args.rounds,
            "omp_wait_policy": args.omp_wait_policy,
            "ratio_reasonlab_over_trl": ratio, "target_met": ratio >= 2, "same_prompts": same_prompts,
            "summary": sides, "warmup": warmup, "records": records,
            "workers": {name: w.info for name, w in workers.items()},
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_before": load_before,
                        "load_after": os.getloadavg(), "busy_before": busy_before, "busy_after": busy_after},
            "wall_s": time.time() - t_run,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
