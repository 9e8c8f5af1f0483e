"""``lens-digits plot`` and ``lens-digits compare``: a run directory's figures drawn again, and two runs' difference.

Figures are written atomically, as HTML (plotly.js inside, compressed:
:mod:`lens_digits.results.offline`) or a static image; a file the user made is
never replaced (only figures this package wrote into a run directory).
"""

import argparse
from pathlib import Path
from typing import Any

from lens_digits.errors import LensDigitsError

__all__ = ["compare_command", "figure_arguments", "plot_command"]


def figure_arguments(parser: argparse.ArgumentParser) -> None:
    """The figure options of ``lens-digits plot``."""
    from lens_digits.results.figures import COLORSCALES

    parser.add_argument("--method", default=None, help="one method (default: all, one panel each)")
    parser.add_argument("--target", default=None, help="one target (default: all)")
    parser.add_argument("--place", default=None, help="one digit place of the breakdown: units, tens, ... (default: whole cells)")
    parser.add_argument(
        "--row",
        action="append",
        default=[],
        metavar="COLUMN=LABEL",
        help="breakdown rows to draw, e.g. carries=1 or carry_in=yes (repeatable; default: whole cells)",
    )
    parser.add_argument(
        "--value",
        default="accuracy",
        help="column to draw: accuracy; lenses: gold_prob, within_1, numeric, ...; probes: control, chance, selectivity "
        "(default: accuracy)",
    )
    parser.add_argument("--kind", default="heatmap", choices=["heatmap", "lines"], help="heatmap, or accuracy against layer per scale")
    parser.add_argument("--facet", default=None, metavar="COLUMN", help="a column of panels per label of a breakdown: place, carries, seed")
    parser.add_argument("--text", action="store_true", help="write each cell's value in it")
    parser.add_argument("--colorscale", default="Viridis", choices=COLORSCALES, help="heatmap colour scale (default: Viridis)")
    parser.add_argument("--no-markers", action="store_true", help="leave out the emergence-layer markers")


def _write_figure(fig: Any, out: Path, replace: bool) -> Path:
    """Write a figure as HTML or a static image, atomically; refuse to replace a file the user made.

    Returns:
        ``out``, the file written.

    Raises:
        OutputError: ``out`` exists and ``replace`` is false.
        LensDigitsError: ``out`` does not end in ``.html``, ``.png``, ``.svg`` or ``.pdf``.
    """
    from lens_digits.errors import OutputError
    from lens_digits.results.figures import static_image
    from lens_digits.results.offline import figure_page
    from lens_digits.storage import atomic

    if out.exists() and not replace:
        raise OutputError(f"{str(out)!r} exists; choose another --out")
    suffix = out.suffix.lower()
    if suffix not in (".html", ".png", ".svg", ".pdf"):
        raise LensDigitsError(f"--out {str(out)!r}: write .html, .png, .svg or .pdf")
    data = figure_page(fig).encode() if suffix == ".html" else static_image(fig, format=suffix[1:], scale=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_file(out, data)
    return out


def plot_command(args: argparse.Namespace) -> int:
    """``lens-digits plot RUN_DIR``: redraw one method, target, place or value into the run directory (or ``--out``).

    Returns:
        The exit code (0).

    Raises:
        LensDigitsError: The run has no such ``--method`` or ``--target``, or a ``--row`` is not ``COLUMN=LABEL``.
    """
    from lens_digits.results.grid import AccuracyGrid
    from lens_digits.storage.paths import FIGURE_NAME

    grid = AccuracyGrid.load(args.run_dir)
    if args.method or args.target:
        keep = grid.table
        for column, label in (("method", args.method), ("target", args.target)):
            if label is not None:
                if label not in set(keep[column]):
                    raise LensDigitsError(f"{args.run_dir!r} has no {column} {label!r}; it has {sorted(set(grid.table[column]))}")
                keep = keep[keep[column] == label]
        emergence = grid.emergence
        for column, label in (("method", args.method), ("target", args.target)):
            if label is not None:
                emergence = emergence[emergence[column] == label]
        grid = AccuracyGrid(keep, grid.problems, grid.info, emergence=emergence)
    rows = {"place": args.place} if args.place else {}
    for item in args.row:
        column, sep, label = item.partition("=")
        if not sep or not column or not label:
            raise LensDigitsError(f"--row {item!r}: write COLUMN=LABEL, e.g. carries=1")
        rows[column.strip()] = label.strip()
    fig = grid.figure(
        value=args.value, kind=args.kind, facet=args.facet, text=args.text, colorscale=args.colorscale, markers=not args.no_markers, **rows
    )
    picked = (v if k == "place" else f"{k}{v}" for k, v in rows.items())
    choices = [args.method, args.target, *picked, None if args.value == "accuracy" else args.value]
    choices += [None if args.kind == "heatmap" else args.kind, f"by-{args.facet}" if args.facet else None]
    choices = [str(c).replace(" ", "") for c in choices if c]
    default = Path(args.run_dir) / ("heatmap-" + "-".join(choices) + ".html" if choices else "heatmap-redrawn.html")
    out = Path(args.out) if args.out else default
    ours = out.parent.resolve() == Path(args.run_dir).resolve() and FIGURE_NAME.fullmatch(out.name) is not None
    written = [_write_figure(fig, out, replace=ours)]
    if args.png and out.suffix == ".html":
        written.append(_write_figure(fig, out.with_suffix(".png"), replace=ours))
    print("wrote " + ", ".join(str(w) for w in written))
    return 0


def compare_command(args: argparse.Namespace) -> int:
    """``lens-digits compare RUN_A RUN_B``: the difference of two runs' grids, printed and drawn with ``--out``.

    Returns:
        The exit code (0).
    """
    from lens_digits.results.grid import AccuracyGrid

    a, b = AccuracyGrid.load(args.run_a), AccuracyGrid.load(args.run_b)
    labels = (Path(args.run_a).name or "A", Path(args.run_b).name or "B")
    if labels[0] == labels[1]:
        labels = ("A", "B")
    diff = a.compare(b, labels)
    print(diff.to_text())
    if args.out:
        print(f"wrote {_write_figure(diff.figure(), Path(args.out), replace=False)}")
    return 0
