"""Throughput of a logit-lens sweep on a GPU, against its floor in the same run.

A randomly initialised Qwen2 with Qwen2.5-1.5B's shape (hidden 1,536, 28
layers, 12 heads with 2 KV heads, MLP 8,960, vocabulary 151,936; built from its
config, nothing downloaded) in bfloat16; digit scales 1-4, target ``answer``
(every answer position, teacher-forced). Measured in one run, each the best of
``--repeats``: the floor (Hugging Face forward with ``output_hidden_states``, final
norm, unembedding and argmax at the decoded positions) and ``run_sweep`` with the
logit lens (and, with ``--probes``, with probes fitted on 3x as many train
problems). Reports problems per second and the ratio to the floor, as Markdown
rows for benchmarks/RESULTS.md, and how often the sweep's top-1 equals the
floor's (every decoded cell, untimed). One prepared command; within five minutes on one
H100/H200-class GPU:

    python benchmarks/gpu.py --device cuda --dtype bfloat16 --probes
    python benchmarks/gpu.py --shape tiny --device cpu --dtype float32 --n 5 --repeats 1   # the CPU check the tests run
"""

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from sweep_floor import build, floor, problems_and_encoding, sweep_top1  # noqa: E402

import lens_digits as ld  # noqa: E402

SHAPES = {
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2),
    "small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=8, num_key_value_heads=2),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_seconds(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def peak_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b")
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32")
    p.add_argument("--n", type=int, default=2000, help="test problems per scale (scales 1-4; scale 1 has 100 in all)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    p.add_argument("--probes", action="store_true", help="also time a sweep with probes (3x n train problems per scale)")
    args = p.parse_args()

    _, hf, model = build(args.vocab, SHAPES[args.shape], args.device, args.dtype)
    task, problems, encoded = problems_and_encoding(model, args.n)
    n_problems = len(encoded)
    kw = dict(scales=task.scales, n_per_scale=task.n_per_scale, n_train=0, n_val=0, target="answer", batch_size=args.batch_size)

    def sweep():
        return ld.run_sweep(model, **kw)

    floor(hf, encoded, "answer", args.batch_size)  # warm-up (CUDA kernels, allocator)
    sweep()
    t_floor = best_seconds(lambda: floor(hf, encoded, "answer", args.batch_size), args.repeats, args.device)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t_sweep = best_seconds(sweep, args.repeats, args.device)
    rows = {
        "floor": (t_floor, n_problems),
        "sweep (logit lens)": (t_sweep, n_problems),
    }
    if args.probes:
        with_probes = dict(kw, n_train=3 * args.n, n_val=args.n, methods=["logit_lens", "probe"])
        t_probes = best_seconds(lambda: ld.run_sweep(model, **with_probes), 1, args.device)
        rows["sweep (logit lens + probes, train 3x)"] = (t_probes, n_problems)
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    print(json.dumps({"device": gpu, "shape": args.shape, "dtype": args.dtype, "problems": n_problems, "batch_size": args.batch_size}))
    print("| contender | seconds | scored problems/s | ratio to floor |")
    print("| --- | --- | --- | --- |")
    for name, (seconds, n) in rows.items():
        print(f"| {name} | {seconds:.2f} | {n / seconds:,.0f} | {seconds / t_floor:.2f} |")
    print(f"peak memory: {peak_gib(args.device):.2f} GiB")
    same = floor(hf, encoded, "answer", args.batch_size) == sweep_top1(model, encoded, "answer", args.batch_size)
    print(f"top-1 of the sweep equal to the floor's at {same.float().mean().item():.4%} of {same.numel():,} decoded cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
