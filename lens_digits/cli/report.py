"""``lens-digits report``: one HTML page to browse run directories and study folders, written whole or not at all.

A page written into the run directory or study folder it shows replaces the report
there (one that lens-digits wrote); anywhere else an existing report is replaced
only with ``--overwrite``, and a file lens-digits did not write never is.
"""

import argparse
from pathlib import Path

from lens_digits.errors import LensDigitsError, RunDirectoryError

__all__ = ["report_arguments", "report_command"]


def report_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``lens-digits report``."""
    parser.add_argument("folders", nargs="+", metavar="RUN_DIR", help="run directories (several: to compare them) or a study folder")
    parser.add_argument(
        "--out",
        default=None,
        metavar="FILE.html",
        help="the page to write (default: report.html in the one run directory or study folder given; required for several)",
    )
    parser.add_argument("--title", default=None, help="the page's heading (default: the runs' names)")
    parser.add_argument("--overwrite", action="store_true", help="replace a report lens-digits wrote at --out (never any other file)")


def _default_out(folders: list[Path]) -> Path:
    """Where the page goes without ``--out``: into the one folder given.

    Returns:
        ``FOLDER/report.html``.

    Raises:
        LensDigitsError: Several folders are given.
    """
    from lens_digits.results.report import REPORT_FILE

    if len(folders) > 1:
        raise LensDigitsError(f"{len(folders)} folders given: name the page to write with --out FILE.html")
    return folders[0] / REPORT_FILE


def report_command(args: argparse.Namespace) -> int:
    """``lens-digits report RUN_DIR [RUN_DIR ...] [--out FILE.html]``: check the output, read the runs, write the page.

    Returns:
        The exit code (0).

    Raises:
        RunDirectoryError: A folder given does not exist.
    """
    from lens_digits.results.page import check_report_path, is_report
    from lens_digits.results.report import load_report
    from lens_digits.storage import atomic

    folders = [Path(f).expanduser() for f in args.folders]
    for folder in folders:
        if not folder.is_dir():
            raise RunDirectoryError(f"{str(folder)!r} does not exist or is not a folder; name a run directory written by lens-digits run")
    out = Path(args.out).expanduser() if args.out else _default_out(folders)
    replace = args.overwrite or (args.out is None and is_report(out))  # the folder's own report is the one to redo
    out = check_report_path(out, replace)  # before reading anything
    report = load_report(*folders, title=args.title)
    page = report.html().encode("utf-8")
    atomic.write_file(out, page)
    runs = len(report.grids)
    print(
        f"wrote {out} ({len(page) / 1e6:.1f} MB, {runs} run{'s' if runs > 1 else ''}): it opens offline in a browser; "
        "send the file as it is to share it"
    )
    return 0
