"""Probe fitting at the sizes researchers run: the README's probe snippet and a five-reading ``--n 60`` run.

The residuals are real: the built-in model (default ``arith-llama-28``, 29 layer
columns, d_model 96) runs once on every train, validation and test problem of
the sweep, and the three contenders then fit the same probes (linear probes
and their control-task probes, per digit scale, every layer column and digit
place, C chosen on the validation problems) on the same residuals:

- ``batched``: :class:`~lens_digits.methods.probes.linear.LinearProbe`, every
  (scale, layer) block in one batched L-BFGS, as a sweep fits them;
- ``per-layer (ours)``: the same solver called one (scale, layer) at a time;
- ``per-layer (scikit-learn)``: ``LogisticRegression(C, solver="lbfgs", tol,
  max_iter)`` per (scale, layer, place, task, C), on the same standardised features,
  C chosen by validation cross-entropy as lens_digits chooses it.

Reported: seconds each (fit and predict on the test problems), the ratio to the
batched fit, and how often the test predictions agree cell for cell.

    python benchmarks/probe_sweeps.py --size readme      # scales 1-3, 600 test problems a scale (README "Linear probes")
    python benchmarks/probe_sweeps.py --size n60         # scales 1-4, --n 60 (the CLI's five-reading run)
    python benchmarks/probe_sweeps.py --size n60 --sk-layers 8   # scikit-learn on 8 layer columns, time scaled up
    python benchmarks/probe_sweeps.py --size tiny --model arith-llama   # the test suite's run
"""

import argparse
import json
import platform
import time
import warnings

import numpy as np
import torch

SIZES = {"readme": ((1, 2, 3), 600), "n60": ((1, 2, 3, 4), 60), "tiny": ((1, 2), 20)}


def residuals(args):
    """Train, validation and test residuals of the built-in model at the last prompt position.

    Returns:
        ``(train, val, test)`` ResidualSets and the seconds the model took.
    """
    import lens_digits as ld
    from lens_digits.problems.tasks import TaskConfig, generate_problems
    from lens_digits.residuals.collect import collect_residuals

    scales, n = SIZES[args.size]
    model = ld.load_builtin_model(args.model)
    problems = generate_problems(TaskConfig(scales=list(scales), n_per_scale=n, seed=0))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = collect_residuals(model, problems, teacher_forcing=False, batch_size=64)
    return data.split("train"), data.split("val"), data.split("test"), time.perf_counter() - start


def batched(train, val, test, args):
    """One LinearProbe over every scale and layer.

    Returns:
        Test predictions per problem, layer and task (places, then the control's places), and the fit's summary.
    """
    from lens_digits.methods.probes.linear import LinearProbe

    probe = LinearProbe(max_iter=args.max_iter, tol=args.tol)
    probe.fit(train, val)
    return predictions(probe, test), probe.fit_info


def predictions(probe, test):
    """Per test problem, layer and place: the digit each fitted probe and its control probe predict.

    Returns:
        A ``(problem, layer, 2 * place)`` integer array (the control probe's places after the real ones).
    """
    return torch.cat([probe.predict(test), probe.predict(test, control=True)], -1).numpy()


def slots(train, val):
    """Prediction slots per task: the most digit places of any train or validation answer.

    Returns:
        The number of places of the longest answer.
    """
    from lens_digits.problems.digits import answer_digits

    return max(len(answer_digits(p.answer)) for p in [*train.problems, *val.problems])


def per_layer_ours(train, val, test, args):
    """The same solver called one (scale, layer) at a time: the loop the batched fit replaces.

    Returns:
        Test predictions as :func:`sklearn_loop` lays them out.
    """
    from lens_digits.methods.probes.linear import LinearProbe

    k = slots(train, val)
    out = np.full((len(test), train.n_columns, 2 * k), -1)
    for scale in sorted({p.scale for p in train.problems}):
        rows = {
            name: [i for i, p in enumerate(s.problems) if p.scale == scale] for name, s in (("train", train), ("val", val), ("test", test))
        }
        for layer in range(train.n_columns):
            one = {}
            for name, s in (("train", train), ("val", val), ("test", test)):
                one[name] = s.select(rows[name])
                one[name].resid = one[name].resid[:, layer : layer + 1]
            probe = LinearProbe(max_iter=args.max_iter, tol=args.tol)
            probe.fit(one["train"], one["val"])
            pred = predictions(probe, one["test"])[:, 0]
            width = pred.shape[-1] // 2
            out[rows["test"], layer, :width] = pred[:, :width]
            out[rows["test"], layer, k : k + width] = pred[:, width:]
    return out


