"""GRPO and its critic-free relatives (RLOO, REINFORCE, REINFORCE++): reasoning RL with verifiable rewards.

Each step: take ``prompts_per_step`` training problems, sample ``group_size`` completions of each
with the policy's own sampler, score them with the reward functions, turn rewards into advantages,
and take ``mu`` clipped policy-gradient steps on exactly the sampled tokens. The loop is written out
in :func:`train`; the maths are the pure functions of ``losses.py``, chosen by name:

- ``advantage``: ``grpo`` (group mean and std, DeepSeekMath), ``drgrpo`` (no std scaling),
  ``grpo_batch_std``, ``rloo`` (leave-one-out), ``reinforce`` (batch mean), ``reinforce_pp``,
  ``reinforce_pp_baseline`` (REINFORCE++);
- ``loss_agg``: ``token_mean`` (DAPO), ``seq_mean_token_mean`` (GRPO), ``seq_mean_token_sum_norm``
  (Dr.GRPO); ``ratio``: ``token`` or ``sequence`` (GSPO); ``eps_low``/``eps_high`` (clip-higher),
  ``dual_clip``; ``beta`` with ``kl_estimator`` k1/k2/k3 (``beta = 0`` loads no reference model);
  ``entropy_coef``; ``dynamic_sampling`` (DAPO: drop groups whose rewards all agree, sample more);
  ``overlong_filter`` (DAPO: truncated samples get no loss) and ``overlong_buffer`` (DAPO's soft
  overlong punishment); ``negative_advantage_scale`` (below 1: lean on the samples that beat their group);
  ``downsample`` (PODS: train on the max-variance subset of each group);
- the cost, not the update: ``merge_twins`` (on by default) trains once on a completion sampled more than once
  for a prompt, with the twins' loss weights summed (``rollout.merge_twins``), and zero-advantage samples are
  skipped;
- the learning rate: ``lr_schedule`` constant, cosine, linear or wsd after ``warmup_steps``, decaying over the
  steps or, with ``schedule_horizon=time``, over the run's ``max_minutes``.

``rloo.py`` and ``reinforce.py`` are this loop with their advantage estimators and defaults.

Run::

    reasonlab train grpo --config recipes/grpo-tiny-arith.yaml
    reasonlab train grpo --model tiny --task arith --max-steps 100 --out runs/grpo-tiny

The run directory gets ``config.yaml``, ``metrics.jsonl`` (+ TensorBoard), ``curves.png``,
``eval/step_<N>/`` (held-out evaluations through the eval harness), ``checkpoints/``, ``final/`` and
``summary.json``; ``anomalies/`` when the monitor fires. Re-running the command resumes exactly.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, NamedTuple

from reasonlab import config as config_lib
from reasonlab.errors import UsageError


@dataclass(frozen=True)
class GRPOConfig:
    """Online RL with group-relative advantages (GRPO and variants) on a task with a verifier."""

    model: str = "tiny"
    """Policy to train: a built-in name (tiny, smollm2) or a local Hugging Face checkpoint directory."""
    task: str = "arith"
    """Task spec (see `reasonlab tasks`): training problems come from its train split."""
    task_options: str = ""
    """Task options as YAML/JSON, e.g. '{prompt_format: think}'."""
    train_split: str = "train"
    """Split the training prompts are drawn from."""
    out: str = "runs/grpo"
    """Run directory."""
    rewards: str = "accuracy"
    """Reward functions and weights: comma-separated name[=weight]; names: accuracy (the task's verifier),
    format (<think>/<answer> format), or module:function for any TRL-shaped function."""
    process_rewards: str = ""
    """Per-step rewards for process supervision (DeepSeekMath's process-supervised GRPO): steps (the task's step
    checker), prm:DIR (a trained PRM) or module:function; their token advantages are added to the outcome
    advantages. Empty: outcome rewards only."""
    process_coef: float = 1.0
    """Weight of the process advantages against the outcome advantages."""
    strict_rewards: bool = True
    """Score with the task's strict verifier where it has one (math and reasoning-gym answers: hedged, ambiguous or
    several answers earn nothing, and so does reasoning-gym's partial credit for merely containing the gold; see
    benchmarks/hacking_probes.py). Held-out evaluations use the same verifier."""
    reward_on_error: str = "raise"
    """A reward function that raises: raise (stop with its name; the last checkpoint is kept) or skip (report it
    and score the batch without it)."""
    advantage: str = "grpo"
    """Advantage estimator: grpo, drgrpo, grpo_batch_std, rloo, reinforce, reinforce_pp, reinforce_pp_baseline."""
    loss_agg: str = "token_mean"
    """Loss aggregation: token_mean (DAPO), seq_mean_token_mean (GRPO), seq_mean_token_sum_norm (Dr.GRPO)."""
    negative_advantage_scale: float = 1.0
    """Multiply negative advantages by this (0 to 1): below 1 the update leans on the samples that beat their
    group (see losses.scale_negative); 1 is plain GRPO. Samples left with advantage 0 are not trained on."""
    ratio: str = "token"
    """Importance ratio: token (PPO/GRPO) or sequence (GSPO)."""
    eps_low: float = 0.2
    """Lower clip range: the ratio is clipped at 1 - eps_low."""
    eps_high: float = 0.2
    """Upper clip range: the ratio is clipped at 1 + eps_high (DAPO's clip-higher uses 0.28)."""
    dual_clip: float = 0.0
    """Dual-clip constant c > 1 capping the loss of negative-advantage tokens at -c*A; 0 disables."""
    mu: int = 1
    """Policy updates per batch of rollouts (GRPO's mu); the first uses ratio 1."""
    beta: float = 0.0
    """KL coefficient to the frozen initial policy; 0 loads no reference model."""
    kl_estimator: str = "k3"
    """KL estimator: k1, k2 or k3."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient (added to the objective)."""
    entropy_token_fraction: float = 1.0
    """Train the policy loss only on this share of completion tokens, those of highest entropy (the "forking
    tokens" of Wang et al. 2025, who keep 0.2); 1 trains on every token. The entropy threshold is the quantile over
    each micro-batch's tokens (the paper's is over the batch: it would cost a second forward pass here)."""
    prompts_per_step: int = 16
    """Prompts (groups) per optimizer batch."""
    group_size: int = 8
    """Completions sampled per prompt."""
    max_new_tokens: int = 128
    """Longest completion in tokens."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts; the trainer's log-probs use it too (the sampling policy is the one improved)."""
    top_p: float = 1.0
    """Nucleus sampling threshold of the rollouts."""
    top_k: int = 0
    """Top-k of the rollouts (0 disables)."""
    downsample: int = 0
    """PODS (Xu et al. 2025): train on only this many of each group's ``group_size`` completions, the ones whose
    rewards vary most (max-variance down-sampling: of 7 right and 1 wrong, the wrong one and downsample - 1 right
    ones), with advantages computed within them. Where generating a completion costs less than training on it
    (tiny: about 4 ms against 9), a step then buys its rollouts' signal at a fraction of the training. 0 trains
    on all."""
    dynamic_sampling: bool = False
    """Drop groups whose rewards all agree (no learning signal) and sample more prompts to refill the batch."""
    max_sampling_rounds: int = 3
    """With dynamic_sampling: generation rounds per step before training on the groups found."""
    overlong_filter: bool = False
    """Give truncated completions (max_new_tokens reached) no loss (DAPO's overlong filtering)."""
    overlong_buffer: int = 0
    """Soft overlong punishment: in the last this many tokens before max_new_tokens the reward falls linearly
    by up to overlong_penalty; 0 disables."""
    overlong_penalty: float = 1.0
    """Largest soft overlong punishment."""
    max_steps: int = 100
    """Optimizer batches to train on (each: prompts_per_step x group_size rollouts)."""
    max_minutes: float = 0.0
    """Stop training after this much wall time (all sessions of the run, evaluations included), then evaluate
    and save as at the end; 0: no limit."""
    micro_batch_size: int = 32
    """Completions per forward/backward pass; gradients accumulate over the batch."""
    rollout_batch_size: int = 512
    """Most completions the sampler decodes together (a step's rollouts go in chunks of this many rows): larger
    chunks spread each decode step's fixed cost over more rows (tiny, 32 prompts x 8 on one core: 1.7 s a step
    as one 256-row chunk, 2.4 s in 64-row chunks) at the price of KV-cache memory."""
    lr: float = 1e-5
    """Peak learning rate of AdamW."""
    lr_schedule: str = "constant"
    """Learning-rate decay after warmup: constant, cosine, linear or wsd (the peak for 80% of the run, then linear
    to 0)."""
    warmup_steps: int = 0
    """Steps of linear learning-rate warmup."""
    schedule_horizon: str = "steps"
    """What the learning-rate decay (lr_schedule) runs over: steps (to max_steps) or time (to max_minutes, or to max_steps if
    the run gets there first). A run that its clock ends should use time: its decay then ends with the run,
    however fast the machine is, where a step horizon leaves the rate near its peak when the clock stops it."""
    weight_decay: float = 0.0
    """AdamW weight decay (matrices only)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""
    lora: bool = False
    """Train LoRA adapters (peft) instead of all weights; with beta > 0 the reference is the adapter-free model."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA branch."""
    lora_targets: str = "all-linear"
    """Modules that get adapters: all-linear or comma-separated module names."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, slower."""
    merge_twins: bool = True
    """Train once on completions sampled more than once for a prompt (same ids and advantages), with their loss
    weights summed: the same update as one row each, up to float rounding, at less cost (a confident policy
    samples many: about half of tiny's trained rows on arith). Not with entropy_token_fraction < 1, whose
    per-micro-batch entropy quantile would then be taken over the distinct rows only."""
    share_prompt: bool = True
    """Run each prompt once per group in the training forward and reuse its KV cache for all its completions
    (same log-probs and gradients as one row per completion); helps most when prompts are much longer than
    completions. Off (or with gradient_checkpointing) every completion row re-runs its prompt."""
    prefix_tree: bool = True
    """With share_prompt: a prompt's completions run the tokens they begin with in common once, as the nodes of
    a prefix tree under a tree attention mask (same log-probs and gradients, up to float rounding); tiny's
    trained completions run about 0.7 as many tokens. llama, mistral and qwen2/3 models; others run one row
    per completion."""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda, cuda:1, ..."""
    nproc: int = 1
    """Data-parallel processes on this machine (CPU cores or GPUs): each samples and trains on its share of every
    batch, gradients summed: the update of one process with the whole batch, except that batch-normalised
    advantages (grpo_batch_std, reinforce_pp, PPO's whitening) use each process's share. Or launch with torchrun."""
    dtype: str = "auto"
    """Compute dtype (autocast): auto (bfloat16 on cuda, float32 on cpu), float32, bfloat16, float16."""
    decode_dtype: str = "float32"
    """The CPU sampler's decode steps: float32 samples exactly from the trained weights; bfloat16 multiplies by
    bfloat16 copies of them (float32 accumulation), about 0.75 of the sampling time on tiny, at a small gap
    between sampler and trainer log-probs (sampler_gap_mean: ~6e-4 nats a token on tiny, against ~1e-7)."""
    eval_every: int = 0
    """Evaluate on held-out problems every this many steps (and before the first and after the last); 0: only
    before and after."""
    eval_limit: int = 200
    """Held-out problems per evaluation (greedy decoding)."""
    eval_split: str = "test"
    """Split of the held-out evaluation."""
    save_every: int = 25
    """Checkpoint every this many steps (0: only at the end and on Ctrl-C)."""
    keep_last: int = 2
    """Checkpoints kept on disk (0 keeps all)."""
    log_every: int = 1
    """Log metrics every this many steps."""
    monitor: str = ""
    """Anomaly monitor settings as YAML/JSON (see reasonlab.runtime.monitor.MonitorConfig); empty: defaults,
    'off' disables it."""
    seed: int = 0
    """Seed of the prompt order, the rollouts and LoRA init."""
    resume: bool = True
    """Resume from the latest checkpoint in out; with --no-resume an existing run directory is refused."""
    save_final: bool = True
    """Save the final policy to out/final as a Hugging Face checkpoint."""

    def __post_init__(self) -> None:
        from reasonlab.learn.losses import ADVANTAGES, AGGREGATIONS, RATIOS
        from reasonlab.learn.sft import SCHEDULES

        checks = {"advantage": ADVANTAGES, "loss_agg": AGGREGATIONS, "ratio": RATIOS,
                  "kl_estimator": ("k1", "k2", "k3"), "lr_schedule": tuple(SCHEDULES),
                  "schedule_horizon": ("steps", "time"),
                  "reward_on_error": ("raise", "skip")}
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("prompts_per_step", "group_size", "max_new_tokens", "micro_batch_size", "rollout_batch_size", "mu",
                     "log_every", "max_sampling_rounds", "eval_limit", "nproc"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "max_minutes", "warmup_steps", "save_every", "keep_last", "eval_every", "overlong_buffer", "beta",
                     "eps_low", "eps_high", "weight_decay", "max_grad_norm", "top_k", "lora_dropout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        # The policy improved is the sampling one, softmax(logits / T): greedy rollouts (T = 0) have no log-probs to
        # follow (the trainer would divide by zero and wreck the weights), and no two samples of a group differ.
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for RL rollouts, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.advantage == "rloo" and self.group_size < 2:
            raise ValueError("rloo needs group_size >= 2")
        if self.downsample and not 2 <= self.downsample <= self.group_size:
            raise ValueError(f"downsample must be 0 (off) or 2..group_size={self.group_size}, got {self.downsample}")
        if self.dual_clip and self.dual_clip <= 1:
            raise ValueError(f"dual_clip must be > 1 (or 0 to disable), got {self.dual_clip}")
        if self.nproc > 1 and self.prompts_per_step % self.nproc:
            raise ValueError(f"prompts_per_step={self.prompts_per_step} does not split evenly over nproc={self.nproc}")
        if self.overlong_buffer >= self.max_new_tokens:
            raise ValueError("overlong_buffer must be smaller than max_new_tokens")
        if not 0.0 < self.entropy_token_fraction <= 1.0:
            raise ValueError(f"entropy_token_fraction must be in (0, 1], got {self.entropy_token_fraction}")
        if not 0.0 <= self.negative_advantage_scale <= 1.0:
            raise ValueError(f"negative_advantage_scale must be in [0, 1], got {self.negative_advantage_scale}")
        if self.schedule_horizon == "time" and not self.max_minutes:
            raise ValueError("schedule_horizon=time needs a time limit (max_minutes > 0)")


def soft_overlong_penalty(length: int, max_len: int, buffer: int, penalty: float = 1.0) -> float:
    """DAPO's soft overlong punishment (``rewards.combinators.overlong_penalty``) scaled by ``penalty``:
    0 until ``max_len - buffer``, then falling linearly to ``-penalty`` at ``max_len``; 0 when ``buffer`` is 0."""
    from reasonlab.rewards.combinators import overlong_penalty

    return penalty * overlong_penalty(length, max_len, buffer) if buffer > 0 else 0.0


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class StepRollouts(NamedTuple):
    """A step's sampled and scored groups (:meth:`Trainer.collect_groups`)."""

    groups: list[list[Any]]
    """This process's groups to train on, ``group_size`` samples each."""
    rounds_out: list[tuple[list[Any], Any]]
    """Every round's (samples, scores), dropped groups included."""
    generation_s: float
    scoring_s: float
    rounds: int
    groups_seen: int
    """This process's groups over every round."""
    zero_variance_groups: int
    """Of those, the groups whose rewards all agree."""


class Trainer:
    """The state of a GRPO run; :meth:`step` is one optimizer batch. :func:`train` drives it."""

    label = "grpo"

    def __init__(self, cfg: GRPOConfig, *, model=None, tokenizer=None, task=None):
        import torch

        from reasonlab.learn.sft import adamw, add_lora, load_model
        from reasonlab.policies.hf import HFPolicy, pick_device, pick_dtype
        from reasonlab.rewards.functions import build_reward_set
        from reasonlab.evaluation.harness import task_options
        from reasonlab.runtime.distributed import init_world
        from reasonlab.tasks import load_task

        self.cfg = cfg
        # Task and rewards first: a typo there should not wait for a model to load.
        self.own_task = task is None
        self.task = task or load_task(cfg.task, **task_options(cfg))
        if cfg.strict_rewards and hasattr(self.task, "use_strict_verifier"):
            self.task.use_strict_verifier()
        self.rewards = build_reward_set(cfg.rewards, self.task, cfg.reward_on_error)
        self.process = None
        if cfg.process_rewards:
            from reasonlab.rewards.process import build_process_reward

            self.process = build_process_reward(cfg.process_rewards, self.task)
        self.device = pick_device(cfg.device)
        self.world = init_world(self.device.type)  # a lone process unless launched by torchrun
        if self.world.size > 1:
            if cfg.prompts_per_step % self.world.size:
                raise UsageError(f"prompts_per_step={cfg.prompts_per_step} does not split evenly over "
                                 f"{self.world.size} processes")
            if self.device.type == "cuda":
                self.device = torch.device(f"cuda:{self.world.local_rank}")
                torch.cuda.set_device(self.device)
        self.amp_dtype = pick_dtype(cfg.dtype, self.device)
        weights_dtype = self.amp_dtype if cfg.lora else torch.float32
        if model is None:
            model, tokenizer = load_model(cfg.model, weights_dtype)
        elif tokenizer is None:
            raise UsageError("Trainer(model=...) needs its tokenizer too")
        model = model.to(dtype=weights_dtype)
        _seed_everything(cfg.seed)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.ref_model = None
        if cfg.lora:
            model = add_lora(model, cfg)
        elif cfg.beta > 0:
            import copy

            self.ref_model = copy.deepcopy(model).to(self.device).eval().requires_grad_(False)
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        # The policy shares the trained model: rollouts always come from the current weights.
        self.policy = HFPolicy(cfg.model, model=self.model, tokenizer=tokenizer, device=str(self.device),
                               dtype="float32" if self.amp_dtype == torch.float32 else cfg.dtype,
                               max_batch_size=cfg.rollout_batch_size, decode_dtype=cfg.decode_dtype)
        self.train_examples = self.task.examples(cfg.train_split)
        if not self.train_examples:
            raise UsageError(f"task {cfg.task!r} has no examples in split {cfg.train_split!r}")
        self.prompt_ids = {}  # example id -> token ids, encoded once
        self.modules = self.make_modules()  # trained modules besides the policy (PPO's value head)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.params += [p for m in self.modules.values() for p in m.parameters()]
        groups = [{"params": [p for p in self.params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in self.params if p.ndim < 2], "weight_decay": 0.0}]
        self.optimizer = adamw(groups, cfg.lr)
        self.time_progress = 0.0  # share of max_minutes used, set by train() after each step
        self.scheduler = self.make_scheduler()
        self.step_no, self.epoch, self.index = 0, 0, 0
        self._perm: list[int] | None = None
        self._perm_epoch = -1
        self.totals: dict[str, Any] = {"rollouts": 0, "generated_tokens": 0, "wall_time_s": 0.0}

    def make_scheduler(self):
        """Warmup then the configured decay, over steps or over the time limit (``schedule_horizon``)."""
        import torch

        from reasonlab.learn.sft import lr_multiplier

        cfg = self.cfg
        progress = (lambda: self.time_progress) if cfg.schedule_horizon == "time" else None
        return torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_multiplier(cfg.lr_schedule, cfg.warmup_steps, max(cfg.max_steps, 1), progress))

    def make_modules(self) -> dict[str, Any]:
        """Further trained modules, checkpointed with the model; none for critic-free methods."""
        return {}

    # -- data ------------------------------------------------------------------------------------
    def next_examples(self, k: int) -> list[Any]:
        """The next ``k`` training problems in this run's order (an epoch permutation of the split)."""
        from reasonlab.learn.sft import epoch_permutation

        out = []
        n = len(self.train_examples)
        while len(out) < k:
            if self.index >= n:
                self.epoch, self.index = self.epoch + 1, 0
            if self._perm_epoch != self.epoch:
                self._perm, self._perm_epoch = epoch_permutation(n, self.cfg.seed, self.epoch), self.epoch
            out.append(self.train_examples[self._perm[self.index]])
            self.index += 1
        return out

    def encode(self, example) -> list[int]:
        if example.id not in self.prompt_ids:
            self.prompt_ids[example.id] = self.policy.encode(example.prompt)
        return self.prompt_ids[example.id]

    # -- rollouts --------------------------------------------------------------------------------
    def rollout(self, examples: list[Any], seed: int, group_offset: int = 0):
        """Sample ``group_size`` completions per example and score them. Returns (samples, scores)."""
        import torch

        from reasonlab.learn.rollout import Sample
        from reasonlab.types import SamplingParams

        cfg = self.cfg
        sampling = SamplingParams(n=cfg.group_size, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                                  max_new_tokens=cfg.max_new_tokens, stop=tuple(getattr(self.task, "stop", ()) or ()),
                                  seed=seed)
        self.model.eval()
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32):
            comps = self.policy.generate_ids([self.encode(e) for e in examples], sampling)
        flat_ex = [examples[c.prompt_index] for c in comps]
        t0 = time.time()
        scores = self.rewards.score([e.prompt for e in flat_ex], [c.text for c in comps], flat_ex)
        score_s = time.time() - t0
        samples = []
        for c, e, r in zip(comps, flat_ex, scores.total):
            samples.append(Sample(prompt_ids=c.prompt_token_ids, completion_ids=c.token_ids, sampler_logp=c.logprobs,
                                  truncated=c.finish_reason == "length", group=group_offset + c.prompt_index,
                                  example=e, text=c.text, reward=math.nan if r is None else r))
        return samples, scores, score_s

    def collect_groups(self) -> StepRollouts:
        """This process's groups of the step, sampled and scored.

        Without dynamic sampling: one round, this process's share of ``prompts_per_step`` prompts. With it
        (DAPO), groups whose rewards all agree are dropped and further rounds draw more prompts, up to
        ``max_sampling_rounds``, until the whole batch (over all processes) holds ``prompts_per_step``
        informative groups. Every process takes the same decisions from the summed count, so their data
        positions stay equal, and the groups found are then dealt out evenly (:meth:`deal_groups`).
        """
        from reasonlab.runtime.distributed import sum_float

        cfg = self.cfg
        size = self.world.size
        dynamic = cfg.dynamic_sampling
        all_scores, gen_s, score_s, rounds, n_seen, n_zero_var = [], 0.0, 0.0, 0, 0, 0
        kept: list[list[Any]] = []
        dropped: list[list[Any]] = []
        n_kept = 0  # informative groups over all processes
        while n_kept < cfg.prompts_per_step and rounds < (cfg.max_sampling_rounds if dynamic else 1):
            # A whole number of prompts per process, so that none is left without any.
            need = math.ceil((cfg.prompts_per_step - n_kept) / size) * size
            examples = self.shard(self.next_examples(need))
            t0 = time.time()
            new, scores, s_s = self.rollout(examples, seed=cfg.seed * 1_000_003 + self.step_no * 101 + rounds
                                            + 7_919 * self.world.rank, group_offset=n_seen)
            gen_s += time.time() - t0 - s_s
            score_s += s_s
            rounds += 1
            all_scores.append((new, scores))
            for g in range(len(examples)):
                grp = new[g * cfg.group_size:(g + 1) * cfg.group_size]
                rs = [s.reward for s in grp if not math.isnan(s.reward)]
                zero_var = len(rs) < 2 or max(rs) - min(rs) < 1e-9
                n_zero_var += zero_var
                (dropped if dynamic and zero_var else kept).append(grp)
            n_seen += len(examples)
            n_kept = len(kept) if size == 1 else int(sum_float(len(kept), self.world))
        if n_kept == 0:  # every group agreed in every round: nothing to learn from this step
            kept = [all_scores[-1][0][g * cfg.group_size:(g + 1) * cfg.group_size]
                    for g in range(len(all_scores[-1][0]) // cfg.group_size)]
        elif dynamic and size > 1:
            kept = self.deal_groups(kept, dropped)
        kept = kept[:cfg.prompts_per_step // size]
        return StepRollouts(kept, all_scores, gen_s, score_s, rounds, n_seen, n_zero_var)

    def deal_groups(self, kept: list[list[Any]], spare: list[list[Any]]) -> list[list[Any]]:
        """Dynamic sampling over processes: the informative groups of all of them, cut to ``prompts_per_step``
        and dealt out evenly, so each trains on its share of the batch whichever process sampled them. A process
        left with none (fewer groups found than processes) trains on one of its own dropped groups with loss
        weight 0: it adds nothing to the gradient or to the batch's token counts, but runs the same collectives.
        """
        from reasonlab.runtime.distributed import gather

        pooled = [g for groups in gather(kept, self.world) for g in groups][:self.cfg.prompts_per_step]
        mine = pooled[self.world.rank::self.world.size]
        if not mine:  # copies: the group may be one that another process trains on
            mine = [[replace(s, loss_weight_scale=0.0) for s in (spare or kept)[0]]]
        return mine

    # -- one optimizer batch ---------------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        import torch

        from reasonlab.learn import losses
        from reasonlab.learn import rollout
        from reasonlab.learn.rollout import completion_logits, make_microbatches, sample_metrics, token_logps

        cfg = self.cfg
        t_start = time.time()
        # 1. Rollouts (with dynamic sampling: more rounds until the batch holds informative groups).
        kept_groups, all_scores, gen_s, score_s, rounds, n_groups_seen, n_zero_var = self.collect_groups()
        rollouts = [s for g in kept_groups for s in g]

        # 2. Rewards -> advantages. A sample whose reward could not be computed (all functions None:
        # e.g. a verifier timeout) takes its group's mean reward, i.e. advantage 0: it teaches nothing.
        for s in rollouts:
            if cfg.overlong_buffer:
                s.reward += soft_overlong_penalty(len(s.completion_ids), cfg.max_new_tokens, cfg.overlong_buffer,
                                                  cfg.overlong_penalty) if not math.isnan(s.reward) else 0.0
        rewards = torch.tensor([[s.reward for s in g] for g in kept_groups], dtype=torch.float32)
        missing = torch.isnan(rewards)
        if missing.any():
            fill = torch.nanmean(rewards, dim=1, keepdim=True).nan_to_num(0.0).expand_as(rewards)
            rewards = torch.where(missing, fill, rewards)
        batch_rewards = rewards
        if cfg.downsample:  # PODS: train on the subset of each group whose rewards vary most
            keep = losses.max_variance_subset(rewards, cfg.downsample)
            rewards = rewards.gather(1, keep)
            kept_groups = [[g[j] for j in row] for g, row in zip(kept_groups, keep.tolist())]
        samples = [s for g in kept_groups for s in g]
        adv = losses.ADVANTAGES[cfg.advantage](rewards).flatten()
        for s, a in zip(samples, adv.tolist()):
            s.advantage = a
            if cfg.overlong_filter and s.truncated:
                s.loss_weight_scale = 0.0
        t_max = max(max(len(s.completion_ids) for s in samples), 1)
        # Token advantages (B, T): the outcome advantage on every token, plus the process advantages.
        tok_adv = adv[:, None].expand(len(samples), t_max).clone()
        process_stats: dict[str, float] = {}
        if self.process is not None:
            t0 = time.time()
            proc, process_stats = self.process_advantages(samples, t_max)
            tok_adv += cfg.process_coef * proc
            score_s += time.time() - t0
        lengths = torch.tensor([len(s.completion_ids) for s in samples])
        tok_adv *= (torch.arange(t_max)[None, :] < lengths[:, None])
        tok_adv = losses.scale_negative(tok_adv, cfg.negative_advantage_scale)

        # 3. Policy update: mu passes over the batch, micro-batched, loss weights for the whole batch.
        t_train = time.time()
        self.model.train()
        pad_id = self.policy.pad_id
        # A sample with advantage 0 (every sample of a group whose rewards agree) adds nothing to the gradient
        # when there is no KL or entropy term: skip its forward and backward. The loss weights below are still
        # computed over the whole batch, so the update is exactly the same, only cheaper.
        active = [i for i in range(len(samples))
                  if bool(tok_adv[i].abs().max() > 0) or cfg.beta > 0 or cfg.entropy_coef > 0]
        # Shared prompts: completions of one prompt share one prompt pass (completion_logits takes either layout).
        share = cfg.share_prompt and rollout.supports_shared_prompt(self.model)
        batcher = rollout.make_group_microbatches if share else make_microbatches
        full_mask = torch.zeros((len(samples), t_max))
        for i, s in enumerate(samples):
            full_mask[i, :len(s.completion_ids)] = s.loss_weight_scale
        weights = self.batch_weights(full_mask)
        counts = torch.zeros(len(samples)).index_fill_(0, torch.tensor(active, dtype=torch.long), 1.0)
        trained = active
        if cfg.merge_twins and cfg.entropy_token_fraction >= 1.0:
            trained, weights, counts = rollout.merge_twins(samples, active, tok_adv, weights)
        mbs = batcher(samples, cfg.micro_batch_size, pad_id, include=trained or [0],
                      **({"tree": cfg.prefix_tree and rollout.supports_prefix_tree(self.model)} if share else {}))
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32)
        old_logps: dict[int, torch.Tensor] = {}
        ref_logps: dict[int, torch.Tensor] = {}
        stats = {k: 0.0 for k in ("loss", "kl", "entropy", "clipped_low", "clipped_high", "dual_clipped",
                                  "sampler_gap_mean", "sampler_gap_max")}
        # Sample-averaged metrics count each trained row as the samples it stands for (merged twins).
        n_tok = float((lengths * counts).sum()) or 1.0
        grad_norm = torch.tensor(0.0)
        for it in range(cfg.mu):
            for m, mb in enumerate(mbs):
                mb = mb.to(self.device)
                b, t = mb.mask.shape
                tm = mb.mask * counts[mb.index].to(self.device)[:, None]  # token mask for sample-averaged metrics
                w = weights[mb.index, :t].to(self.device)
                a = tok_adv[mb.index, :t].to(self.device)
                with autocast:
                    logits = completion_logits(self.model, mb)
                # The policy being improved is the one that sampled: log-probs at the sampling temperature
                # (as TRL and verl compute them).
                logp = token_logps(logits, mb.completion_ids, cfg.temperature)
                if it == 0:
                    # The batch was sampled from these very weights: the first pass's log-probs are
                    # pi_old, so no separate no-grad forward is needed (ratio 1 on the first pass).
                    old_logps[m] = logp.detach()
                    # The sampler reports the model's own (temperature-free) log-probs: compare like with like.
                    raw = logp.detach() if cfg.temperature == 1.0 else token_logps(logits.detach(), mb.completion_ids)
                    gap = torch.zeros_like(raw)
                    for r, i in enumerate(mb.index):
                        sl = samples[i].sampler_logp
                        if sl:
                            gap[r, :len(sl)] = (raw[r, :len(sl)] - torch.tensor(sl, device=self.device)).abs()
                    stats["sampler_gap_mean"] += float((gap * tm).sum()) / n_tok
                    stats["sampler_gap_max"] = max(stats["sampler_gap_max"], float(gap.max()))
                    if cfg.beta > 0:
                        ref_logps[m] = self._ref_logp(mb, autocast)
                need_entropy = cfg.entropy_coef > 0
                with torch.set_grad_enabled(need_entropy):
                    ent = losses.entropy_from_logits(logits if need_entropy else logits.detach())
                if cfg.entropy_token_fraction < 1.0:
                    a = a * losses.top_entropy_mask(ent.detach(), mb.mask, cfg.entropy_token_fraction)
                log_ratio = losses.RATIOS[cfg.ratio](logp, old_logps[m], mb.mask)
                pg, clip = losses.policy_loss(log_ratio, a, cfg.eps_low, cfg.eps_high, cfg.dual_clip or None)
                per_token = pg
                if cfg.beta > 0:
                    kl = losses.kl_penalty(logp, ref_logps[m], cfg.kl_estimator)
                    per_token = per_token + cfg.beta * kl
                    stats["kl"] += float((kl.detach() * tm).sum()) / n_tok / cfg.mu
                if need_entropy:
                    per_token = per_token - cfg.entropy_coef * ent
                loss = (per_token * w).sum()
                loss.backward()
                stats["loss"] += float(loss.detach()) / cfg.mu
                stats["entropy"] += float((ent.detach() * tm).sum()) / n_tok / cfg.mu
                for k in ("clipped_low", "clipped_high", "dual_clipped"):
                    stats[k] += float((clip[k] * tm).sum()) / n_tok / cfg.mu
                del logits, logp
            self.sync_grads()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step_no += 1
        train_s = time.time() - t_train

        # 4. Metrics.
        gen_tokens = sum(len(s.completion_ids) for new, _ in all_scores for s in new)
        self.add_totals(sum(len(new) for new, _ in all_scores), gen_tokens)
        wall = time.time() - t_start
        rec: dict[str, Any] = {
            "reward_mean": float(batch_rewards.mean()), "reward_std": float(batch_rewards.std(unbiased=False)),
            "advantage_abs_mean": float(adv.abs().mean()),
            **stats,
            "grad_norm": float(grad_norm), "lr": lr,
            **sample_metrics(rollouts),
            "zero_variance_groups": n_zero_var / max(n_groups_seen, 1),
            "trained_fraction": len(active) / len(rollouts),
            "twin_fraction": 1.0 - len(trained) / max(len(active), 1),
            "sampling_rounds": rounds,
            "tokens_per_s": gen_tokens / max(wall, 1e-9),
            "time_generation_s": gen_s, "time_scoring_s": score_s, "time_training_s": train_s, "time_step_s": wall,
            **self.reward_metrics([scores for _, scores in all_scores]),
            **process_stats,
        }
        self.last_samples = samples
        return self.merge_metrics(rec)

    # -- data parallelism (torchrun): each process samples and trains on its share of the batch ----
    def shard(self, examples: list[Any]) -> list[Any]:
        """This process's share of a step's prompts (every process draws the same ones, in the same order)."""
        return examples if self.world.size == 1 else examples[self.world.rank::self.world.size]

    def batch_weights(self, full_mask):
        """Loss weights of this process's samples, normalised by the whole batch's counts (see losses.token_weights)."""
        from reasonlab.learn import losses
        from reasonlab.runtime.distributed import sum_float

        n_seqs = n_tokens = None
        if self.world.size > 1:
            n_seqs = sum_float(full_mask.shape[0], self.world)
            n_tokens = sum_float(float(full_mask.sum()), self.world)
        return losses.token_weights(full_mask, self.cfg.loss_agg, max_len=self.cfg.max_new_tokens,
                                    n_seqs=n_seqs, n_tokens=n_tokens)

    def sync_grads(self) -> None:
        """Sum the gradients over processes: with batch-normalised weights, that is the whole batch's gradient."""
        if self.world.size == 1:
            return
        import torch

        from reasonlab.runtime.distributed import all_reduce_sum_

        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        all_reduce_sum_([p.grad for p in self.params], self.world)

    def add_totals(self, rollouts: int, generated_tokens: int) -> None:
        """Count a step's rollouts and generated tokens in the run's totals, summed over processes (each counts
        its own share; the summary is the main process's)."""
        if self.world.size > 1:
            import torch

            from reasonlab.runtime.distributed import all_reduce_sum_

            both = torch.tensor([float(rollouts), float(generated_tokens)], dtype=torch.float64)
            all_reduce_sum_([both], self.world)
            rollouts, generated_tokens = int(both[0]), int(both[1])
        self.totals["rollouts"] += rollouts
        self.totals["generated_tokens"] += generated_tokens

    def merge_metrics(self, rec: dict[str, Any]) -> dict[str, Any]:
        """The whole batch's metrics from every process's (on every process)."""
        if self.world.size == 1:
            return rec
        from reasonlab.runtime.distributed import gather, mean_metrics

        return mean_metrics(gather(rec, self.world))

    def step_rewards(self, samples):
        """The batch's process rewards on tokens: ``(rewards, mask, end)``, each ``(B, S)``, and metrics.

        Step ``j`` of sample ``i`` earned ``rewards[i, j]`` and its text ends at completion token
        ``end[i, j]``; ``mask`` is 0 on padding and on steps the function could not rate (None).
        """
        import torch

        from reasonlab.learn.rollout import char_ends_to_tokens

        scored = self.process.score([s.example.prompt for s in samples], [s.text for s in samples],
                                    [s.example for s in samples])
        n_steps = max(max((len(sp) for sp, _ in scored), default=0), 1)
        r = torch.zeros(len(samples), n_steps)
        m = torch.zeros(len(samples), n_steps)
        end = torch.zeros(len(samples), n_steps, dtype=torch.long)
        for i, (s, (spans, vals)) in enumerate(zip(samples, scored)):
            if not spans:
                continue
            ends = char_ends_to_tokens(self.policy.decode_ids, s.completion_ids, [b for _, b in spans])
            for j, (v, e) in enumerate(zip(vals, ends)):
                if v is not None:
                    r[i, j], m[i, j], end[i, j] = v, 1.0, e
        stats = {f"process/{self.process.name}": float((r * m).sum() / m.sum().clamp(min=1)),
                 "process/steps_mean": float(m.sum(1).mean())}
        return r, m, end, stats

    def process_advantages(self, samples, t_max: int):
        """Process-supervised token advantages ``(B, t_max)`` of the batch (``losses.process_advantages``:
        step rewards normalised per group, each token credited with the steps that end at or after it)."""
        from reasonlab.learn import losses

        r, m, end, stats = self.step_rewards(samples)
        adv = losses.process_advantages(r, m, end, self.cfg.downsample or self.cfg.group_size, t_max)
        n_tok = max(sum(len(s.completion_ids) for s in samples), 1)
        stats["process/advantage_abs_mean"] = float(adv.abs().sum() / n_tok)
        return adv, stats

    def reward_metrics(self, batches) -> dict[str, float]:
        """The step's reward metrics (``rewards.functions.reward_metrics``); reward functions that failed
        (``reward_on_error="skip"``) are also reported on the console."""
        from reasonlab.rewards.functions import reward_metrics

        for scores in batches:
            for msg in scores.errors.values():
                print(f"warning: step {self.step_no}: {msg}", file=sys.stderr)
        return reward_metrics(batches)

    def _ref_logp(self, mb, autocast):
        import torch

        from reasonlab.learn.rollout import completion_logits, token_logps

        with torch.no_grad(), autocast:
            if self.ref_model is not None:
                logits = completion_logits(self.ref_model, mb)
            else:  # LoRA: the reference is the base model with the adapters switched off
                with self.model.disable_adapter():
                    logits = completion_logits(self.model, mb)
        return token_logps(logits.float(), mb.completion_ids, self.cfg.temperature)

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, run_dir: Path) -> float:
        """Greedy accuracy on held-out problems, through the eval harness (samples kept in run_dir)."""
        import torch
        from rich.console import Console

        from reasonlab.evaluation.harness import EvalConfig, run_eval

        cfg = self.cfg
        self.model.eval()
        # As many problems per batch as the sampler takes at once (rollout_batch_size bounds its memory).
        ecfg = EvalConfig(model=cfg.model, task=cfg.task, task_options=cfg.task_options, n=1, temperature=0.0,
                          max_new_tokens=cfg.max_new_tokens, limit=cfg.eval_limit, split=cfg.eval_split,
                          out=str(run_dir / "eval" / f"step_{self.step_no}"),
                          batch_size=max(1, min(cfg.eval_limit, cfg.rollout_batch_size)), seed=cfg.seed)
        # The other processes wait while the main one evaluates: on a CPU it borrows their cores (tiny's 500
        # problems: 1.9 s on two threads against 3.0 s on one).
        threads = torch.get_num_threads()
        local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world.size))
        if self.device.type == "cpu" and local > 1:
            torch.set_num_threads(threads * local)
        # Held-out accuracy is the trained weights' own: no bfloat16 decode shortcut in evaluations.
        decode_dtype, self.policy.decode_dtype = self.policy.decode_dtype, "float32"
        try:
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32):
                summary = run_eval(ecfg, policy=self.policy, task=self.task, console=Console(quiet=True))
        finally:
            torch.set_num_threads(threads)
            self.policy.decode_dtype = decode_dtype
        return float(summary["accuracy"])

    # -- checkpoints -----------------------------------------------------------------------------
    def save(self, run_dir: Path, extra: dict[str, Any]) -> None:
        from reasonlab.runtime import save_checkpoint

        save_checkpoint(run_dir, self.step_no, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                        data_state={"epoch": self.epoch, "index": self.index, "num_examples": len(self.train_examples)},
                        extra={**extra, "totals": self.totals}, keep_last=self.cfg.keep_last, modules=self.modules)

    def restore(self, path: Path) -> dict[str, Any]:
        from reasonlab.runtime import load_checkpoint

        self.step_no, data, extra = load_checkpoint(path, model=self.model, optimizer=self.optimizer,
                                                    scheduler=self.scheduler, modules=self.modules)
        self.epoch, self.index = data["epoch"], data["index"]
        self.totals.update(extra.get("totals", {}))
        return extra

    def close(self) -> None:
        if self.own_task:
            self.task.close()


