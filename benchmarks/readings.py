"""What the newer readings cost, as ratios in one process.

Two measurements:

- ``--part tuned``: training the tuned lens. ``batched`` is
  :meth:`TunedLens.train_on` (every layer's translator in one Adam
  optimisation: one final-layer target and one readout over all layers' rows per
  step); ``per_layer`` trains each layer's translator alone with the same
  optimiser, steps, learning rate and minibatches (the loop a researcher writes
  first). The loss is a sum over layers and Adam works per parameter, so both
  reach the same translators up to float rounding (checked: the largest
  difference of the final per-layer KL is printed).
- ``--part patch``: activation patching (methods ``patch`` and
  ``patch_operands``, targets ``first`` and ``answer``) against one logit-lens sweep of the same test problems: the
  patched forward passes (one per layer column and batch, and per greedy step
  for ``answer``; ``patch_operands`` also runs the sources once to collect
  their operand residuals) against the sweep's one.
- ``--part sweep``: a sweep with every reading (logit lens, tuned lens, linear
  probe, circular probe) against the logit lens alone, and each reading added to
  the logit lens on its own, on the same test problems. Readings that fit also
  need the train and validation problems, so the model runs on more problems.

Model: the built-in ``arith-llama`` (``--model builtin``), or a randomly
initialised Qwen2 (``--model qwen2``: hidden 512, 12 layers, vocabulary
``--vocab``; see ``sweep_floor.py``). Times are CPU seconds
(``time.process_time``), medians of interleaved repeats.

    python benchmarks/readings.py --part tuned --model qwen2 --vocab 32000 --steps 30
    python benchmarks/readings.py --part tuned --model builtin --steps 300
    python benchmarks/readings.py --part sweep --model builtin --n 200
    python benchmarks/readings.py --part patch --model builtin --n 200
"""

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_floor import SHAPE, build  # noqa: E402

import lens_digits as ld  # noqa: E402
from lens_digits.methods.lenses.tuned import TunedLens, all_positions  # noqa: E402
from lens_digits.model.adapter import ModelAdapter  # noqa: E402
from lens_digits.problems.targets import encode_for_model  # noqa: E402
from lens_digits.problems.tasks import TaskConfig, generate_problems  # noqa: E402


def load(which: str, vocab: int):
    if which == "builtin":
        return ld.load_builtin_model("arith-llama")
    return build(vocab, SHAPE)[2]


