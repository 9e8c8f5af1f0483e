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

    python benchmarks/cache.py --vocab 32000 --n 200 --target answer --methods logit_lens
    python benchmarks/cache.py --model builtin --n 200 --target answer --methods logit_lens,probe
"""

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_floor import SHAPE, build  # noqa: E402

import lens_digits as ld  # noqa: E402
from lens_digits.cache import ResidualCache  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["builtin", "qwen2"], default="qwen2")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--n", type=int, default=200, help="test problems a scale (scales 1-3)")
    p.add_argument("--target", default="answer")
    p.add_argument("--methods", default="logit_lens")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    model = ld.load_builtin_model() if args.model == "builtin" else build(args.vocab, SHAPE)[2]
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
