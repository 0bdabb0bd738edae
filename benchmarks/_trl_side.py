"""TRL's side of ``benchmarks/grpo_vs_trl.py``: ``trl.GRPOTrainer`` paced step by step by the parent.

Started by ``grpo_vs_trl.py`` with TRL's private install directory on ``PYTHONPATH`` (TRL is never a
dependency of reasonlab). ``GRPOTrainer.train()`` owns its loop, so the pacing lives in a
``TrainerCallback``: at the end of each optimizer step it records the step's timings, and once the
parent's requested number of steps is done it sends them and blocks until the next request. The
time of a step runs from the end of the previous one (after the wait) to ``on_step_end``, so TRL's
per-step bookkeeping between steps is counted too.

The TRL settings that make it the same workload as reasonlab's (see the parent's docstring):
``per_device_train_batch_size`` = micro-batch and ``gradient_accumulation_steps`` = prompts x group /
micro-batch (one generation of the whole batch per optimizer step, so no old-log-prob pass),
``num_generations`` = group size, ``max_completion_length``, ``temperature``, ``top_p=1``,
``top_k=0``, ``num_iterations=1``, ``beta=0``, ``epsilon=0.2``, ``loss_type="dapo"`` (token mean over
the batch), ``scale_rewards="group"``, ``optim="adamw_torch"``, constant learning rate,
``max_grad_norm=1``, ``shuffle_dataset=False``; and for the CPU: ``use_cpu=True``, ``bf16=False``
(TRL defaults to bf16) and ``gradient_checkpointing=False`` (TRL defaults to True).
"""

from __future__ import annotations

import statistics
import tempfile
import time

from grpo_vs_trl import BenchSettings, Channel, StepProfiler, load_examples, prompt_hash, worker_main


class StopWorker(Exception):
    """The parent is done with this worker."""


def run(s: BenchSettings, chan: Channel) -> None:
    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from reasonlab.rewards.functions import TaskReward

    task, examples = load_examples(s)
    verifier = TaskReward(task)

    def accuracy(prompts, completions, example_index, **kwargs):
        """The same verifier as reasonlab's ``accuracy`` reward, on the completion's text."""
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return verifier(prompts, texts, example=[examples[i] for i in example_index])

    dataset = datasets.Dataset.from_list([{"prompt": e.prompt, "example_index": i} for i, e in enumerate(examples)])
    tokenizer = AutoTokenizer.from_pretrained(s.model_path)
    model = AutoModelForCausalLM.from_pretrained(s.model_path, dtype=torch.float32)
    batch = s.prompts * s.group_size
    out_dir = tempfile.TemporaryDirectory(prefix="grpo_vs_trl.trl.")  # nothing is saved there (save_strategy="no")
    args = GRPOConfig(
        output_dir=out_dir.name,
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        per_device_train_batch_size=s.micro_batch, gradient_accumulation_steps=batch // s.micro_batch,
        num_generations=s.group_size, max_completion_length=s.max_new_tokens,
        temperature=s.temperature, top_p=1.0, top_k=0,
        num_iterations=1, beta=0.0, epsilon=0.2, loss_type="dapo", scale_rewards="group",
        learning_rate=s.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", max_steps=s.total_steps, shuffle_dataset=False, seed=s.seed,
        report_to="none", logging_strategy="no", save_strategy="no", disable_tqdm=True, log_completions=False,
        dataloader_num_workers=0, remove_unused_columns=False,
    )
    stats: dict = {}

    class Pacer(TrainerCallback):
        """Hands control to the parent between blocks of steps, and times each step and its optimizer."""

        def __init__(self) -> None:
            self.want, self.buffer, self.t_last, self.t_opt = 0, [], 0.0, 0.0

        def _next_request(self) -> None:
            cmd = chan.recv()
            if cmd["cmd"] == "stop":
                raise StopWorker
            self.want, self.buffer = cmd["n"], []
            prof.take(0.0)  # nothing ran while waiting; start the next step clean
            self.t_last = time.perf_counter()

        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            chan.send({"ready": True, "trl": trl.__version__, "torch": torch.__version__,
                       "transformers": transformers.__version__, "threads": torch.get_num_threads(),
                       "dtype": str(next(trainer.model.parameters()).dtype),
                       "mixed_precision": str(trainer.accelerator.mixed_precision),
                       "gradient_checkpointing": bool(getattr(trainer.model, "is_gradient_checkpointing", False)),
                       "optimizer": type(getattr(optimizer, "optimizer", optimizer)).__name__,
                       "per_device_train_batch_size": args.per_device_train_batch_size,
                       "gradient_accumulation_steps": args.gradient_accumulation_steps,
                       "generation_batch_size": args.generation_batch_size,
                       "steps_per_generation": args.steps_per_generation, "num_iterations": args.num_iterations,
                       "beta": args.beta, "loss_type": args.loss_type, "scale_rewards": args.scale_rewards,
                       "lr_scheduler_type": str(args.lr_scheduler_type), "device": str(args.device)})
            self._next_request()

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self.t_opt = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kwargs):
            prof.add("optimizer_s", time.perf_counter() - self.t_opt)

        def on_step_end(self, args, state, control, **kwargs):
            rec = prof.take(time.perf_counter() - self.t_last)
            rec.update(stats, threads=torch.get_num_threads())
            stats.clear()
            self.buffer.append(rec)
            if len(self.buffer) >= self.want:
                chan.send({"steps": self.buffer})
                self._next_request()
            else:
                self.t_last = time.perf_counter()

    trainer = GRPOTrainer(model=model, reward_funcs=accuracy, args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[Pacer()])
    prof = StepProfiler(trainer.model)
    eos_ids = set(trainer.eos_token_ids)
    timed_generate = prof.wrap("generation_s", trainer._generate_single_turn, generation=True)

    def generate(prompt_ids, *a, **kw):
        completion_ids, logprobs = timed_generate(prompt_ids, *a, **kw)
        # Same definitions as reasonlab's metrics: lengths count the EOS token; truncated = no EOS within the limit.
        lens = [len(c) for c in completion_ids]
        stats.update(completion_len_mean=statistics.mean(lens), completions=len(lens),
                     truncation_rate=statistics.mean(float(n >= s.max_new_tokens and (not c or c[-1] not in eos_ids))
                                                     for n, c in zip(lens, completion_ids)),
                     prompt_len_mean=statistics.mean(len(p) for p in prompt_ids), prompt_hash=prompt_hash(prompt_ids),
                     sample_completions=tokenizer.batch_decode(completion_ids[:2], skip_special_tokens=True))
        return completion_ids, logprobs

    trainer._generate_single_turn = generate
    timed_rewards = prof.wrap("scoring_s", trainer._calculate_rewards)

    def rewards(*a, **kw):
        per_func = timed_rewards(*a, **kw)
        stats["reward_mean"] = float(torch.nanmean(per_func[:, 0]))
        return per_func

    trainer._calculate_rewards = rewards
    try:
        trainer.train()
    except StopWorker:
        return
    finally:
        out_dir.cleanup()


if __name__ == "__main__":
    worker_main(run)
