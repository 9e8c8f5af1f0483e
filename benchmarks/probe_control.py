"""What the probe control task shows on a model with no arithmetic in it and on the built-in model.

Both models have the built-in model's architecture and tokenizer; one has
random weights, the other is the trained ``arith-llama``. Probes (with their
control task) read the answer's digits at the last prompt position, per layer;
the script prints accuracy, control, selectivity and chance per scale and place
as Markdown tables (the README's numbers).

    python benchmarks/probe_control.py --n 200
"""

import argparse
import sys
import tempfile
from pathlib import Path

import lens_digits as ld


def random_twin(folder: Path) -> Path:
    """The built-in model's architecture and tokenizer with random (untrained) weights."""
    from lens_digits.builtin.recipe import TrainConfig, builtin_tokenizer
    from lens_digits.builtin.train import TrainResult, build_llama, write_checkpoint

    tokenizer = builtin_tokenizer()
    model = build_llama(TrainConfig(seed=0), tokenizer).eval()
    folder.mkdir(parents=True)
    write_checkpoint(TrainResult(model, tokenizer, {"recipe": {}, "note": "untrained"}), folder)
    return folder


def table(grid: "ld.AccuracyGrid", place: str) -> str:
    df = grid.to_dataframe()
    df = df[(df["method"] == "probe") & (df["target"] == "answer") & (df["place"] == place)]
    for column in ("carries", "carry_in"):  # whole-place rows only, not those split by carries
        if column in df.columns:
            df = df[df[column] == "all"]
    rows = ["| scale | layer | accuracy | control | selectivity | chance |", "| --- | --- | --- | --- | --- | --- |"]
    for _, r in df.sort_values(["scale", "layer"]).iterrows():
        rows.append(
            f"| {r['scale']} | {r['layer']} | {r['accuracy']:.2f} | {r['control']:.2f} | {r['selectivity']:+.2f} | {r['chance']:.2f} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--n", type=int, default=200, help="test problems per scale (probes also fit on 3x as many train and 1x validation problems)"
    )
    parser.add_argument("--scales", default="1-3")
    parser.add_argument("--places", default="all,units,tens,hundreds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            "random weights": ld.load_model(random_twin(Path(tmp) / "random"), device="cpu", progress=False),
            "built-in arith-llama": ld.load_builtin_model("arith-llama", device="cpu"),
        }
        for name, model in models.items():
            grid = ld.run_sweep(model, scales=args.scales, n_per_scale=args.n, methods=["probe"], target="answer", seed=0)
            for place in args.places.split(","):
                print(f"\n### {name}, place {place}\n")
                print(table(grid, place))
    return 0


if __name__ == "__main__":
    sys.exit(main())
