"""Batched probe solver vs a scikit-learn loop, on synthetic residuals of a realistic shape.

Both sides run the same recipe on the same data: standardise with train
statistics, fit a 10-way L2 logistic regression per (layer, place) for each C of
the grid, keep the C with the best validation accuracy (ties: lower validation
cross-entropy, then smaller C), report test accuracy. scikit-learn runs
``LogisticRegression(C=C, solver="lbfgs", max_iter, tol)`` one fit at a time;
``lens_digits`` runs ``LinearProbe(control=False)`` (one batched solve). Each
side runs in its own process so peak memory is its own.

    python benchmarks/probes.py                  # 29 layers x 4 places x 2,000 train problems x d_model 1,536
    python benchmarks/probes.py --small          # a quick run
    python benchmarks/probes.py --sk-layers 8    # scikit-learn on 8 evenly spaced layers only (time extrapolated)
"""

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
import warnings

import numpy as np
import torch

CS = (0.01, 0.1, 1.0, 10.0)


def make_data(n_layers, d_model, n_train, n_val, n_test, places, seed=0):
    """Residuals where digit information grows with depth, over anisotropic noise with outlier dimensions."""
    from lens_digits.problems.digits import digit_labels
    from lens_digits.problems.targets import EncodedProblem
    from lens_digits.problems.tasks import Problem
    from lens_digits.residuals.collect import ResidualSet

    gen = torch.Generator().manual_seed(seed)
    n = n_train + n_val + n_test
    answers = [str(v) for v in torch.randint(0, 10**places, (n,), generator=gen).tolist()]
    labels = digit_labels(answers, places)  # (n, place)
    codes = torch.randn(places, 10, d_model, generator=gen) / math.sqrt(d_model)
    signal = sum(codes[p][labels[:, p]] for p in range(places)) * math.sqrt(d_model)  # (n, d), unit-ish per dim
    rank = 64
    basis = torch.randn(rank, d_model, generator=gen) / math.sqrt(rank)
    spectrum = torch.logspace(1, -1, rank)
    outliers = torch.randperm(d_model, generator=gen)[:4]
    resid = torch.empty(n, n_layers, 1, d_model)
    for layer in range(n_layers):
        depth = layer / max(1, n_layers - 1)
        strength = 0.35 / (1 + math.exp(-8 * (depth - 0.55)))  # ~0 early, rising after the middle
        noise = torch.randn(n, rank, generator=gen) * spectrum @ basis + torch.randn(n, d_model, generator=gen)
        x = noise + strength * signal
        x[:, outliers] = x[:, outliers] * 20 + 50 * (1 + depth)
        resid[:, layer, 0] = x
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    problems = [Problem(places, "add", i, 0, f"{i}=", a, s) for i, (a, s) in enumerate(zip(answers, splits, strict=True))]
    encoded = [EncodedProblem((1,), (2,)) for _ in answers]
    return ResidualSet(resid, torch.zeros(n, 1, dtype=torch.long), problems, encoded, {})


