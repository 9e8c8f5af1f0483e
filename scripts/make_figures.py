"""Redraw the README's figures (docs/*.png) from the built-in models, and print every number the README quotes.

Needs kaleido >= 1 and a Chrome or Chromium (the `test` extra has kaleido;
Debian/Ubuntu: `apt-get install chromium`).

    python scripts/make_figures.py            # both models
    python scripts/make_figures.py --deep     # the 28-layer default model's figures only
"""

import argparse
import sys
import warnings
from pathlib import Path

import lens_digits as ld
from lens_digits.results.figures import static_image

DOCS = Path(__file__).resolve().parents[1] / "docs"


def deep() -> None:
    """The headline figure and the readings of the default model, arith-llama-28."""
    model = ld.load_builtin_model(device="cpu")
    grid = ld.run_sweep(model, scales="1-4", n_per_scale=1000, target="answer", seed=0)
    (DOCS / "heatmap_builtin.png").write_bytes(static_image(grid.figure(), scale=2))
    print(grid.to_text())
    print(grid.emergence[(grid.emergence["place"] == "all") & (grid.emergence["carries"] == "all")].to_string())
    readings = ld.run_sweep(
        model, scales="1-4", n_per_scale=200, methods=["logit_lens", "tuned_lens", "probe", "patch"], target="first", seed=0
    )
    (DOCS / "readings_deep.png").write_bytes(static_image(readings.figure(), scale=2))
    (DOCS / "readings_deep_lines.png").write_bytes(static_image(readings.figure(kind="lines"), scale=2))
    print(readings.to_text())
    em = readings.emergence
    print(em[(em["place"] == "all") & (em["carries"] == "all")].to_string())


def small() -> None:
    """The figures of the 4-layer arith-llama the README's method sections show."""
    model = ld.load_builtin_model("arith-llama", device="cpu")
    both = ld.run_sweep(model, scales="1-4", n_per_scale=800, methods=["logit_lens", "probe"], target="answer", seed=0)
    (DOCS / "probes_builtin.png").write_bytes(static_image(both.figure(), scale=2))
    readings = ld.run_sweep(
        model, scales="1-3", n_per_scale=200, methods=["logit_lens", "tuned_lens", "probe", "circular_probe"], target="answer", seed=0
    )
    (DOCS / "readings_builtin.png").write_bytes(static_image(readings.figure(text=True), scale=2))
    (DOCS / "readings_lines_builtin.png").write_bytes(static_image(readings.figure(kind="lines"), scale=2))
    print(both.to_text())
    print(readings.to_text())
    df = readings.to_dataframe()
    lenses = df[df.method.isin(["logit_lens", "tuned_lens"]) & (df.place == "all") & (df.carries == "all")]
    print(lenses.pivot_table(index=["method", "scale"], columns="layer", values=["abs_error", "within_10"]).round(2).to_string())
    carries = df[(df.place == "all") & (df.carries != "all") & (df.layer == 3)]
    print(carries.pivot_table(index=["method", "scale"], columns="carries", values="accuracy").round(2).to_string())
    places = df[(df.method == "logit_lens") & (df.place != "all") & (df.carry_in == "all") & (df.layer == 3)]
    print(places.pivot_table(index="scale", columns="place", values="accuracy").round(2).to_string())
    print(readings.emergence.to_string())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deep", action="store_true", help="only the default (28-layer) model's figures")
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)  # scale 1 has only 100 distinct problems
    deep()
    if not args.deep:
        small()
    return 0


if __name__ == "__main__":
    sys.exit(main())
