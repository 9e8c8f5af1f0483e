"""Sweep throughput and memory against a plain forward pass over the same prompts.

A randomly initialised Qwen2 model with Qwen2.5-1.5B's shape (built from its
config, no download) or a smaller shape for CPUs; a full sweep (every layer,
digit scales 1-4, targets first and answer, logit lens) and, in the same run, a
plain batched forward pass over the same prompt+answer tokens. The ratio of the
two is the sweep's overhead.

    python benchmarks/gpu.py --shape qwen2.5-1.5b --device cuda --dtype bfloat16
    python benchmarks/gpu.py --shape small --device cpu --n 200

Prints a markdown table row per measurement (paste into benchmarks/RESULTS.md).
"""

import argparse
import gc
import json
import platform
import resource
import tempfile
import time

import torch
import transformers

import lens_digits as ld
from lens_digits.adapter import ModelAdapter
from lens_digits.batching import length_batches
from lens_digits.targets import encode_for_model
from lens_digits.tasks import TaskConfig, generate_problems

SHAPES = {
    # Qwen2.5-1.5B: hidden 1536, 28 layers, 12 heads (2 KV), MLP 8960, vocab 151936, tied embeddings
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2),
    "small": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2),
}


def build(shape: str, vocab: int, device: str, dtype: str):
    tok = ld.testing.char_tokenizer()
    cfg = transformers.Qwen2Config(
        vocab_size=vocab,
        max_position_embeddings=4096,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **SHAPES[shape],
    )
    torch.manual_seed(0)
    folder = tempfile.mkdtemp(prefix="lens_digits_bench_")
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return ld.load_model(folder, device=device, dtype=dtype, progress=False)


def peak_memory(device: str) -> float:
    """Peak memory in GiB: CUDA allocator peak, or the process's max RSS on CPU."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def plain_forward(model, problems, batch_size: int, device: str) -> float:
    """Seconds for model(tokens) over the same prompt+answer tokens, same batches, nothing kept."""
    encoded = encode_for_model(ModelAdapter.wrap(model), problems)
    start = time.perf_counter()
    for rows in length_batches([e.length for e in encoded], batch_size):
        tokens = torch.tensor([list(encoded[i].prompt_ids) + list(encoded[i].answer_ids) for i in rows], device=device)
        model(tokens)
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b")
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32")
    p.add_argument("--n", type=int, default=1000, help="problems per scale (scales 1-4)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2, help="timed repeats; the best is reported")
    args = p.parse_args()

    model = build(args.shape, args.vocab, args.device, args.dtype)
    problems = generate_problems(TaskConfig(scales=[1, 2, 3, 4], n_per_scale=args.n, seed=0))
    n = len(problems)
    # warm-up (kernels, allocator) on a few problems
    ld.run_sweep(model, scales=[1], n_per_scale=20, target="both", batch_size=args.batch_size)
    plain_forward(model, problems[:20], args.batch_size, args.device)

    results = {}
    for name in ("plain forward", "sweep"):
        best, mem = float("inf"), 0.0
        for _ in range(args.repeats):
            reset(args.device)
            if name == "sweep":
                start = time.perf_counter()
                ld.run_sweep(model, scales=[1, 2, 3, 4], n_per_scale=args.n, target="both", batch_size=args.batch_size)
                sync(args.device)
                seconds = time.perf_counter() - start
            else:
                seconds = plain_forward(model, problems, args.batch_size, args.device)
            best = min(best, seconds)
            mem = max(mem, peak_memory(args.device))
        results[name] = {"seconds": best, "problems_per_s": n / best, "peak_gib": mem}

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(json.dumps({"args": vars(args), "device": device_name, "problems": n, "results": results}, indent=2))
    ratio = results["sweep"]["seconds"] / results["plain forward"]["seconds"]
    print("\n| shape | device | dtype | problems | what | s | problems/s | peak GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(
            f"| {args.shape} | {device_name} | {args.dtype} | {n} | {name} | {r['seconds']:.2f} | "
            f"{r['problems_per_s']:.0f} | {r['peak_gib']:.2f} |"
        )
    print(f"\nsweep / plain forward time ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
