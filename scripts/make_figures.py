"""Redraw the README's figures (docs/*.png) from the built-in model.

Needs kaleido >= 1 and a Chrome or Chromium (the `test` extra has kaleido;
Debian/Ubuntu: `apt-get install chromium`).

    python scripts/make_figures.py
"""

import sys
import warnings
from pathlib import Path

import lens_digits as ld
from lens_digits.results.figures import static_image

DOCS = Path(__file__).resolve().parents[1] / "docs"


def main() -> int:
    warnings.simplefilter("ignore", UserWarning)  # scale 1 has only 100 distinct problems
    model = ld.load_builtin_model(device="cpu")
    grid = ld.run_sweep(model, scales="1-5", n_per_scale=1000, target="answer", seed=0)
    (DOCS / "heatmap_builtin.png").write_bytes(static_image(grid.figure(), scale=2))
    both = ld.run_sweep(model, scales="1-4", n_per_scale=800, methods=["logit_lens", "probe"], target="answer", seed=0)
    (DOCS / "probes_builtin.png").write_bytes(static_image(both.figure(), scale=2))
    readings = ld.run_sweep(
        model, scales="1-3", n_per_scale=200, methods=["logit_lens", "tuned_lens", "probe", "circular_probe"], target="answer", seed=0
    )
    (DOCS / "readings_builtin.png").write_bytes(static_image(readings.figure(text=True), scale=2))
    (DOCS / "readings_lines_builtin.png").write_bytes(static_image(readings.figure(kind="lines"), scale=2))
    print(grid.to_text())
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
