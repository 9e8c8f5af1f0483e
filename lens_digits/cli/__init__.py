"""The ``lens-digits`` command line.

``lens-digits run`` makes a run directory from a model and settings (the
built-in arithmetic model unless ``--model`` names another); ``lens-digits
train-model`` trains a model like the built-in one. Their options come from the
configs (:class:`~lens_digits.problems.tasks.TaskConfig`,
:class:`~lens_digits.runs.config.SweepConfig`,
:class:`~lens_digits.builtin.recipe.TrainConfig`), so a setting is named,
defaulted and checked in one place. Bad input exits with code 2 and a one-line
message, and leaves no output behind. Parsing and checking the arguments loads
no torch: ``--help`` and a typo's rejection are immediate.
"""

import argparse
import re
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import Any

from lens_digits.errors import LensDigitsError

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """One line and exit 2, like every other bad input."""
        self.exit(EXIT_BAD_INPUT, f"lens-digits: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (subcommands ``run`` and ``train-model``).

    Returns:
        The parser of ``lens-digits`` and all its subcommands.
    """
    from lens_digits import __version__
    from lens_digits.builtin.recipe import TrainConfig
    from lens_digits.problems.tasks import TaskConfig
    from lens_digits.runs.config import SweepConfig
    from lens_digits.settings import add_arguments

    parser = _Parser(
        prog="lens-digits",
        description="Where in a transformer does an arithmetic answer become readable? "
        "Accuracy grids (digit scale x layer) from the logit lens and other decoders.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="run a sweep and write a run directory",
        description="Generate problems per digit scale, run the model once per batch, decode every layer and "
        "write grid.csv, prompts.jsonl, examples.jsonl, report.html and run.json into --out.",
    )
    run.add_argument(
        "--model",
        default=None,
        help="local Hugging Face checkpoint folder, a hub name, or builtin:NAME (default: builtin, the shipped "
        "arith-llama-28, a 28-layer Llama trained on 1-4 digit additions; lens-digits models lists them)",
    )
    run.add_argument("--out", required=True, help="run directory to create (must not exist or be empty)")
    add_arguments(run.add_argument_group("problems"), TaskConfig)
    add_arguments(run.add_argument_group("sweep"), SweepConfig)
    hardware = run.add_argument_group("model and output")
    hardware.add_argument("--device", default=None, help="device of the model: cpu, cuda, cuda:N or mps (default: cuda if available)")
    hardware.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype (default: float32)")
    hardware.add_argument("--overwrite", action="store_true", help="replace an earlier run directory written by lens-digits at --out")
    hardware.add_argument(
        "--no-cache",
        action="store_true",
        help="keep residuals in memory only (default: written to --out/cache as they are computed, so a killed run resumes "
        "and lens-digits fit can refit decoders without the model)",
    )
    hardware.add_argument("--shard-size", type=int, default=None, metavar="N", help="problems per residual cache shard (default: 256)")
    _executor_arguments(hardware, "compute the residual shards here, or as Ray tasks (one per shard) on a cluster")
    _import_argument(hardware)
    hardware.add_argument("--no-progress", action="store_true", help="hide progress bars")

    fit = sub.add_parser(
        "fit",
        help="fit and score decoders on a run's cached residuals, without the model",
        description="Read the residuals a run kept in RUN_DIR/cache, fit and score the decoders named by --methods on them, "
        "and add their rows to the run's grid.csv, emergence.csv, examples.jsonl, report and run.json "
        "(replacing rows of the same methods). "
        "Probes need no model; lenses need --model. Probes need the train and validation residuals: "
        "a run with a probe, or with --cache-train.",
    )
    fit.add_argument("run_dir", help="a run directory written by lens-digits run (with its cache/)")
    fit.add_argument("--methods", required=True, help="decoders to fit, comma-separated (e.g. probe,circular_probe)")
    fit.add_argument("--probe-scope", default=None, choices=["per_scale", "pooled"], help="for probes (default: the run's)")
    fit.add_argument(
        "--model",
        default=None,
        help="the run's model (a folder, a hub name or builtin), for lenses and fourier: logit_lens reads through it without running it, "
        "tuned_lens also runs it on the train problems to train",
    )
    fit.add_argument("--device", default=None, help="device of --model (default: cuda if available)")
    _import_argument(fit)
    fit.add_argument("--no-progress", action="store_true", help="hide progress bars")

    study = sub.add_parser(
        "study",
        help="run many models x tasks, each into its own run directory, and combine them",
        description="Read a study file (TOML: [[models]] and [[tasks]] tables, see the README), run every (model, task) "
        "into OUT/MODEL/TASK (a finished one is kept, a killed one resumes from its cache), then write study.csv, "
        "study_emergence.csv and study.html (faceted by model) into OUT.",
    )
    study.add_argument("study_file", help="the study file (.toml)")
    study.add_argument("--out", default=None, help="the study folder (default: the file's out = ...)")
    _executor_arguments(study, "run units here one by one, or as Ray tasks")
    _import_argument(study)
    study.add_argument("--no-progress", action="store_true", help="do not print each unit as it starts")

    plot = sub.add_parser(
        "plot",
        help="redraw a run directory's figure",
        description="Draw a run directory's grid again, choosing the method, target, digit place or value, as interactive "
        "HTML (and a static PNG with --png). Writes RUN_DIR/heatmap-<choices>.html unless --out names another file.",
    )
    plot.add_argument("run_dir", help="a run directory written by lens-digits run")
    from lens_digits.cli.plot import figure_arguments

    figure_arguments(plot)
    plot.add_argument("--out", default=None, help="file to write: .html, or .png, .svg, .pdf (static export: kaleido and Chrome)")
    plot.add_argument("--png", action="store_true", help="also write a PNG beside the HTML (needs kaleido and Chrome or Chromium)")

    compare = sub.add_parser(
        "compare",
        help="the difference of two runs' grids",
        description="Subtract run B's grid from run A's over the cells both have (the same methods, targets, scales and "
        "layers: two models, two templates, two seeds), print the table and draw it as a heatmap.",
    )
    compare.add_argument("run_a", help="run directory A")
    compare.add_argument("run_b", help="run directory B (subtracted from A)")
    compare.add_argument("--out", default=None, help="write the heatmap to this file (.html, or .png with kaleido and Chrome)")

    report = sub.add_parser(
        "report",
        help="one HTML page to browse runs: figures, selectors, example problems (opens offline)",
        description="Write one self-contained HTML page (plotly.js and the data inside; it opens offline, by double-click) "
        "showing the runs' provenance, the Accuracy Breakdown of every reading with selectors for breakdown and value, "
        "hover details, the example problems behind each cell, a line view, two readings or runs side by side with "
        "their difference, and downloads. Several RUN_DIRs, or a study folder, go into one page to compare.",
    )
    from lens_digits.cli.report import report_arguments

    report_arguments(report)

    sub.add_parser(
        "models",
        help="list the models shipped with the package",
        description="List the built-in models (lens-digits run --model builtin:NAME; builtin alone is the first), each with "
        "its card's summary.",
    )

    tm = sub.add_parser(
        "train-model",
        help="train a small arithmetic model like the built-in one",
        description="Train a small Llama (character tokenizer) on arithmetic prompts written like lens_digits' "
        "problems, save it as a Hugging Face checkpoint folder in --out, then measure its greedy accuracy per op "
        "and digit scale into card.json and README.md there. The defaults are the built-in model's recipe and seed.",
    )
    tm.add_argument("--out", required=True, help="checkpoint folder to create (must not exist or be empty)")
    add_arguments(tm.add_argument_group("recipe"), TrainConfig)
    tm.add_argument(
        "--recipe",
        default="arith-llama",
        help="start from a shipped model's recipe: arith-llama (4 layers, the defaults below) or arith-llama-28 (28 layers, "
        "d_model 96, scales 1-4, 5000 steps, lr 7e-4, warm-up 300); flags given beside it override it (default: arith-llama)",
    )
    tm.add_argument("--threads", type=int, default=1, help="torch CPU threads while training; 0: torch's default (default: 1)")
    tm.add_argument(
        "--eval-n",
        type=int,
        default=500,
        help="the card's n_per_scale: it measures every problem of TaskConfig(n_per_scale=N), its test, train and validation "
        "splits together, 5 x N problems per op and scale (fewer where a scale has fewer); 0: no card (default: 500)",
    )
    tm.add_argument("--eval-ops", default=None, metavar="OPS", help="operations the card measures (default: those trained on)")
    tm.add_argument("--eval-scales", default=None, metavar="SCALES", help="digit scales the card measures (default: those trained on)")
    tm.add_argument("--overwrite", action="store_true", help="replace a checkpoint folder written by train-model at --out")
    tm.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def _executor_arguments(parser: Any, what: str) -> None:
    """``--executor``, ``--address`` and what each unit asks for (``--threads``, ``--gpus``, ``--resource``): for ``run`` and ``study``."""
    parser.add_argument("--executor", default="local", choices=["local", "ray"], help=f"{what} (default: local)")
    parser.add_argument("--address", default=None, help="for --executor ray: a running cluster (default: a local one, loopback only)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch CPU threads per unit, and the CPUs each Ray task asks for (default: torch's; on Ray, fitted to the largest node)",
    )
    parser.add_argument(
        "--gpus", type=float, default=None, metavar="N", help="for --executor ray: GPUs each task asks for (default: the model's gpus)"
    )
    parser.add_argument(
        "--resource",
        dest="resources",
        action="append",
        default=[],
        metavar="NAME=N",
        help="for --executor ray: a custom Ray resource each task asks for (repeatable), e.g. worker=1 for nodes started with "
        "--resources '{\"worker\": 1}'",
    )


def _import_argument(parser: Any) -> None:
    """``--import MODULE``: modules that register methods of their own, for ``run``, ``fit`` and ``study``."""
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module that registers methods of its own before anything runs (repeatable); installed plug-ins "
        "(entry-point group lens_digits.methods) need no flag",
    )


def _flagged(message: str) -> str:
    """An error message with config field names written as the command line's flags (``n_per_scale`` -> ``--n``).

    Returns:
        ``message`` with each field name before " must " or " is " replaced by its flag.
    """
    from lens_digits.builtin.recipe import TrainConfig
    from lens_digits.problems.tasks import TaskConfig
    from lens_digits.runs.config import SweepConfig
    from lens_digits.settings import flags

    names = flags(TaskConfig, SweepConfig, TrainConfig)
    pattern = r"(?<![\w-])(" + "|".join(sorted(names, key=len, reverse=True)) + r")(?= must | is )"
    return re.sub(pattern, lambda m: names[m.group(1)], message)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: unwinds like Ctrl-C so that temporary output is removed on the way out."""

    def __init__(self, signum: int) -> None:
        """Remember which signal."""
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def _show_warning(message: Warning | str, *args: object, **kwargs: object) -> None:
    print(f"lens-digits: warning: {message}", file=sys.stderr)


def _kept_for_resume(args: argparse.Namespace) -> str:
    """Where an interrupted run's residuals wait for the same command to resume (empty if none were kept).

    Returns:
        A clause naming the pending cache folder, to append to a message; empty if it holds no shard.
    """
    if args.command != "run" or args.no_cache:
        return ""
    from lens_digits.storage.paths import SHARD_FILE, pending_cache, resolve_output

    try:
        pending = pending_cache(resolve_output(args.out))
        kept = pending.is_dir() and not pending.is_symlink() and any(SHARD_FILE.fullmatch(p.name) for p in pending.iterdir())
    except Exception:  # noqa: BLE001 - only a hint in a message
        return ""
    return f" (residuals computed so far are kept in {pending}: the same command resumes from them)" if kept else ""


def _left_behind(e: BaseException) -> str:
    """What an error left that could not be removed (a folder made read-only meanwhile), for its message.

    Returns:
        A clause naming the paths left behind, to append to the message; empty if none.
    """
    paths = getattr(e, "left_behind", [])
    if not paths:
        return ""
    return f"; could not remove {', '.join(repr(str(p)) for p in paths)} (the next run into the same folder removes them)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lens-digits``; returns the exit code.

    Returns:
        The exit code: the command's (0), 2 for bad input or an ``OSError``, 128 plus the signal's number when interrupted.

    Raises:
        AssertionError: The parser accepted a command that is not dispatched here (a bug).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):  # SIGTERM (timeout, Slurm, docker stop) is handled like Ctrl-C
            handlers[sig] = signal.signal(sig, _raise_interrupted)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.showwarning = _show_warning
            if args.command == "run":
                from lens_digits.cli.run import run_command

                return run_command(args)
            if args.command == "train-model":
                from lens_digits.cli.train import train_command

                return train_command(args)
            if args.command == "plot":
                from lens_digits.cli.plot import plot_command

                return plot_command(args)
            if args.command == "study":
                from lens_digits.cli.study import study_command

                return study_command(args)
            if args.command == "fit":
                from lens_digits.cli.fit import fit_command

                return fit_command(args)
            if args.command == "compare":
                from lens_digits.cli.plot import compare_command

                return compare_command(args)
            if args.command == "report":
                from lens_digits.cli.report import report_command

                return report_command(args)
            if args.command == "models":
                from lens_digits.builtin import list_models

                for name, summary in list_models():
                    print(f"builtin:{name:<16} {summary}")
                return 0
    except LensDigitsError as e:
        print(f"lens-digits: error: {_flagged(str(e))}{_kept_for_resume(args)}{_left_behind(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:  # a full disk, a file-size limit, a read-only or vanished folder: one line, temporary files removed
        from lens_digits.errors import first_line, os_error_text

        text = os_error_text(e) if e.errno is not None else first_line(e)
        print(f"lens-digits: error: {text}{_kept_for_resume(args)}{_left_behind(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        written = getattr(e, "written", None)
        what = f"after writing {written}" if written else "nothing was written" + _kept_for_resume(args)
        print(f"lens-digits: stopped by {signal.Signals(signum).name}; {what}", file=sys.stderr)
        return 128 + signum
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