def sklearn_loop(train, val, test, args, layers):
    """scikit-learn, one LogisticRegression per (scale, layer, place, task, C), C chosen on validation.

    Returns:
        Test predictions for ``layers`` (``-1`` elsewhere), laid out as :func:`per_layer_ours` lays them out.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from lens_digits.methods.probes.labels import control_labels, digit_permutation
    from lens_digits.problems.digits import answer_digits, digit_labels

    perm = digit_permutation(0)
    k = slots(train, val)
    out = np.full((len(test), train.n_columns, 2 * k), -1)
    for scale in sorted({p.scale for p in train.problems}):
        sets = {}
        for name, s in (("train", train), ("val", val), ("test", test)):
            rows = [i for i, p in enumerate(s.problems) if p.scale == scale]
            sets[name] = (s, rows)
        places = max(len(answer_digits(s.problems[i].answer)) for name in ("train", "val") for s, rows in [sets[name]] for i in rows)

        def labels(name, sets=sets, places=places):
            s, rows = sets[name]
            probs = [s.problems[i] for i in rows]
            return torch.cat([digit_labels([p.answer for p in probs], places), control_labels(probs, perm, places)], 1).numpy()

        y = {name: labels(name) for name in sets}
        for layer in layers:
            feats = {name: s.resid[rows, layer, 0].double().numpy() for name, (s, rows) in sets.items()}
            scaler = StandardScaler().fit(feats["train"])
            x = {name: scaler.transform(f) for name, f in feats.items()}
            for task in range(2 * places):
                ytr = y["train"][:, task]
                if len(np.unique(ytr)) == 1:
                    out[sets["test"][1], layer, (task // places) * k + task % places] = ytr[0]
                    continue
                best = None
                for c in args.Cs:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        model = LogisticRegression(C=c, tol=args.tol, max_iter=args.max_iter).fit(x["train"], ytr)
                    proba = model.predict_proba(x["val"])
                    index = {int(k): j for j, k in enumerate(model.classes_)}
                    gold = np.array([proba[i, index[int(t)]] if int(t) in index else 0.0 for i, t in enumerate(y["val"][:, task])])
                    loss = float(np.minimum(-np.log(np.maximum(gold, 1e-300)), 50).mean())  # as lens_digits clamps it
                    if best is None or loss < best[0] * (1 - 1e-5) - 1e-7:  # the lowest; near-ties keep the smaller C
                        best = (loss, model)
                out[sets["test"][1], layer, (task // places) * k + task % places] = best[1].predict(x["test"])
    return out


def agreement(a, b, layers):
    """Share of (problem, layer, task) predictions two contenders agree on, over cells both filled.

    Returns:
        The share, or None when no cell is filled by both.
    """
    a, b = a[:, layers], b[:, layers]
    both = (a >= 0) & (b >= 0)
    return float((a[both] == b[both]).mean()) if both.any() else None


def widen(pred, test, train, val):
    """Batched predictions laid out as the loops lay them out: per task, one slot per place of the longest answer.

    Returns:
        A ``(problem, layer, 2 * slots)`` array, ``-1`` past a scale's places (its longest train or validation answer).
    """
    from lens_digits.problems.digits import answer_digits

    places: dict[int, int] = {}
    for p in [*train.problems, *val.problems]:
        places[p.scale] = max(places.get(p.scale, 0), len(answer_digits(p.answer)))
    n = slots(train, val)
    out = np.full((pred.shape[0], pred.shape[1], 2 * n), -1)
    width = pred.shape[-1] // 2
    for i, p in enumerate(test.problems):
        k = places[p.scale]
        out[i, :, :k] = pred[i, :, :k]
        out[i, :, n : n + k] = pred[i, :, width : width + k]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="n60")
    p.add_argument("--model", default=None, help="built-in model name (default: the package default)")
    p.add_argument("--sk-layers", type=int, default=0, help="scikit-learn on this many evenly spaced layer columns (0: all)")
    p.add_argument("--no-per-layer", action="store_true", help="skip our solver's per-layer loop")
    p.add_argument("--max-iter", type=int, default=1000)
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--Cs", type=float, nargs="+", default=[0.01, 0.1, 1.0, 10.0])
    args = p.parse_args()
    torch.manual_seed(0)
    train, val, test, model_s = residuals(args)
    n_cols = train.n_columns
    layers = (
        list(range(n_cols)) if not args.sk_layers else np.unique(np.linspace(0, n_cols - 1, args.sk_layers).round().astype(int)).tolist()
    )
    times, preds = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        pred, info = batched(train, val, test, args)
        times["batched"] = time.perf_counter() - start
        preds["batched"] = widen(pred, test, train, val)
        if not args.no_per_layer:
            start = time.perf_counter()
            preds["per-layer (ours)"] = per_layer_ours(train, val, test, args)
            times["per-layer (ours)"] = time.perf_counter() - start
    start = time.perf_counter()
    preds["per-layer (scikit-learn)"] = sklearn_loop(train, val, test, args, layers)
    times["per-layer (scikit-learn)"] = (time.perf_counter() - start) * n_cols / len(layers)
    scales, n = SIZES[args.size]
    print(
        f"{args.size}: scales {list(scales)}, {n} test problems a scale, {len(train)} train / {len(val)} val / {len(test)} test "
        f"problems, {n_cols} layer columns, d_model {train.resid.shape[-1]}; model forward passes {model_s:.1f} s; "
        f"torch threads {torch.get_num_threads()}; {platform.processor() or platform.machine()}"
    )
    print(f"batched fit: {info['n_fits']} fits, mean {info['mean_iter']:.0f} iterations, {info['hit_max_iter']} at max_iter")
    if args.sk_layers:
        print(f"scikit-learn ran on layer columns {layers}; its time is scaled to all {n_cols}")
    print("| contender | seconds | x batched | predictions equal to batched |")
    print("| --- | --- | --- | --- |")
    for name, sec in times.items():
        agree = agreement(preds[name], preds["batched"], layers if "scikit" in name else list(range(n_cols)))
        print(f"| {name} | {sec:.1f} | {sec / times['batched']:.2f} | {'' if agree is None else f'{agree:.2%}'} |")
    print("RESULT " + json.dumps({"size": args.size, "seconds": times, "model_seconds": model_s}))


if __name__ == "__main__":
    main()
