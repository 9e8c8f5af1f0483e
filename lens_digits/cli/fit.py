"""``lens-digits fit``: methods fitted and scored on a run directory's cached residuals (see :mod:`lens_digits.runs.fit`)."""

import argparse

from lens_digits.runs.fit import refit
from lens_digits.settings import parse_methods


def fit_command(args: argparse.Namespace) -> int:
    """``lens-digits fit RUN_DIR --methods ...``.

    Returns:
        The exit code (0).
    """
    from lens_digits.results.emergence import EMERGENCE_LEGEND, emergence_text

    model = None
    if args.model is not None:
        from lens_digits.builtin import model_source
        from lens_digits.model.loading import load_model

        model = load_model(model_source(args.model), device=args.device, progress=False if args.no_progress else None)
    from lens_digits.cli.run import known_methods

    known_methods(args, parse_methods(args.methods))
    grid = refit(args.run_dir, args.methods, probe_scope=args.probe_scope, model=model, progress=not args.no_progress)
    names = parse_methods(args.methods)
    print(grid.to_text())
    found = grid.emergence[grid.emergence["method"].isin(names)] if not grid.emergence.empty else grid.emergence
    if not found.empty:
        print("\n" + EMERGENCE_LEGEND)
        print(emergence_text(found))
    print(f"updated {args.run_dir} with {', '.join(names)} (fitted on its cached residuals)")
    return 0