def rss_mb():
    """Current resident set size in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(args, data):
    from lens_digits.methods.probes.linear import LinearProbe
    from lens_digits.problems.digits import digit_labels

    device = torch.device(args.device)
    if device.type == "cuda":
        data.resid = data.resid.to(device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    train, val, test = data.split("train"), data.split("val"), data.split("test")
    base = rss_mb()
    walls, cpus = [], []
    for _ in range(args.repeat):
        probe = LinearProbe(Cs=CS, control=args.control, max_iter=args.max_iter, tol=args.tol, device=device)
        start, cpu = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe.fit(train, val)
        pred = probe.predict(test)  # (n, layer, place)
        if device.type == "cuda":
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    seconds = min(walls)
    labels = digit_labels([p.answer for p in test.problems], args.places)
    acc = (pred == labels[:, None]).float().mean(0)  # (layer, place)
    out = {
        "seconds": seconds,
        "all_seconds": walls,
        "cpu_seconds": min(cpus),
        "acc": acc.tolist(),
        "answer_acc": (pred == labels[:, None]).all(-1).float().mean(0).tolist(),
        "chosen_C": probe.weights.C[0].tolist(),
        "fit_info": probe.fit_info,
        "peak_rss_mb": peak_mb(),
        "working_mb": peak_mb() - base,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def config_key(args):
    """What a cached scikit-learn layer result depends on."""
    keys = ("layers", "places", "n_train", "n_val", "n_test", "d_model", "max_iter", "tol")
    return {k: getattr(args, k) for k in keys} | {"Cs": list(CS)}


def run_sklearn(args, data):
    """One LogisticRegression per (layer, place, C); with --sklearn-cache, layers already measured are read back."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from lens_digits.problems.digits import digit_labels

    train, val, test = data.split("train"), data.split("val"), data.split("test")
    y = {
        name: digit_labels([p.answer for p in s.problems], args.places).numpy()
        for name, s in (("train", train), ("val", val), ("test", test))
    }
    layers = (
        np.unique(np.linspace(0, data.n_columns - 1, args.sk_layers).round().astype(int)).tolist()
        if args.sk_layers
        else list(range(data.n_columns))
    )
    cached = {}
    if args.sklearn_cache and os.path.exists(args.sklearn_cache):
        with open(args.sklearn_cache) as f:
            for line in f:
                row = json.loads(line)
                if row["config"] == config_key(args):
                    cached[row["layer"]] = row
    base = rss_mb()
    for layer in layers:
        if layer in cached:
            continue
        start, cpu = time.perf_counter(), time.process_time()
        scaler = StandardScaler().fit(train.resid[:, layer, 0].numpy())
        xs = {name: scaler.transform(s.resid[:, layer, 0].numpy()) for name, s in (("train", train), ("val", val), ("test", test))}
        preds, accs, chosen, iters, not_converged = [], [], [], [], 0
        for place in range(args.places):
            best = None
            for c in CS:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", ConvergenceWarning)
                    model = LogisticRegression(C=c, max_iter=args.max_iter, tol=args.tol).fit(xs["train"], y["train"][:, place])
                not_converged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
                iters.append(int(model.n_iter_.max()))
                proba = model.predict_proba(xs["val"])
                val_acc = float((model.classes_[proba.argmax(1)] == y["val"][:, place]).mean())
                col = np.minimum(np.searchsorted(model.classes_, y["val"][:, place]), len(model.classes_) - 1)
                p_gold = np.where(model.classes_[col] == y["val"][:, place], proba[np.arange(len(col)), col], 0.0)
                val_ce = float(np.minimum(-np.log(np.maximum(p_gold, 1e-300)), 50).mean())
                key = (-val_acc, val_ce)
                if best is None or key < best[0]:
                    best = (key, model, c)
            chosen.append(best[2])
            pred = best[1].predict(xs["test"])
            preds.append(pred)
            accs.append(float((pred == y["test"][:, place]).mean()))
        row = {
            "config": config_key(args),
            "layer": layer,
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu,
            "acc": accs,
            "chosen_C": chosen,
            "answer_acc": float((np.stack(preds, 1) == y["test"]).all(1).mean()),
            "iters": iters,
            "not_converged": not_converged,
            "working_mb": peak_mb() - base,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average": os.getloadavg(),
        }
        cached[layer] = row
        print(f"sklearn layer {layer}: {row['seconds']:.1f} s", file=sys.stderr, flush=True)
        if args.sklearn_cache:
            with open(args.sklearn_cache, "a") as f:
                f.write(json.dumps(row) + "\n")
    rows = [cached[layer] for layer in layers]
    iters = [i for r in rows for i in r["iters"]]
    return {
        "seconds": sum(r["seconds"] for r in rows),
        "cpu_seconds": sum(r["cpu_seconds"] for r in rows),
        "layers": layers,
        "acc": {f"{r['layer']},{p}": a for r in rows for p, a in enumerate(r["acc"])},
        "chosen_C": {f"{r['layer']},{p}": c for r in rows for p, c in enumerate(r["chosen_C"])},
        "answer_acc": {str(r["layer"]): r["answer_acc"] for r in rows},
        "n_fits": len(iters),
        "mean_iter": float(np.mean(iters)),
        "max_iter_hit": sum(r["not_converged"] for r in rows),
        "working_mb": max(r["working_mb"] for r in rows),
        "date": f"{min(r['date'] for r in rows)} .. {max(r['date'] for r in rows)}",
        "load_average_range": [min(r["load_average"][0] for r in rows), max(r["load_average"][0] for r in rows)],
    }


