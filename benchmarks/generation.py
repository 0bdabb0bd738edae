"""Generation throughput on the built-in smollm2: our transformers sampler vs ``model.generate`` vs llama.cpp.

Same model (SmolLM2-135M-Instruct; the transformers runs use the checkpoint dequantized from the
shipped GGUF, llama.cpp runs that GGUF), same prompts (the first GSM8K test questions in the chat
template), same settings: temperature 0.8, top-k and top-p off, 128 new tokens, stop at EOS. The
three are interleaved run by run, so machine noise hits them alike, and each figure is the median
of ``--repeats`` runs. Tokens/s counts real generated tokens (up to and including EOS), not padding.

Two workloads: ``distinct`` (B different prompts, one sample each) and ``grouped`` (B/8 prompts, 8
samples each: the shape of GRPO rollouts and maj@8 evaluation; ``model.generate`` gets
``num_return_sequences=8``, llama.cpp and our sampler get ``n=8``).

Also printed: the fraction of the machine's fp32 matmul throughput each reaches, with 2 x parameters
FLOPs per generated token (the usual estimate: one multiply-add per weight per token, attention
ignored), and the peak measured with a large ``torch.mm`` on the same threads.

Run::

    python benchmarks/generation.py                      # batch 16 and 64, both workloads, 3 repeats
    python benchmarks/generation.py --batches 64 --workloads grouped --repeats 5 --json out.json
    python benchmarks/generation.py --batches 64 --workloads distinct --ablate-kernel   # + our sampler without the C kernel
    python benchmarks/generation.py --batches 64 --no-llamacpp --bf16    # + our sampler on bfloat16 weights
    python benchmarks/generation.py --batches 64 --workloads grouped --no-llamacpp --ablate-histories   # + one row per sample
    python benchmarks/generation.py --batches 64 --no-llamacpp --ablate-lean --decode-bf16   # + transformers forward, + bf16 products

``--ablate-histories`` adds our sampler decoding one batch row per sample throughout, where by default samples of a
prompt that drew the same tokens so far share one (``HFPolicy(share_histories=...)``); it only matters for ``grouped``.

``--ablate-lean`` adds our sampler decoding through the transformers forward instead of the lean decode step
(``HFPolicy(lean_decode=False)``); ``--decode-bf16`` adds it with the lean step's matrix products on bfloat16 weight
copies (``HFPolicy(decode_dtype="bfloat16")``, everything else float32).

``--bf16`` adds our sampler on a bfloat16 copy of the weights (``--dtype bfloat16`` in ``reasonlab eval``). It pays
only on a CPU with bf16 units (AVX512-BF16, AMX): elsewhere PyTorch emulates bf16 matmuls and it is slower. It
changes the model's numbers a little, and its decode attention is PyTorch's (the C kernel is float32 only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from reasonlab.policies import decode_kernel  # noqa: E402
from reasonlab.policies.hf import HFPolicy, _left_padded  # noqa: E402
from reasonlab.policies.models import smollm2_gguf_path, smollm2_hf_checkpoint  # noqa: E402
from reasonlab.tasks.gsm8k import GSM8KTask  # noqa: E402
from reasonlab.types import SamplingParams  # noqa: E402


def matmul_peak_gflops(size: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def cpu_bf16_units() -> str:
    """The CPU's bf16 matmul units, as /proc/cpuinfo names them ('none' if it has neither)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return "unknown"
    return ", ".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "none"


def run_ours(policy: HFPolicy, ids: list[list[int]], sp: SamplingParams) -> tuple[int, float]:
    t = time.perf_counter()
    out = policy.generate_ids(ids, sp)
    return sum(c.completion_tokens for c in out), time.perf_counter() - t


def run_generate(policy: HFPolicy, ids: list[list[int]], sp: SamplingParams) -> tuple[int, float]:
    # model.generate on the same left-padded batch, same sampling settings; n samples per prompt
    # through num_return_sequences (which expands the prompts before the prefill).
    width = max(len(x) for x in ids)
    inp, mask = _left_padded(ids, width, policy.pad_id)
    torch.manual_seed(sp.seed or 0)
    t = time.perf_counter()
    with torch.inference_mode():
        out = policy.model.generate(input_ids=inp, attention_mask=mask, max_new_tokens=sp.max_new_tokens,
                                    do_sample=True, temperature=sp.temperature, top_k=0, top_p=1.0,
                                    num_return_sequences=sp.n, pad_token_id=policy.pad_id)
    dt = time.perf_counter() - t
    tokens = 0
    for row in out[:, width:].tolist():
        tokens += next((j + 1 for j, tok in enumerate(row) if tok in policy.eos_ids), len(row))
    return tokens, dt


def run_llamacpp(policy, prompts, sp: SamplingParams) -> tuple[int, float]:
    t = time.perf_counter()
    out = policy.generate(prompts, sp)
    return sum(c.completion_tokens for c in out), time.perf_counter() - t


