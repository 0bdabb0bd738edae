"""PPO with a learned critic: a value head on the policy's backbone, GAE, value clipping, adaptive KL.

The RLHF form of PPO (Ziegler et al. 2019; Ouyang et al. 2022) on verifiable rewards: each completion
token is an action; the token reward is ``-beta * (logp - ref_logp)`` (the per-token KL penalty,
when ``beta > 0``) plus the sequence's reward on its last token. A linear value head reads the
backbone's last hidden state at every position (shared backbone; ``separate_critic`` gives the
critic its own copy of the backbone instead), advantages are GAE(gamma, lambda) whitened over the
batch, and ``mu`` epochs of clipped policy and value updates follow. With ``kl_target`` set, beta
follows the adaptive controller.

The run loop (evaluation, checkpoints, monitor, Ctrl-C) is ``grpo.train``; only :meth:`PPOTrainer.step`
differs. Run::

    reasonlab train ppo --config recipes/ppo-tiny-arith.yaml
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any

from reasonlab.learn.grpo import GRPOConfig, Trainer, main as _main


@dataclass(frozen=True)
class PPOConfig(GRPOConfig):
    """PPO: clipped policy updates with a value head, GAE advantages and an (adaptive) KL penalty in the reward."""

    out: str = "runs/ppo"
    """Run directory."""
    group_size: int = 4
    """Completions sampled per prompt (PPO needs no groups; several per prompt just fill the batch cheaply)."""
    mu: int = 2
    """PPO epochs over each batch of rollouts."""
    gamma: float = 1.0
    """Discount of future token rewards."""
    lam: float = 0.95
    """GAE lambda."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    value_clip: float = 0.2
    """Clip range of the value update around the rollout's values; 0 disables."""
    value_lr_scale: float = 10.0
    """The value head's learning rate is lr times this (a fresh head must move faster than the fine-tuned policy)."""
    kl_target: float = 0.0
    """Adaptive KL: steer the per-sequence KL towards this target by adjusting beta; 0 keeps beta fixed."""
    kl_horizon: int = 10000
    """Adaptive KL horizon in samples."""
    separate_critic: bool = False
    """Give the critic its own copy of the backbone instead of sharing the policy's."""
    whiten_advantages: bool = True
    """Normalise advantages to mean 0 and std 1 over the batch's tokens."""
    share_prompt: bool = False
    """Not used by PPO yet: its forward also reads hidden states for the value head, from the flat layout."""

    #: GRPO settings PPO's step does not read: moving one off GRPO's default is refused, not silently ignored.
    GRPO_ONLY = ("advantage", "entropy_coef", "entropy_token_fraction", "negative_advantage_scale", "dynamic_sampling",
                 "overlong_buffer", "downsample")

    def __post_init__(self) -> None:
        super().__post_init__()
        grpo = GRPOConfig.__dataclass_fields__
        unused = [f"{k}={getattr(self, k)!r}" for k in self.GRPO_ONLY if getattr(self, k) != grpo[k].default]
        if unused:
            raise ValueError(f"PPO does not use {', '.join(unused)} (GRPO settings; PPO's advantages are GAE's)")


