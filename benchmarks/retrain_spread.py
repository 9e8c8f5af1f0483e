"""How much a retrain of the built-in model varies: seeds and thread counts as stand-ins for other machines.

On one machine, one thread and the default seed, the recipe gives the same
weights bit for bit. Another CPU rounds differently, and a different rounding
early in training sends the run down another path, much as another seed does.
This script retrains the recipe with other seeds and thread counts and records
each model's greedy accuracy (the model card's measure), so that the card can
say how much a retrain varies and the slow test can check what holds everywhere.

    python benchmarks/retrain_spread.py --variant seed=1 --out spread/seed1.json
    python benchmarks/retrain_spread.py --variant threads=2 --out spread/threads2.json
    python benchmarks/retrain_spread.py --summarise spread/*.json
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def run(variant: str, out: Path, eval_n: int) -> None:
    from lens_digits.builtin.card import write_card
    from lens_digits.builtin.recipe import TrainConfig
    from lens_digits.builtin.train import train, write_checkpoint

    key, _, value = variant.partition("=")
    seed = int(value) if key == "seed" else 0
    threads = int(value) if key == "threads" else 1
    started = time.perf_counter()
    result = train(TrainConfig(seed=seed), threads=threads, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        write_checkpoint(result, folder)
        card = write_card(folder, n_per_scale=eval_n, ops=("add",))
    record = {"variant": variant, "seed": seed, "threads": threads, "seconds": round(time.perf_counter() - started, 1)}
    record["accuracy"] = {s: v["accuracy"] for s, v in card["accuracy"]["add"].items()}
    record["final_loss"] = card["final_loss"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record))


def summarise(files: list[str]) -> None:
    rows = [json.loads(Path(f).read_text()) for f in files]
    scales = sorted(rows[0]["accuracy"], key=int)
    print("| variant | " + " | ".join(f"add scale {s}" for s in scales) + " |")
    print("| --- |" + " --- |" * len(scales))
    for r in rows:
        print(f"| {r['variant']} | " + " | ".join(f"{r['accuracy'][s]:.3f}" for s in scales) + " |")
    for s in scales:
        values = [r["accuracy"][s] for r in rows]
        print(f"scale {s}: min {min(values):.3f} max {max(values):.3f} spread {max(values) - min(values):.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", help="seed=N or threads=N (the rest is the default recipe)")
    parser.add_argument("--out", type=Path, help="JSON file for this variant's accuracies")
    parser.add_argument("--eval-n", type=int, default=500, help="problems per scale, as in the model card")
    parser.add_argument("--summarise", nargs="+", metavar="JSON", help="print a table of earlier runs")
    args = parser.parse_args()
    if args.summarise:
        summarise(args.summarise)
        return 0
    if not args.variant or not args.out:
        parser.error("--variant and --out are needed (or --summarise)")
    run(args.variant, args.out, args.eval_n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
