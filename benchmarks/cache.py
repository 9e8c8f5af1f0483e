"""What the residual cache costs: a sweep with it (writing, then reading back) against one without, in one process.

Contenders, interleaved, medians of ``--repeats`` (wall seconds, since the
cache writes files and flushes them; CPU seconds beside):

- ``no cache``: ``run_sweep`` as in a notebook, residuals in memory only;
- ``cache, cold``: the same sweep writing every shard into a fresh folder (the
  first run of ``lens-digits run``, which caches by default);
- ``cache, warm``: the same sweep again over that folder: every shard is read
  back and checked (SHA-256), the model runs on nothing (a resumed or repeated run).

Every contender must give the same grid. Model: a randomly initialised Qwen2
(hidden 512, 12 layers, vocabulary ``--vocab``; see ``sweep_floor.py``) or the
built-in model.

``--cap-mib N`` instead runs one sweep with the cache and one without, each in a
child process inside a fresh memory cgroup capped at N MiB (cgroup v1 or v2; it
needs permission to make one, as root in a container has), with residuals
several times larger than the cap: with the cache they are assembled in a
memory-mapped file, pages the kernel writes out and reads back under the cap;
without it they are process memory, and the kernel kills the process.

    python benchmarks/cache.py --vocab 32000 --n 200 --target answer --methods logit_lens
    python benchmarks/cache.py --model builtin --n 200 --target answer --methods logit_lens,probe
    python benchmarks/cache.py --vocab 2000 --scales 4-6 --n 4000 --target answer --cap-mib 1400
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_floor import SHAPE, build  # noqa: E402

import lens_digits as ld  # noqa: E402
from lens_digits.residuals.cache import ResidualCache  # noqa: E402

CHILD = """
import json, resource, sys, tempfile, time, warnings
import lens_digits as ld
from lens_digits.residuals.cache import ResidualCache
folder, scales, n, target, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
model = ld.load_model(folder, device="cpu", progress=False)
cache = ResidualCache(tempfile.mkdtemp(prefix="lens-digits-capped-")) if mode == "cache" else None
start = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    grid = ld.run_sweep(model, scales=scales, n_per_scale=n, target=target, methods=["logit_lens"], cache=cache)
size = sum(f.stat().st_size for f in cache.folder.iterdir() if f.suffix == ".safetensors") if cache else 0
print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "shards": size, "cells": len(grid.table)}))
"""


def _cgroup(cap: int) -> tuple[Path, Path]:
    """A fresh memory cgroup (v2, else v1) beside this process's own, capped at ``cap`` bytes: (folder, limit file)."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    v2 = next((line.split(":", 2)[2] for line in lines if line.startswith("0::")), None)
    v1 = next((line.split(":", 2)[2] for line in lines if ":memory:" in line), None)
    if v1 is not None and Path("/sys/fs/cgroup/memory").is_dir():
        folder, limit = Path("/sys/fs/cgroup/memory") / v1.lstrip("/") / f"lens-digits-bench-{os.getpid()}", "memory.limit_in_bytes"
    elif v2 is not None:
        folder, limit = Path("/sys/fs/cgroup") / v2.lstrip("/") / f"lens-digits-bench-{os.getpid()}", "memory.max"
    else:
        raise SystemExit("no memory cgroup found: --cap-mib needs cgroups")
    folder.mkdir()
    (folder / limit).write_text(str(cap))
    return folder, folder / limit


def capped(args) -> int:
    folder = build(args.vocab, SHAPE)[0]
    cap = args.cap_mib * 2**20
    print(
        f"qwen2 (vocab {args.vocab}), scales {args.scales}, {args.n} test problems a scale, target {args.target}, logit_lens; "
        f"memory capped at {args.cap_mib} MiB"
    )
    print("| | outcome | residual shards | peak RSS | wall s |")
    print("| --- | --- | --- | --- | --- |")
    for mode in ("cache", "no cache"):
        group, _ = _cgroup(cap)
        try:
            child = [sys.executable, "-c", CHILD, folder, args.scales, str(args.n), args.target, mode.replace(" ", "-")]
            enter = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(group / "cgroup.procs")]  # the child starts inside the cgroup
            p = subprocess.run([*enter, *child], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        finally:
            for _ in range(50):
                try:
                    group.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
        if p.returncode == 0:
            r = json.loads(p.stdout.strip().splitlines()[-1])
            shards = f"{r['shards'] / 2**20:,.0f} MiB" if r["shards"] else "-"
            print(f"| {mode} | completed | {shards} | {r['peak_rss'] / 2**20:,.0f} MiB | {r['seconds']:.1f} |")
        else:
            print(f"| {mode} | killed (exit {p.returncode}: out of memory under the cap) | - | - | - |")
    shutil.rmtree(folder, ignore_errors=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["builtin", "qwen2"], default="qwen2")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--n", type=int, default=200, help="test problems a scale (scales 1-3)")
    p.add_argument("--target", default="answer")
    p.add_argument("--methods", default="logit_lens")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scales", default="1-3", help="digit scales (for --cap-mib)")
    p.add_argument("--cap-mib", type=int, default=None, help="run the capped-memory comparison under this many MiB")
    args = p.parse_args()
    if args.cap_mib is not None:
        return capped(args)
    model = ld.load_builtin_model("arith-llama") if args.model == "builtin" else build(args.vocab, SHAPE)[2]
    kw = dict(scales="1-3", n_per_scale=args.n, target=args.target, methods=args.methods.split(","), seed=0)
    wall: dict[str, list[float]] = {"no cache": [], "cache, cold": [], "cache, warm": []}
    cpu: dict[str, list[float]] = {k: [] for k in wall}
    grids = {}
    root = Path(tempfile.mkdtemp(prefix="lens-digits-cache-bench-"))
    size = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ld.run_sweep(model, **kw)  # warm-up, not timed
            for r in range(args.repeats):
                folder = root / f"r{r}"
                for name in wall:
                    cache = None if name == "no cache" else ResidualCache(folder)
                    w, c = time.perf_counter(), time.process_time()
                    grids[name] = ld.run_sweep(model, cache=cache, **kw)
                    wall[name].append(time.perf_counter() - w)
                    cpu[name].append(time.process_time() - c)
                size = sum(f.stat().st_size for f in folder.iterdir())
                shutil.rmtree(folder)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = grids["no cache"].table
    for name, grid in grids.items():
        assert (grid.table["accuracy"] - base["accuracy"]).abs().max() < 1e-9, f"{name} changed the grid"
    assert grids["cache, warm"].table.equals(grids["cache, cold"].table), "reading back changed the grid"
    n_problems = sum(grids["no cache"].record.n_problems.values()) if "probe" in args.methods else 3 * args.n
    print(
        f"{args.model} (vocab {args.vocab if args.model == 'qwen2' else 'built-in'}), scales 1-3, {args.n} test problems a scale, "
        f"target {args.target}, methods {args.methods}; cache {size / 2**20:.1f} MiB for {n_problems} problems; median of {args.repeats}"
    )
    print("| | wall s | / no cache | CPU s | / no cache |")
    print("| --- | --- | --- | --- | --- |")
    w0, c0 = statistics.median(wall["no cache"]), statistics.median(cpu["no cache"])
    for name in wall:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"| {name} | {w:.2f} | {w / w0:.2f} | {c:.2f} | {c / c0:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