kernel_available = decode_kernel.available


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="16,64")
    ap.add_argument("--workloads", default="distinct,grouped")
    ap.add_argument("--group", type=int, default=8, help="samples per prompt in the grouped workload")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--no-llamacpp", action="store_true")
    ap.add_argument("--ablate-kernel", action="store_true",
                    help="also run our sampler with PyTorch attention instead of the C decode kernel "
                         "(row 'reasonlab-hf-nokernel'), to show what the kernel adds")
    ap.add_argument("--ablate-histories", action="store_true",
                    help="also run our sampler with one decode row per sample (no shared histories)")
    ap.add_argument("--ablate-lean", action="store_true",
                    help="also run our sampler with the transformers forward instead of the lean decode step")
    ap.add_argument("--decode-bf16", action="store_true",
                    help="also run our sampler with bfloat16 products in the lean decode step (decode_dtype)")
    ap.add_argument("--bf16", action="store_true",
                    help="also run our sampler on bfloat16 weights (row 'reasonlab-hf-bf16')")
    ap.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.json:   # before the runs, so that half an hour of measuring is not lost to a missing folder
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)

    ckpt = smollm2_hf_checkpoint()
    ours = HFPolicy(str(ckpt), device="cpu", dtype="float32", max_batch_size=max(int(b) for b in args.batches.split(",")))
    params = sum(p.numel() for p in ours.model.parameters())
    ours_rows = HFPolicy(str(ckpt), device="cpu", dtype="float32", max_batch_size=ours.max_batch_size, model=ours.model,
                         tokenizer=ours.tokenizer, share_histories=False) if args.ablate_histories else None
    same = dict(device="cpu", dtype="float32", max_batch_size=ours.max_batch_size, model=ours.model,
                tokenizer=ours.tokenizer)
    ours_nolean = HFPolicy(str(ckpt), lean_decode=False, **same) if args.ablate_lean else None
    ours_decode_bf16 = HFPolicy(str(ckpt), decode_dtype="bfloat16", **same) if args.decode_bf16 else None
    ours_bf16 = HFPolicy(str(ckpt), device="cpu", dtype="bfloat16", max_batch_size=ours.max_batch_size) if args.bf16 else None
    llama = None
    if not args.no_llamacpp:
        from reasonlab.policies.llamacpp import LlamaCppPolicy

        llama = LlamaCppPolicy(str(smollm2_gguf_path()), n_threads=args.threads)
    examples = GSM8KTask(prompt_format="chat").examples("test", max(int(b) for b in args.batches.split(",")))
    peak = matmul_peak_gflops()
    kernel = decode_kernel.available()
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} torch threads, "
          f"fp32 matmul peak {peak:.1f} GFLOP/s; bf16 units: {cpu_bf16_units()}; model {params / 1e6:.1f}M params; "
          f"decode attention: {'C kernel' if kernel else 'PyTorch (no C kernel here)'}")

    results = {}
    for workload in args.workloads.split(","):
        for b in [int(x) for x in args.batches.split(",")]:
            n = args.group if workload == "grouped" else 1
            prompts = [e.prompt for e in examples[:b // n]]
            ids = [ours.encode(p) for p in prompts]
            runs: dict[str, list[float]] = {"reasonlab-hf": [], "model.generate": []}
            if args.ablate_kernel and kernel:
                runs["reasonlab-hf-nokernel"] = []
            if ours_rows is not None:
                runs["reasonlab-hf-row-per-sample"] = []
            if ours_nolean is not None:
                runs["reasonlab-hf-nolean"] = []
            if ours_decode_bf16 is not None:
                runs["reasonlab-hf-decode-bf16"] = []
            if ours_bf16 is not None:
                runs["reasonlab-hf-bf16"] = []
            if llama is not None:
                runs["llama.cpp"] = []
            for r in range(args.repeats):
                sp = SamplingParams(n=n, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                                    seed=1000 + r)
                for name in runs:
                    if name == "reasonlab-hf":
                        tok, dt = run_ours(ours, ids, sp)
                    elif name == "reasonlab-hf-nokernel":
                        decode_kernel.available = lambda: False
                        try:
                            tok, dt = run_ours(ours, ids, sp)
                        finally:
                            decode_kernel.available = kernel_available
                    elif name == "reasonlab-hf-row-per-sample":
                        tok, dt = run_ours(ours_rows, ids, sp)
                    elif name == "reasonlab-hf-nolean":
                        tok, dt = run_ours(ours_nolean, ids, sp)
                    elif name == "reasonlab-hf-decode-bf16":
                        tok, dt = run_ours(ours_decode_bf16, ids, sp)
                    elif name == "reasonlab-hf-bf16":
                        tok, dt = run_ours(ours_bf16, ids, sp)
                    elif name == "model.generate":
                        tok, dt = run_generate(ours, ids, sp)
                    else:
                        tok, dt = run_llamacpp(llama, prompts, sp)
                    runs[name].append(tok / dt)
                    print(f"  {workload:8s} batch {b:3d} run {r} {name:22s} {tok:6d} tokens {dt:7.1f} s "
                          f"{tok / dt:8.1f} tok/s", flush=True)
            med = {name: statistics.median(v) for name, v in runs.items()}
            results[f"{workload}-{b}"] = {
                "workload": workload, "batch": b, "tokens_per_s": med, "runs": runs,
                "speedup_vs_generate": med["reasonlab-hf"] / med["model.generate"],
                "peak_fraction": {k: v * 2 * params / (peak * 1e9) for k, v in med.items()}}

    print(f"\n{'workload':9} {'batch':>5} {'method':22} {'tok/s (median)':>15} {'vs generate':>12} {'of fp32 peak':>13}")
    for res in results.values():
        for name, v in res["tokens_per_s"].items():
            print(f"{res['workload']:9} {res['batch']:>5} {name:22} {v:15.1f} "
                  f"{v / res['tokens_per_s']['model.generate']:11.2f}x {res['peak_fraction'][name]:12.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peak_gflops": peak, "params": params, "threads": args.threads, "decode_kernel": kernel,
                       "results": results,
                       "date": time.strftime("%Y-%m-%d"), "machine": platform.platform()}, f, indent=2)


if __name__ == "__main__":
    main()