def train_sequences(model, n: int) -> list[list[int]]:
    """Prompt + answer ids of ``n`` train problems a scale (scales 1-3), what the tuned lens trains on in a sweep."""
    task = TaskConfig(scales="1-3", n_per_scale=n, n_train=n, n_val=0, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problems = [p for p in generate_problems(task) if p.split == "train"]
    return [list(e.prompt_ids) + list(e.answer_ids) for e in encode_for_model(ModelAdapter.wrap(model), problems)]


def per_layer(lens: TunedLens, sequences) -> list[float]:
    """Each layer's translator trained alone with the recipe of ``train_on``; the last step's KL per layer."""
    adapter = lens.adapter
    x = all_positions(adapter, sequences, max_positions=lens.max_positions, seed=lens.seed).clone()
    d = adapter.d_model
    for p in adapter.model.parameters():
        p.requires_grad_(False)
    last = []
    Ws, bs = [], []
    with torch.inference_mode(False), torch.enable_grad():
        for layer in range(adapter.n_layers):
            W = torch.zeros(d, d, requires_grad=True)
            b = torch.zeros(d, requires_grad=True)
            optimiser = torch.optim.Adam([W, b], lr=lens.lr)
            gen = torch.Generator().manual_seed(lens.seed)  # the same minibatches as the batched run
            for _ in range(lens.steps):
                pick = torch.randint(len(x), (min(lens.batch_size, len(x)),), generator=gen)
                batch = x[pick].float()
                with torch.no_grad():
                    target = lens.readout.logits(batch[:, -1]).float().log_softmax(-1)
                h = batch[:, layer]
                logp = lens.readout.logits(h + h @ W.T + b).float().log_softmax(-1)
                loss = (target.exp() * (target - logp)).sum(-1).mean()
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
            last.append(float(loss.detach()))
            Ws.append(W.detach())
            bs.append(b.detach())
    lens.W, lens.b = torch.stack(Ws), torch.stack(bs)
    return last


def kl_per_layer(lens: TunedLens, sequences) -> list[float]:
    """Mean KL from the final distribution of each layer's translated residual, on the training positions."""
    x = all_positions(lens.adapter, sequences, max_positions=2048, seed=1).float()
    with torch.inference_mode():
        target = lens.readout.logits(x[:, -1]).float().log_softmax(-1)
        out = []
        for layer in range(lens.adapter.n_layers):
            logp = lens.readout.logits(lens.transform_hidden(x[:, layer], layer)).float().log_softmax(-1)
            out.append(float((target.exp() * (target - logp)).sum(-1).mean()))
    return out


def part_tuned(args) -> None:
    model = load(args.model, args.vocab)
    sequences = train_sequences(model, args.n)
    make = lambda: TunedLens.from_model(model, steps=args.steps)  # noqa: E731
    times: dict[str, list[float]] = {"batched": [], "per_layer": []}
    kls: dict[str, list[float]] = {}
    make().train_on(sequences[:8])  # warm-up, not timed
    for _ in range(args.repeats):
        for name in times:
            lens = make()
            start = time.process_time()
            lens.train_on(sequences) if name == "batched" else per_layer(lens, sequences)
            times[name].append(time.process_time() - start)
            kls[name] = kl_per_layer(lens, sequences)
    a = ModelAdapter.wrap(model)
    print(
        f"tuned lens on {args.model} ({a.n_layers} layers, d_model {a.d_model}, vocab {a.d_vocab}): {len(sequences)} train sequences, "
        f"{args.steps} steps of 256 positions, CPU seconds, median of {args.repeats}"
    )
    print_ratios(times, "per_layer")
    gap = max(abs(p - q) for p, q in zip(kls["batched"], kls["per_layer"], strict=True))
    print("KL per layer after training, batched:", [round(k, 4) for k in kls["batched"]])
    print("KL per layer after training, per layer:", [round(k, 4) for k in kls["per_layer"]], f"(largest difference {gap:.2e})")
    print("KL per layer of the logit lens:", [round(k, 4) for k in kl_per_layer(make(), sequences)])
    if gap > 1e-3 * max(1.0, max(kls["per_layer"])):
        raise SystemExit(f"the batched and per-layer translators disagree: KL differs by {gap:.3g}")


def timed_sweeps(model, n: int, repeats: int, contenders: dict[str, dict]) -> tuple[dict[str, list[float]], dict]:
    """CPU seconds of each contender's sweep (scales 1-3, ``n`` test problems a scale), interleaved, after an untimed warm-up."""
    times: dict[str, list[float]] = {k: [] for k in contenders}
    grids = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ld.run_sweep(model, scales="1-3", n_per_scale=n, target="answer", seed=0)  # warm-up, not timed
        for _ in range(repeats):
            for name, kw in contenders.items():
                start = time.process_time()
                grids[name] = ld.run_sweep(model, scales="1-3", n_per_scale=n, seed=0, **kw)
                times[name].append(time.process_time() - start)
    return times, grids


def print_ratios(times: dict[str, list[float]], base: str) -> None:
    """A Markdown row per contender: median seconds and the ratio to ``base``'s."""
    ref = statistics.median(times[base])
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.2f} | {statistics.median(t) / ref:.2f} |")


def part_sweep(args) -> None:
    model = load(args.model, args.vocab)
    readings = {
        "logit_lens": ["logit_lens"],
        "+ tuned_lens": ["logit_lens", "tuned_lens"],
        "+ probe": ["logit_lens", "probe"],
        "+ circular_probe": ["logit_lens", "circular_probe"],
        "every reading": ["logit_lens", "tuned_lens", "probe", "circular_probe"],
    }
    times, grids = timed_sweeps(model, args.n, args.repeats, {k: dict(methods=m, target="answer") for k, m in readings.items()})
    lens = grids["logit_lens"].pivot("logit_lens", "answer")
    assert grids["every reading"].pivot("logit_lens", "answer").equals(lens), "the logit lens changed with other readings beside it"
    print(f"sweep on {args.model}, scales 1-3, {args.n} test problems a scale, target answer; CPU seconds, median of {args.repeats}")
    print_ratios(times, "logit_lens")
    print(grids["every reading"].to_text())


def part_patch(args) -> None:
    model = load(args.model, args.vocab)
    contenders = {
        "logit_lens, first and answer": dict(methods=["logit_lens"], target="both"),
        "patch, target first": dict(methods=["patch"], target="first"),
        "patch, target answer": dict(methods=["patch"], target="answer"),
        "patch_operands, target first": dict(methods=["patch_operands"], target="first"),
        "patch_operands, target answer": dict(methods=["patch_operands"], target="answer"),
    }
    times, grids = timed_sweeps(model, args.n, args.repeats, contenders)
    pairs = int(grids["patch, target first"].main().query("layer == 0")["n"].sum())
    print(f"patching on {args.model}, scales 1-3, {args.n} test problems a scale ({pairs} pairs); CPU seconds, median of {args.repeats}")
    print_ratios(times, "logit_lens, first and answer")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["tuned", "sweep", "patch"], required=True)
    p.add_argument("--model", choices=["builtin", "qwen2"], default="builtin")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary of the qwen2 model")
    p.add_argument("--n", type=int, default=200, help="problems a scale (test; train for --part tuned)")
    p.add_argument("--steps", type=int, default=300, help="tuned lens optimiser steps")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    {"tuned": part_tuned, "sweep": part_sweep, "patch": part_patch}[args.part](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
