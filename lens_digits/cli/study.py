"""``lens-digits study STUDY.toml``: many models x tasks, each into its own run directory, combined (see :mod:`lens_digits.runs.study`)."""

import argparse

from lens_digits.errors import LensDigitsError
from lens_digits.runs.study import load_study, run_study


def study_command(args: argparse.Namespace) -> int:
    """``lens-digits study STUDY.toml``.

    Returns:
        The exit code (0).

    Raises:
        LensDigitsError: Neither the study file (``out = ...``) nor ``--out`` names a folder, or a Ray flag is out of range.
    """
    from lens_digits.methods import import_modules
    from lens_digits.runs.executors import ray_options

    options = ray_options(args.executor, args.address, args.threads, args.gpus, args.resources)
    import_modules(args.imports)
    study, out = load_study(args.study_file, imports=args.imports)
    out = args.out or out
    if out is None:
        raise LensDigitsError("the study file names no folder (out = ...); give --out")
    result = run_study(study, out, executor=args.executor, address=args.address, progress=not args.no_progress, **options)
    print(f"{len(result.units)} units ({len(study.models)} models x {len(study.tasks)} tasks) in {out}")
    print(f"wrote {out}/{{study.csv, study_emergence.csv, study.html, study.json}}")
    return 0
