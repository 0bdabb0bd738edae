"""reasonlab's side of ``benchmarks/grpo_vs_trl.py``: ``learn.grpo.Trainer.step()`` on request.

Started by ``grpo_vs_trl.py`` with the settings as a JSON argument; loads the model once, then runs
the number of training steps the parent asks for and answers with their timings (see
``grpo_vs_trl.Channel`` for the protocol). ``Trainer.step()`` is one optimizer batch: rollouts with
reasonlab's own sampler (``policies/hf.py``), rewards, advantages, one update -- without ``train()``'s
evaluation and checkpoints. The prompt order is pinned to the benchmark's list, so step ``i`` sees the
same problems as TRL's step ``i``.
"""

from __future__ import annotations

import statistics
import time

from grpo_vs_trl import BenchSettings, Channel, StepProfiler, load_examples, prompt_hash, worker_main


def run(s: BenchSettings, chan: Channel) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reasonlab.learn.grpo import GRPOConfig, Trainer

    task, examples = load_examples(s)
    tokenizer = AutoTokenizer.from_pretrained(s.model_path)
    model = AutoModelForCausalLM.from_pretrained(s.model_path, dtype=torch.float32)
    # Every setting that matters is spelled out, so a change of GRPOConfig's defaults cannot change the benchmark.
    cfg = GRPOConfig(model=s.model_path, task=s.task, task_options=s.task_options, rewards="accuracy",
                     advantage="grpo", loss_agg="token_mean", ratio="token", eps_low=0.2, eps_high=0.2, mu=1,
                     beta=0.0, entropy_coef=0.0, prompts_per_step=s.prompts, group_size=s.group_size,
                     max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=1.0, top_k=0,
                     micro_batch_size=s.micro_batch, lr=s.lr, lr_schedule="constant", warmup_steps=0,
                     weight_decay=0.0, max_grad_norm=1.0, lora=False, gradient_checkpointing=False, device="cpu",
                     dtype="float32", max_steps=s.total_steps, seed=s.seed, monitor="off")
    tr = Trainer(cfg, model=model, tokenizer=tokenizer, task=task)

    position = 0

    def next_examples(k: int) -> list:
        nonlocal position
        out = examples[position:position + k]
        position += k
        return out

    tr.next_examples = next_examples  # the benchmark's prompt order instead of the run's permutation
    prof = StepProfiler(tr.model)
    tr.policy.generate_ids = prof.wrap("generation_s", tr.policy.generate_ids, generation=True)
    tr.rewards.score = prof.wrap("scoring_s", tr.rewards.score)
    tr.optimizer.step = prof.wrap("optimizer_s", tr.optimizer.step)

    def one_step() -> dict:
        t0 = time.perf_counter()
        rec = tr.step()
        out = prof.take(time.perf_counter() - t0)
        samples = tr.last_samples
        out.update(completion_len_mean=rec["completion_len_mean"], truncation_rate=rec["truncation_rate"],
                   reward_mean=rec["reward_mean"], completions=len(samples),
                   prompt_len_mean=statistics.mean(len(x.prompt_ids) for x in samples),
                   prompt_hash=prompt_hash([x.prompt_ids for x in samples]), threads=torch.get_num_threads(),
                   sample_completions=[x.text for x in samples[:2]],
                   # reasonlab's own split, as a cross-check of the profiler's
                   own_generation_s=rec["time_generation_s"], own_training_s=rec["time_training_s"])
        return out

    chan.send({"ready": True, "torch": torch.__version__, "transformers": transformers.__version__,
               "threads": torch.get_num_threads(), "dtype": str(next(tr.model.parameters()).dtype),
               "gradient_checkpointing": bool(getattr(tr.model, "is_gradient_checkpointing", False)),
               "micro_batch_size": cfg.micro_batch_size, "optimizer": type(tr.optimizer).__name__})
    while True:
        cmd = chan.recv()
        if cmd["cmd"] == "stop":
            return
        chan.send({"steps": [one_step() for _ in range(cmd["n"])]})


if __name__ == "__main__":
    worker_main(run)
