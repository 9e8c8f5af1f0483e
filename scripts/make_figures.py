"""Redraw the README's figures (docs/*.png) from the built-in model.

Needs kaleido >= 1 and a Chrome or Chromium (the `test` extra has kaleido;
Debian/Ubuntu: `apt-get install chromium`).

    python scripts/make_figures.py
"""

import sys
import warnings
from pathlib import Path

import lens_digits as ld
from lens_digits.plotting import static_image

DOCS = Path(__file__).resolve().parents[1] / "docs"


def main() -> int:
    warnings.simplefilter("ignore", UserWarning)  # scale 1 has only 100 distinct problems
    model = ld.load_builtin_model(device="cpu")
    grid = ld.run_sweep(model, scales="1-5", n_per_scale=1000, target="answer", seed=0)
    (DOCS / "heatmap_builtin.png").write_bytes(static_image(grid.figure(), scale=2))
    both = ld.run_sweep(model, scales="1-4", n_per_scale=800, methods=["logit_lens", "probe"], target="answer", seed=0)
    (DOCS / "probes_builtin.png").write_bytes(static_image(both.figure(), scale=2))
    print(grid.to_text())
    print(both.to_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
