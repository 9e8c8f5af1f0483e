"""Every kind of figure lens_digits draws, rendered to PNG: the gallery in docs/gallery (and what a test renders).

    python scripts/figure_gallery.py                    # docs/gallery/*.png, from the 4-layer built-in model
    python scripts/figure_gallery.py --out DIR --n 20   # smaller, anywhere (the test suite's run)

Needs kaleido >= 1 and a Chrome or Chromium (Debian/Ubuntu: `apt-get install chromium`).
"""

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import lens_digits as ld
from lens_digits.results.figures import static_image
from lens_digits.runs.study import combine

DOCS = Path(__file__).resolve().parents[1] / "docs" / "gallery"


def figures(n: int) -> dict[str, object]:
    """Each figure kind, by file name."""
    model = ld.load_builtin_model("arith-llama", device="cpu")
    methods = ["logit_lens", "tuned_lens", "probe", "patch"]
    grid = ld.run_sweep(model, scales="1-3", n_per_scale=n, methods=methods, target="answer", seed=0)
    other = ld.run_sweep(model, scales="1-3", n_per_scale=n, target="answer", seed=1, template="{a}{op}{b}= ")
    lens_only = ld.AccuracyGrid(grid.table[grid.table["method"] == "logit_lens"], grid.problems, grid.info, emergence=grid.emergence)
    out = {
        "heatmap": lens_only.figure(),
        "heatmap_text": lens_only.figure(text=True),
        "panels": grid.figure(),
        "lines": grid.figure(kind="lines"),
        "facet_place": lens_only.figure(facet="place"),
        "facet_carries": grid.figure(facet="carries"),
        "difference": grid.difference("probe", "logit_lens").figure(),
        "selectivity": grid.figure(value="selectivity"),
        "patching": ld.AccuracyGrid(
            grid.table[grid.table["method"] == "patch"], grid.problems, grid.info, emergence=grid.emergence
        ).figure(),
        "compare": lens_only.compare(other, ("seed0", "seed1")).figure(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        units = []
        for name, g in (("arith-llama", lens_only), ("arith-llama-other", other)):
            folder = Path(tmp) / name / "add"
            g.info["study"] = {"n_params": sum(p.numel() for p in model.parameters())}
            g.save(folder)
            units.append({"out": str(folder), "model": {"name": name}, "task_name": "add"})
        study = combine(units)
        out["study"] = study.figure()
        out["study_emergence"] = study.size_figure()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(DOCS), help="folder for the PNGs (default: docs/gallery)")
    parser.add_argument("--n", type=int, default=100, help="test problems per scale")
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figures(args.n).items():
        (out / f"{name}.png").write_bytes(static_image(fig))  # type: ignore[arg-type]
        print(f"wrote {out / name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
