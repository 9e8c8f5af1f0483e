"""Attribution patching against exact patching: passes per pair and CPU time, in one process, on the same pairs.

Model: a built-in model (default ``arith-llama-28``, 28 blocks, 29 layer
columns). Problems: additions at digit scales 1-2, ``--n`` test problems a
scale, every test problem that has a source patched (the same seeded pairs for
every contender). Contenders, each scoring every layer column of every pair at
the last prompt position (target ``first``):

- ``patch``: the exact interchange intervention (one patched forward per column);
- ``attribution``: the first-order estimate alone (``exact=False``): one forward
  and one backward of the target's prompt give every column;
- ``attribution+exact``: the estimate and, to score it, the exact effect on the
  logit difference (one forward per column, and one unpatched).

Forward passes are counted as rows through the embedding (a pass over a batch of
B prompts is B); backward passes as the method reports them. Times are CPU
seconds, medians of interleaved repeats; the ratio to ``patch`` is what to read.

    python benchmarks/attribution.py --model arith-llama-28 --n 30 --repeats 3
"""

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import lens_digits as ld
from lens_digits.methods import ActivationPatching, AttributionPatching
from lens_digits.problems.tasks import TaskConfig, generate_problems
from lens_digits.residuals.collect import collect_residuals


def main() -> int:
    """Run the contenders and print a Markdown table.

    Returns:
        The exit status (0).
    """
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="arith-llama-28", help="a built-in model's name")
    p.add_argument("--n", type=int, default=30, help="test problems a digit scale")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = ld.load_builtin_model(args.model, device="cpu")
    adapter = ld.ModelAdapter.wrap(model)
    problems = generate_problems(TaskConfig(scales=[1, 2], n_per_scale=args.n, seed=0, n_train=0, n_val=0))
    data = collect_residuals(adapter, problems, teacher_forcing=False, batch_size=args.batch_size)
    rows = [0]
    model.embed.register_forward_hook(lambda module, inputs, output: rows.__setitem__(0, rows[0] + output.shape[0]))

    def contender(method: Any) -> Callable[[], tuple[Any, Any]]:
        def call() -> tuple[Any, Any]:
            return method, method.score(adapter, data, "first")

        return call

    contenders = {
        "patch": contender(ActivationPatching(seed=0, batch_size=args.batch_size)),
        "attribution": contender(AttributionPatching(seed=0, batch_size=args.batch_size, exact=False)),
        "attribution+exact": contender(AttributionPatching(seed=0, batch_size=args.batch_size, exact=True)),
    }
    passes: dict[str, tuple[float, float]] = {}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(args.repeats):
        for name, call in contenders.items():
            rows[0] = 0
            started = time.process_time()
            method, scores = call()
            times[name].append(time.process_time() - started)
            if r == 0:
                pairs = int(scores.applies.sum())
                backward = method.passes.get("backward", 0) if hasattr(method, "passes") else 0
                passes[name] = (rows[0] / pairs, backward)
    base = statistics.median(times["patch"])
    print(f"model {args.model} ({model.cfg.n_layers} blocks, {model.cfg.n_layers + 1} columns), {pairs} pairs, {args.repeats} repeats")
    print("| contender | forward passes a pair | backward passes a pair | CPU seconds (median) | ratio to patch |")
    print("| --- | --- | --- | --- | --- |")
    for name in contenders:
        t = statistics.median(times[name])
        print(f"| {name} | {passes[name][0]:.1f} | {passes[name][1]} | {t:.2f} | {t / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