def _decoder_and_head(model):
    """The backbone (returning hidden states) and the output projection of a causal LM (peft or not)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def hidden_at_completion(backbone, mb):
    """Last hidden state at the positions predicting each completion token: ``(b, T, H)``."""
    t = mb.completion_ids.shape[1]
    out = backbone(input_ids=mb.input_ids, attention_mask=mb.attention_mask, position_ids=mb.position_ids,
                   use_cache=False)
    return out.last_hidden_state[:, -(t + 1):-1]


class PPOTrainer(Trainer):
    label = "ppo"

    def make_modules(self) -> dict[str, Any]:
        import copy

        import torch

        cfg = self.cfg
        hidden = self.model.config.hidden_size if hasattr(self.model, "config") else None
        head = torch.nn.Linear(hidden, 1).to(self.device)
        torch.nn.init.zeros_(head.weight)  # start from V = 0: the first advantages are the plain returns
        torch.nn.init.zeros_(head.bias)
        modules: dict[str, Any] = {"value_head": head}
        if cfg.separate_critic:
            critic, _ = _decoder_and_head(self.model)
            modules["critic"] = copy.deepcopy(critic).to(self.device)
        from reasonlab.learn.losses import AdaptiveKLController

        self.kl_ctl = AdaptiveKLController(cfg.beta, cfg.kl_target, cfg.kl_horizon) if cfg.kl_target > 0 else None
        return modules

    def _value_param_groups(self) -> None:
        # The value head (and separate critic) learn at a higher rate than the policy.
        vparams = {id(p) for m in self.modules.values() for p in m.parameters()}
        policy = [p for p in self.params if id(p) not in vparams]
        value = [p for p in self.params if id(p) in vparams]
        from reasonlab.learn.sft import adamw

        self.optimizer = adamw(
            [{"params": [p for p in policy if p.ndim >= 2], "weight_decay": self.cfg.weight_decay},
             {"params": [p for p in policy if p.ndim < 2], "weight_decay": 0.0},
             {"params": value, "weight_decay": 0.0, "lr": self.cfg.lr * self.cfg.value_lr_scale}],
            self.cfg.lr)
        self.scheduler = self.make_scheduler()

    def __init__(self, cfg: PPOConfig, **kw: Any):
        super().__init__(cfg, **kw)
        self._value_param_groups()

    @property
    def beta(self) -> float:
        return self.kl_ctl.beta if self.kl_ctl is not None else self.cfg.beta

    def _forward(self, mb):
        """Policy logits and values at the completion positions: ``(b, T, V)``, ``(b, T)``."""
        decoder, lm_head = _decoder_and_head(self.model)
        h = hidden_at_completion(decoder, mb)
        logits = lm_head(h).float()
        if self.cfg.temperature != 1.0:  # the sampling policy is the one improved (see GRPOConfig.temperature)
            logits = logits / self.cfg.temperature
        hv = hidden_at_completion(self.modules["critic"], mb) if "critic" in self.modules else h
        values = self.modules["value_head"](hv.float()).squeeze(-1)
        return logits, values

    def step(self) -> dict[str, Any]:
        import torch

        from reasonlab.learn import losses
        from reasonlab.learn.rollout import make_microbatches, merge_twins, sample_metrics, token_logps
        from reasonlab.runtime.distributed import sum_float

        cfg = self.cfg
        t_start = time.time()
        examples = self.shard(self.next_examples(cfg.prompts_per_step))
        samples, scores, score_s = self.rollout(examples, seed=cfg.seed * 1_000_003 + self.step_no * 101
                                                + 7_919 * self.world.rank)
        gen_s = time.time() - t_start - score_s
        for s in samples:  # a reward that could not be computed teaches nothing: 0 and excluded from the loss
            if math.isnan(s.reward):
                s.reward, s.loss_weight_scale = 0.0, 0.0
            if cfg.overlong_filter and s.truncated:
                s.loss_weight_scale = 0.0

        # Process rewards (Math-Shepherd's step-by-step PPO): each step's reward on the token that ends it.
        step_r, process_stats = None, {}
        if self.process is not None:
            t0 = time.time()
            r, m, end, process_stats = self.step_rewards(samples)
            step_r = (r * m * cfg.process_coef, end)
            score_s += time.time() - t0

        t_train = time.time()
        t_max = max(max(len(s.completion_ids) for s in samples), 1)
        full_mask = torch.zeros((len(samples), t_max))
        for i, s in enumerate(samples):
            full_mask[i, :len(s.completion_ids)] = s.loss_weight_scale
        weights = self.batch_weights(full_mask)
        # Twins (the same completion of a prompt with the same rewards) have the same old log-probs, values,
        # reference log-probs and so GAE advantages: each distinct one runs once, with the twins' loss weights
        # summed, and counts weigh it as the samples it stands for in the batch statistics below.
        trained, counts = list(range(len(samples))), torch.ones(len(samples))
        if cfg.merge_twins:
            rewards_t = torch.zeros((len(samples), t_max))  # the token rewards before the KL term
            for i, s in enumerate(samples):
                if s.completion_ids:
                    rewards_t[i, len(s.completion_ids) - 1] = s.reward
                if step_r is not None:
                    rewards_t[i].index_add_(0, step_r[1][i], step_r[0][i].to(rewards_t.dtype))
            trained, weights, counts = merge_twins(samples, trained, rewards_t, weights)
        mbs = make_microbatches(samples, cfg.micro_batch_size, self.policy.pad_id, include=trained)
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32)
        # 1. Rollout statistics under the sampling weights: old log-probs, values, reference log-probs.
        old_logp, old_values, adv_t, ret_t = {}, {}, {}, {}
        kl_sum = kl_n = 0.0
        self.model.eval()
        with torch.no_grad():
            for m, mb in enumerate(mbs):
                mb = mb.to(self.device)
                with autocast:
                    logits, values = self._forward(mb)
                lp = token_logps(logits, mb.completion_ids)
                old_logp[m], old_values[m] = lp, values.float() * mb.mask
                token_r = torch.zeros_like(lp)
                if cfg.beta > 0 or self.kl_ctl is not None:
                    ref = self._ref_logp(mb, autocast)
                    kl = (lp - ref) * mb.mask                       # k1 per token, as in the reward of RLHF PPO
                    token_r = token_r - self.beta * kl
                    c = counts[mb.index].to(kl.device)
                    kl_sum, kl_n = kl_sum + float((kl.sum(1) * c).sum()), kl_n + float(c.sum())
                lengths = mb.mask.sum(1).long()
                for r, i in enumerate(mb.index):                    # the outcome reward on the last token
                    if lengths[r] > 0:
                        token_r[r, lengths[r] - 1] += samples[i].reward
                        if step_r is not None:
                            token_r[r].index_add_(0, step_r[1][i].to(token_r.device), step_r[0][i].to(token_r.device))
                adv_t[m], ret_t[m] = losses.gae(token_r, old_values[m], mb.mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:  # over this process's tokens (with torchrun: its share of the batch)
            allv = torch.cat([adv_t[m][mb.mask.to(self.device) > 0] for m, mb in enumerate(mbs)])
            allc = torch.cat([counts[mb.index][:, None].expand_as(mb.mask)[mb.mask > 0] for mb in mbs]).to(allv.device)
            mean = (allv * allc).sum() / allc.sum()
            std = (((allv - mean) ** 2 * allc).sum() / allc.sum()).sqrt() + 1e-6
            for m in adv_t:
                adv_t[m] = (adv_t[m] - mean) / std

        # 2. mu epochs of clipped policy + value updates over the batch (one optimizer step per epoch).
        self.model.train()
        stats = {k: 0.0 for k in ("loss", "policy_loss", "value_loss", "entropy", "clipped_low", "clipped_high")}
        n_tok = float(sum(len(s.completion_ids) for s in samples)) or 1.0
        for it in range(cfg.mu):
            for m, mb in enumerate(mbs):
                mb = mb.to(self.device)
                t = mb.mask.shape[1]
                w = weights[mb.index, :t].to(self.device)
                tm = mb.mask * counts[mb.index].to(self.device)[:, None]  # token mask for sample-averaged metrics
                with autocast:
                    logits, values = self._forward(mb)
                logp = token_logps(logits, mb.completion_ids)
                pg, clip = losses.policy_loss(losses.RATIOS[cfg.ratio](logp, old_logp[m], mb.mask), adv_t[m],
                                              cfg.eps_low, cfg.eps_high, cfg.dual_clip or None)
                vl = losses.value_loss(values.float(), old_values[m], ret_t[m], cfg.value_clip or None)
                loss = ((pg + cfg.vf_coef * vl) * w).sum()
                loss.backward()
                with torch.no_grad():
                    ent = losses.entropy_from_logits(logits)
                stats["loss"] += float(loss.detach()) / cfg.mu
                stats["policy_loss"] += float((pg.detach() * w).sum()) / cfg.mu
                stats["value_loss"] += float((vl.detach() * w).sum()) / cfg.mu
                stats["entropy"] += float((ent * tm).sum()) / n_tok / cfg.mu
                for k in ("clipped_low", "clipped_high"):
                    stats[k] += float((clip[k] * tm).sum()) / n_tok / cfg.mu
            self.sync_grads()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        # Over all processes: the adaptive beta must stay the same in each.
        n_kl = sum_float(kl_n, self.world)
        kl_mean = sum_float(kl_sum, self.world) / n_kl if n_kl else 0.0
        if self.kl_ctl is not None:
            self.kl_ctl.update(kl_mean, len(samples))
        self.step_no += 1

        lens = [len(s.completion_ids) for s in samples]
        self.add_totals(len(samples), sum(lens))
        wall = time.time() - t_start
        rewards = [s.reward for s in samples]
        rmean = sum(rewards) / len(rewards)
        rec: dict[str, Any] = {
            "reward_mean": rmean, "reward_std": math.sqrt(sum((r - rmean) ** 2 for r in rewards) / len(rewards)),
            **stats, "kl": kl_mean, "beta": self.beta, "grad_norm": float(grad_norm), "lr": lr,
            "value_mean": float(sum(float((v * mbs[m].mask.to(v.device) * counts[mbs[m].index].to(v.device)[:, None]).sum())
                                    for m, v in old_values.items()) / n_tok),
            "twin_fraction": 1.0 - len(trained) / len(samples),
            **sample_metrics(samples),
            "tokens_per_s": sum(lens) / max(wall, 1e-9), "time_generation_s": gen_s, "time_scoring_s": score_s,
            "time_training_s": time.time() - t_train, "time_step_s": wall,
            **self.reward_metrics([scores]),
            **process_stats,
        }
        self.last_samples = samples
        return self.merge_metrics(rec)

    def save(self, run_dir, extra):
        if self.kl_ctl is not None:
            extra = {**extra, "kl_ctl": self.kl_ctl.state_dict()}
        super().save(run_dir, extra)

    def restore(self, path):
        extra = super().restore(path)
        if self.kl_ctl is not None and "kl_ctl" in extra:
            self.kl_ctl.load_state_dict(extra["kl_ctl"])
        return extra


def main(argv: list[str] | None = None) -> int:
    return _main(argv, PPOConfig, "reasonlab train ppo", trainer_cls=PPOTrainer)


if __name__ == "__main__":
    sys.exit(main())