def train(cfg: GRPOConfig, *, model=None, tokenizer=None, task=None,
          on_step: Callable[[int, dict, "Trainer"], None] | None = None, trainer_cls: type | None = None) -> dict[str, Any]:
    """Run (or resume) GRPO; returns the summary. ``on_step(step, metrics, trainer)`` after each step.

    ``trainer_cls`` swaps the per-step algorithm (PPO passes its own); the run loop -- evaluation,
    checkpoints, the anomaly monitor, Ctrl-C -- is the same for every algorithm.

    Under ``torchrun`` every process runs this loop on its share of each batch; the main process
    (rank 0) alone writes the run directory, logs, evaluates, checkpoints and watches for anomalies,
    and after each step tells the others whether to go on, stop or roll back.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from reasonlab.policies.hf import pick_device
    from reasonlab.runtime import MetricsLogger, RunDir, latest_checkpoint
    from reasonlab.runtime.distributed import broadcast, close_world, in_world, init_world, launch
    from reasonlab.runtime.interrupt import StopOnCtrlC

    if cfg.nproc > 1 and not in_world():
        if model is not None or task is not None or on_step is not None:
            raise UsageError("train(nproc > 1) starts its own processes: pass names (cfg.model, cfg.task), "
                             "not objects or callbacks")
        return launch(cfg.nproc, _train_process, cfg, trainer_cls)
    t_start = time.time()
    world = init_world(pick_device(cfg.device).type)
    main = world.main
    error = None
    if main:
        try:
            run = RunDir(cfg.out, config=cfg, resume=cfg.resume)
        except Exception as e:  # the others must not wait for a run directory that will not come
            error = e
    message = broadcast(None if error is None else str(error), world)
    if message is not None:
        if error is not None:
            raise error
        # The others fail with the same message, as errors the launcher hands back (rank 0's is raised): not an
        # exit, which the launcher would report as a failed process instead of the message.
        raise UsageError(message)
    run_path = run.path if main else Path(cfg.out)
    tr = (trainer_cls or Trainer)(cfg, model=model, tokenizer=tokenizer, task=task)
    extra: dict[str, Any] = {"evals": {}}
    ckpt = latest_checkpoint(run_path) if cfg.resume else None
    if ckpt is not None:
        extra.update(tr.restore(ckpt))
    monitor = _make_monitor(cfg.monitor, run_path, tr.step_no if ckpt is not None else None) if main else None
    if monitor is not None and ckpt is not None and "monitor" in extra:
        monitor.load_state_dict(extra["monitor"])
    if ckpt is not None and main:
        print(f"resuming from {ckpt} (step {tr.step_no} of {cfg.max_steps})", file=sys.stderr)
    wall_before = tr.totals["wall_time_s"]

    def elapsed() -> float:
        """Wall seconds of the whole run, earlier sessions included."""
        return wall_before + time.time() - t_start

    if cfg.schedule_horizon == "time":
        tr.time_progress = min(1.0, wall_before / (cfg.max_minutes * 60))
    metrics = MetricsLogger(run, resume_step=tr.step_no) if main else None

    def checkpoint() -> None:
        if not main:
            return
        tr.totals["wall_time_s"] = elapsed()
        state = {"evals": extra["evals"]}
        if monitor is not None:
            state["monitor"] = monitor.state_dict()
        tr.save(run_path, state)

    def evaluate() -> None:
        if main and str(tr.step_no) not in extra["evals"]:
            acc = tr.evaluate(run_path)
            extra["evals"][str(tr.step_no)] = acc
            metrics.log(tr.step_no, {"val_accuracy": acc})

    progress = Progress(TextColumn(f"[bold]{tr.label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                        TimeRemainingColumn(), disable=not main)
    bar = progress.add_task("", total=cfg.max_steps, completed=tr.step_no)
    stopped_by = None
    saved_at = tr.step_no
    try:
        with StopOnCtrlC() as stop, progress:
            evaluate()
            while tr.step_no < cfg.max_steps:
                rec = tr.step()
                step = tr.step_no
                # The main process decides what happens next: ("go",), ("stop", why), ("rollback", lr factor),
                # ("interrupt",); the others follow.
                control: tuple = ("go",)
                if main:
                    if step % cfg.log_every == 0 or step == cfg.max_steps:
                        metrics.log(step, rec)
                    progress.update(bar, completed=step,
                                    description=f"reward {rec['reward_mean']:.3f} acc {rec.get('accuracy', float('nan')):.3f}")
                    if on_step is not None:
                        on_step(step, rec, tr)
                    if monitor is not None:
                        fired = monitor.update(step, rec, samples=_sample_dump(tr.last_samples))
                        action = monitor.decision(fired) if fired else None
                        for a in fired:
                            print(f"monitor: {a.message} -> {a.action}", file=sys.stderr)
                        if action == "stop":
                            control = ("stop", fired[0].message)
                        elif action == "rollback":
                            control = ("rollback", fired[0].message)
                    if control[0] == "go":
                        if cfg.eval_every and step % cfg.eval_every == 0:
                            evaluate()
                        if cfg.save_every and step % cfg.save_every == 0:
                            checkpoint()
                            saved_at = step
                        if cfg.max_minutes and elapsed() >= cfg.max_minutes * 60:
                            print(f"time limit of {cfg.max_minutes:g} min reached at step {step}", file=sys.stderr)
                            control = ("limit",)
                        elif stop.requested and step < cfg.max_steps:
                            if saved_at != step:
                                checkpoint()
                            control = ("interrupt",)
                control = broadcast(control, world)
                if cfg.schedule_horizon == "time":
                    # Every process must decay alike: the main process's clock sets the next step's rate.
                    used = elapsed() / (cfg.max_minutes * 60) if main else None
                    tr.time_progress = min(1.0, broadcast(used, world))
                if control[0] == "stop":
                    stopped_by = control[1]
                    break
                if control[0] == "rollback":
                    from reasonlab.runtime.monitor import rollback

                    factor = monitor.config.rollback_lr_factor if main else 0.0
                    factor = broadcast(factor, world)
                    # The main process rolls back first (it deletes the checkpoints the anomaly touched);
                    # then the others load the same good checkpoint.
                    restored = rollback(run_path, tr.model, tr.optimizer, tr.scheduler, factor, before_step=step,
                                        monitor=monitor, modules=tr.modules) if main else None
                    restored = broadcast(restored, world)
                    if not main and restored is not None:
                        rollback(run_path, tr.model, tr.optimizer, tr.scheduler, factor, before_step=restored + 1,
                                 modules=tr.modules, record=False)
                    if restored is None:
                        stopped_by = f"{control[1]}; no checkpoint to roll back to"
                        break
                    tr.step_no = restored
                    if main:
                        print(f"monitor: rolled back to step {restored}, lr now {tr.optimizer.param_groups[0]['lr']:.3g}",
                              file=sys.stderr)
                    continue
                if control[0] == "limit":
                    break
                if control[0] == "interrupt":
                    raise KeyboardInterrupt
            evaluate()
            if saved_at != tr.step_no:
                checkpoint()
    except KeyboardInterrupt:
        if main:
            run.write_json("summary.json", _summary(cfg, tr, extra, interrupted=True))
        raise
    finally:
        if main:
            metrics.close()
            _plot(run_path)
        tr.close()
    summary = _summary(cfg, tr, extra, stopped_by=stopped_by)
    if main:
        if cfg.save_final and stopped_by is None:
            final = run / "final"
            out_model = tr.model.merge_and_unload() if cfg.lora else tr.model
            out_model.save_pretrained(str(final))
            tr.tokenizer.save_pretrained(str(final))
        run.write_json("summary.json", summary)
    close_world(world)
    return summary


def _train_process(cfg: GRPOConfig, trainer_cls: type | None) -> dict[str, Any]:
    """One process of a ``nproc`` run (started by ``runtime.distributed.launch``)."""
    return train(cfg, trainer_cls=trainer_cls)


def _sample_dump(samples) -> list[dict[str, Any]]:
    return [{"prompt": getattr(s.example, "prompt", None), "completion": s.text, "reward": s.reward,
             "advantage": s.advantage} for s in samples]


def _make_monitor(spec: str, run_path: Path, resume_step: int | None):
    from reasonlab.runtime.monitor import Monitor, MonitorConfig

    if spec.strip().lower() == "off":
        return None
    opts = config_lib.parse_mapping(spec, "--monitor")
    return Monitor(config_lib.build(MonitorConfig, opts), run_dir=run_path, resume_step=resume_step)


def _plot(run_path: Path) -> None:
    from reasonlab.runtime.plots import plot_metrics

    try:
        plot_metrics(run_path)
    except Exception as e:  # a plot must never take a finished run down with it
        print(f"warning: could not plot learning curves: {e}", file=sys.stderr)


def _summary(cfg: GRPOConfig, tr: Trainer, extra: dict[str, Any], interrupted: bool = False,
             stopped_by: str | None = None) -> dict[str, Any]:
    evals = {int(k): v for k, v in extra.get("evals", {}).items()}
    first = evals[min(evals)] if evals else None
    last = evals[max(evals)] if evals else None
    return {"steps": tr.step_no, "max_steps": cfg.max_steps, "interrupted": interrupted, "stopped_by": stopped_by,
            "val_accuracy_first": first, "val_accuracy_last": last,
            "val_accuracy_gain": None if first is None or last is None else last - first,
            "val_accuracy_by_step": dict(sorted(evals.items())), **tr.totals, "out": cfg.out}


def main(argv: list[str] | None = None, config_cls: type = GRPOConfig, prog: str = "reasonlab train grpo",
         trainer_cls: type | None = None) -> int:
    cfg = config_lib.parse(config_cls, argv, prog=prog)
    summary = train(cfg, trainer_cls=trainer_cls)
    print(f"done: {summary['steps']} steps; held-out accuracy {summary['val_accuracy_first']} -> "
          f"{summary['val_accuracy_last']}; run in {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
