"""The ``lens-digits`` command line.

``lens-digits run`` makes a run directory from a model and settings; bad input
exits with code 2 and a one-line message, and leaves no output behind.
"""

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from lens_digits.errors import BoundaryMergeError, LensDigitsError

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """One line and exit 2, like every other bad input."""
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (subcommands ``run``)."""
    parser = _Parser(
        prog="lens-digits",
        description="Where in a transformer does an arithmetic answer become readable? "
        "Accuracy grids (digit scale x layer) from the logit lens and other decoders.",
    )
    from lens_digits import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="run a sweep and write a run directory",
        description="Generate problems per digit scale, run the model once per batch, decode every layer and "
        "write grid.csv, prompts.jsonl, heatmap.html and run.json into --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run.add_argument("--model", required=True, help="local Hugging Face checkpoint folder, or a hub name")
    run.add_argument("--out", required=True, help="run directory to create (must not exist or be empty)")
    run.add_argument("--scales", default="1-4", help="digit scales: a range '1-4' or a list '1,2,5'")
    run.add_argument("--n", type=int, default=200, help="distinct problems per scale, before the train/val/test split")
    run.add_argument("--op", default="add", help="operation: add, sub or mul")
    run.add_argument("--target", default="answer", choices=["first", "answer", "both"], help="what a decoder must read")
    run.add_argument("--methods", type=_csv, default=["logit_lens"], help="comma-separated decoders")
    run.add_argument("--template", default="compact", help="prompt template name (compact, spaced, calculate) or format string")
    run.add_argument(
        "--answer-prefix", default="", help="text before the answer's digits that belongs to the answer (' ' for GPT-2-style BPE)"
    )
    run.add_argument("--few-shot", type=int, default=0, help="solved examples before each prompt")
    run.add_argument("--allow-negative", action="store_true", help="sub: allow negative results (default: a >= b only)")
    run.add_argument("--seed", type=int, default=0, help="seed of problem generation and decoders")
    run.add_argument("--batch-size", type=int, default=64, help="problems per forward pass")
    run.add_argument("--device", default=None, help="device of the model, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    run.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype")
    run.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def _run(args: argparse.Namespace) -> int:
    from lens_digits.grid import check_output_dir
    from lens_digits.models import load_model, parse_dtype, peek_checkpoint
    from lens_digits.residuals import encode_checked
    from lens_digits.sweep import parse_targets, run_sweep
    from lens_digits.tasks import TaskConfig, generate_problems

    if args.batch_size < 1:
        raise LensDigitsError(f"--batch-size must be at least 1, got {args.batch_size}")
    # Check every setting before the (slow) model load.
    config = TaskConfig(
        scales=args.scales,
        n_per_scale=args.n,
        op=args.op,
        template=args.template,
        answer_prefix=args.answer_prefix,
        few_shot=args.few_shot,
        seed=args.seed,
        allow_negative=args.allow_negative,
    )
    parse_targets(args.target)
    parse_dtype(args.dtype)
    check_output_dir(args.out, args.overwrite)
    from lens_digits.decoders import DECODERS

    for m in args.methods:
        if m not in DECODERS:
            raise LensDigitsError(f"unknown method {m!r} in --methods; choose from {', '.join(sorted(DECODERS))}")

    if Path(args.model).expanduser().is_dir() and (Path(args.model).expanduser() / "config.json").is_file():
        # Tokenizer-level problems are reported before the (slow) weight load.
        tokenizer, n_ctx = peek_checkpoint(args.model)
        try:
            encode_checked(tokenizer, generate_problems(config), tokenizer.bos_token_id, n_ctx)
        except BoundaryMergeError as e:
            raise BoundaryMergeError(f"template {config.template!r} with answer prefix {config.answer_prefix!r}: {e}") from None
    model = load_model(args.model, device=args.device, dtype=args.dtype, progress=not args.no_progress)
    grid = run_sweep(
        model,
        scales=args.scales,
        n_per_scale=args.n,
        op=args.op,
        methods=args.methods,
        target=args.target,
        seed=args.seed,
        template=args.template,
        answer_prefix=args.answer_prefix,
        few_shot=args.few_shot,
        allow_negative=args.allow_negative,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    grid.info["command"] = "lens-digits " + " ".join(sys.argv[1:])
    out = grid.save(args.out, overwrite=args.overwrite)
    print(grid.to_text())
    print(f"wrote {out}/{{grid.csv, prompts.jsonl, heatmap.html, run.json}}")
    return 0


def _show_warning(message: Warning | str, *args: object, **kwargs: object) -> None:
    print(f"lens-digits: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lens-digits``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.showwarning = _show_warning
            if args.command == "run":
                return _run(args)
    except LensDigitsError as e:
        print(f"lens-digits: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("lens-digits: interrupted; nothing was written", file=sys.stderr)
        return 130
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