def tolerance_check(args, data, layer, place, c=1.0):
    """One cell, four fits: scikit-learn at tol 1e-4 and 1e-6, ours at tol 1e-4 and 1e-5; test accuracy and agreement."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from lens_digits.methods.probes.optim import fit_multinomial
    from lens_digits.problems.digits import digit_labels

    train, test = data.split("train"), data.split("test")
    y_train = digit_labels([p.answer for p in train.problems], args.places)[:, place].numpy()
    y_test = digit_labels([p.answer for p in test.problems], args.places)[:, place].numpy()
    scaler = StandardScaler().fit(train.resid[:, layer, 0].numpy())
    x_train, x_test = scaler.transform(train.resid[:, layer, 0].numpy()), scaler.transform(test.resid[:, layer, 0].numpy())
    preds = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for tol in (1e-4, 1e-6):
            preds[f"sklearn tol={tol:g}"] = LogisticRegression(C=c, tol=tol, max_iter=5000).fit(x_train, y_train).predict(x_test)
        for tol in (1e-4, 1e-5):
            res = fit_multinomial(
                torch.from_numpy(x_train).float()[None], torch.from_numpy(y_train)[None, :, None], [c], max_iter=5000, tol=tol
            )
            preds[f"ours tol={tol:g}"] = (torch.from_numpy(x_test).float() @ res.W[0, 0, 0] + res.b[0, 0, 0]).argmax(-1).numpy()
    out = {"cell": [layer, place], "C": c, "test_acc": {k: float((v == y_test).mean()) for k, v in preds.items()}}
    names = list(preds)
    out["agreement"] = {f"{a} | {b}": float((preds[a] == preds[b]).mean()) for i, a in enumerate(names) for b in names[i + 1 :]}
    return out


def child(args):
    torch.manual_seed(0)
    data = make_data(args.layers, args.d_model, args.n_train, args.n_val, args.n_test, args.places)
    out = run_ours(args, data) if args.side == "ours" else run_sklearn(args, data)
    print("RESULT " + json.dumps(out))


def spawn(args, side):
    cmd = [sys.executable, __file__, "--side", side] + [a for a in sys.argv[1:] if a not in ("--side",)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)  # stderr: progress, passed through
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        raise SystemExit(f"{side} side failed")
    return json.loads(line[-1][7:])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="5 layers x 4 places x 400 train problems x d_model 128")
    p.add_argument("--layers", type=int, default=29)
    p.add_argument("--places", type=int, default=4)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-val", type=int, default=500)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--d-model", type=int, default=1536)
    p.add_argument("--max-iter", type=int, default=300, help="L-BFGS iterations per fit (300: the package default)")
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--sk-layers", type=int, default=0, help="run scikit-learn on this many evenly spaced layers (0: all)")
    p.add_argument("--repeat", type=int, default=1, help="fit our side this many times and keep the fastest")
    p.add_argument(
        "--sklearn-cache", help="JSON-lines file of per-layer scikit-learn results: layers found there are not re-run, new ones are added"
    )
    p.add_argument("--tol-check", metavar="LAYER,PLACE", help="compare both solvers at two tolerances on one cell (C=1) and exit")
    p.add_argument("--sklearn-only", action="store_true", help="only fill --sklearn-cache (resumable), report nothing")
    p.add_argument("--control", action="store_true", help="also fit the control-task probes on our side")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--side", choices=["ours", "sklearn"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.small:
        args.layers, args.n_train, args.n_val, args.n_test, args.d_model = 5, 400, 100, 100, 128
        sys.argv += ["--layers", "5", "--n-train", "400", "--n-val", "100", "--n-test", "100", "--d-model", "128"]
    if args.side:
        return child(args)
    if args.tol_check:
        layer, place = (int(v) for v in args.tol_check.split(","))
        data = make_data(args.layers, args.d_model, args.n_train, args.n_val, args.n_test, args.places)
        print(json.dumps(tolerance_check(args, data, layer, place), indent=2))
        return None

    if args.sklearn_only:
        spawn(args, "sklearn")
        return None
    ours = spawn(args, "ours")
    print(f"ours: {ours['seconds']:.1f} s, working memory {ours['working_mb']:.0f} MiB, fit {ours['fit_info']}", flush=True)
    sk = spawn(args, "sklearn")
    n_layers = args.layers
    sk_full = sk["seconds"] * n_layers / len(sk["layers"])
    sk_cpu_full = sk["cpu_seconds"] * n_layers / len(sk["layers"])
    diffs = [abs(ours["acc"][layer][place] - sk["acc"][f"{layer},{place}"]) for layer in sk["layers"] for place in range(args.places)]
    ans = [abs(ours["answer_acc"][layer] - sk["answer_acc"][str(layer)]) for layer in sk["layers"]]
    cells = [(layer, place) for layer in sk["layers"] for place in range(args.places)]
    same_c = [ours["chosen_C"][layer][place] == sk["chosen_C"][f"{layer},{place}"] for layer, place in cells]
    over = [
        {
            "layer": layer,
            "place": place,
            "ours": round(ours["acc"][layer][place], 4),
            "sklearn": round(sk["acc"][f"{layer},{place}"], 4),
            "C_ours": ours["chosen_C"][layer][place],
            "C_sklearn": sk["chosen_C"][f"{layer},{place}"],
        }
        for layer, place in cells
        if abs(ours["acc"][layer][place] - sk["acc"][f"{layer},{place}"]) > 0.01 + 1e-9
    ]
    import sklearn

    report = {
        "shape": f"{n_layers} layer columns x {args.places} places x {args.n_train} train / {args.n_val} val / {args.n_test} test"
        f" x d_model {args.d_model}",
        "Cs": list(CS),
        "max_iter": args.max_iter,
        "tol": args.tol,
        "control": args.control,
        "device": args.device,
        "ours_seconds": round(ours["seconds"], 2),
        "ours_seconds_all_repeats": [round(x, 2) for x in ours["all_seconds"]],
        "ours_cpu_seconds": round(ours["cpu_seconds"], 2),
        "ours_working_mb": round(ours["working_mb"]),
        "ours_cuda_peak_mb": round(ours.get("cuda_peak_mb", 0)),
        "ours_fit": ours["fit_info"],
        "sklearn_layers": sk["layers"],
        "sklearn_seconds_measured": round(sk["seconds"], 2),
        "sklearn_seconds_all_layers": round(sk_full, 2),
        "sklearn_cpu_seconds_all_layers": round(sk_cpu_full, 2),
        "sklearn_measured_at": sk["date"],
        "sklearn_load_average_range": sk["load_average_range"],
        "sklearn_extrapolated": len(sk["layers"]) != n_layers,
        "sklearn_working_mb": round(sk["working_mb"]),
        "sklearn_fits": sk["n_fits"],
        "sklearn_mean_iter": round(sk["mean_iter"], 1),
        "sklearn_max_iter_hit": sk["max_iter_hit"],
        "speedup": round(sk_full / ours["seconds"], 1),
        "speedup_cpu_time": round(sk_cpu_full / ours["cpu_seconds"], 1),
        "max_place_acc_diff": round(max(diffs), 4),
        "mean_place_acc_diff": round(float(np.mean(diffs)), 4),
        "max_answer_acc_diff": round(max(ans), 4),
        "cells_compared": len(cells),
        "same_C_chosen": sum(same_c),
        "cells_over_1_point": over,
        "test_acc_ours_by_layer_place": [[round(a, 3) for a in row] for row in ours["acc"]],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {ours['threads']}",
        "load_average_at_end": os.getloadavg(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "sklearn": sklearn.__version__,
            "numpy": np.__version__,
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
