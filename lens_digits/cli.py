"""The ``lens-digits`` command line.

``lens-digits run`` makes a run directory from a model and settings (the
built-in arithmetic model unless ``--model`` names another); ``lens-digits
train-model`` trains a model like the built-in one. Bad input exits with code 2
and a one-line message, and leaves no output behind.
"""

import argparse
import sys
import threading
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
    """The argument parser (subcommands ``run`` and ``train-model``)."""
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
    run.add_argument(
        "--model",
        default=argparse.SUPPRESS,
        help="local Hugging Face checkpoint folder, or a hub name (default: the built-in arith-llama model, "
        "a small Llama trained on 1-3 digit additions, shipped with the package)",
    )
    run.add_argument("--out", required=True, help="run directory to create (must not exist or be empty)")
    run.add_argument("--scales", default="1-4", help="digit scales: a range '1-4' or a list '1,2,5'")
    run.add_argument("--n", type=int, default=200, help="distinct problems per scale, before the train/val/test split")
    run.add_argument("--op", default="add", help="operation: add, sub or mul")
    run.add_argument(
        "--target",
        default="answer",
        choices=["first", "answer", "model", "both", "all"],
        help="what a decoder must read: first answer token; whole answer (teacher-forced); the model's own greedy answer; "
        "both = first and answer; all three",
    )
    run.add_argument(
        "--subset",
        default="all",
        choices=["all", "solved", "unsolved"],
        help="score all test problems or only those the model solves (or not)",
    )
    run.add_argument("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template (instruct models)")
    run.add_argument(
        "--prepend-bos", action=argparse.BooleanOptionalAction, default=None, help="put BOS before prompts (default: follow the model)"
    )
    run.add_argument("--methods", type=_csv, default=["logit_lens"], help="comma-separated decoders: logit_lens, probe")
    run.add_argument(
        "--probe-scope",
        default="per_scale",
        choices=["per_scale", "pooled"],
        help="probe: separate probes per digit scale, or one set fitted on all scales and scored per scale",
    )
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

    from lens_digits.builtin.recipe import TrainConfig

    d = TrainConfig()
    tm = sub.add_parser(
        "train-model",
        help="train a small arithmetic model like the built-in one",
        description="Train a small Llama (character tokenizer) on arithmetic prompts written like lens_digits' "
        "problems, save it as a Hugging Face checkpoint folder in --out, then measure its greedy accuracy per op "
        "and digit scale into card.json and README.md there. The defaults are the built-in model's recipe and seed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    tm.add_argument("--out", required=True, help="checkpoint folder to create (must not exist or be empty)")
    tm.add_argument("--layers", type=int, default=d.n_layers, help="transformer blocks")
    tm.add_argument("--d-model", type=int, default=d.d_model, help="residual stream width")
    tm.add_argument("--heads", type=int, default=d.n_heads, help="attention heads")
    tm.add_argument("--d-mlp", type=int, default=argparse.SUPPRESS, help="MLP hidden width (default: 4 x --d-model)")
    tm.add_argument("--scales", default=",".join(map(str, d.scales)), help="digit scales of the training problems")
    tm.add_argument("--ops", type=_csv, default=",".join(d.ops), help="comma-separated operations: add, sub, mul")
    tm.add_argument("--mixed", type=float, default=d.mixed, help="fraction of problems whose operands differ in length")
    tm.add_argument("--steps", type=int, default=d.steps, help="optimiser steps")
    tm.add_argument("--batch-size", type=int, default=d.batch_size, help="problems per step")
    tm.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (AdamW, warm-up then cosine decay)")
    tm.add_argument("--seed", type=int, default=d.seed, help="seed of the weights and the training problems")
    tm.add_argument("--threads", type=int, default=1, help="torch CPU threads while training (0: torch's default)")
    tm.add_argument("--eval-n", type=int, default=500, help="problems per op and scale for the card (0: no card)")
    tm.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out")
    tm.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _run(args: argparse.Namespace) -> int:
    from lens_digits.checkpoints import peek_checkpoint
    from lens_digits.config import SweepConfig
    from lens_digits.decoders import DECODERS
    from lens_digits.models import load_model, parse_dtype, resolve_device
    from lens_digits.rundir import Reservation
    from lens_digits.sweep import run_sweep
    from lens_digits.targets import encode_checked
    from lens_digits.tasks import TaskConfig, generate_problems

    if getattr(args, "model", None) is None:
        from lens_digits.builtin import builtin_model_path

        args.model = str(builtin_model_path())
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
    SweepConfig(
        methods=args.methods,
        targets=args.target,
        subset=args.subset,
        prepend_bos=args.prepend_bos,
        chat=args.chat,
        probe_scope=args.probe_scope,
        batch_size=args.batch_size,
    )
    parse_dtype(args.dtype)
    resolve_device(args.device)
    for m in args.methods:
        if m not in DECODERS:
            raise LensDigitsError(f"unknown method {m!r} in --methods; choose from {', '.join(sorted(DECODERS))}")

    # Reserve the output folder before any compute: a second run into it fails now, not after its sweep.
    with Reservation(args.out, args.overwrite) as reservation:
        if Path(args.model).expanduser().is_dir():
            # Tokenizer-level problems are reported before the (slow) weight load.
            tokenizer, n_ctx = peek_checkpoint(args.model)
            try:
                bos = None if args.prepend_bos is False else tokenizer.bos_token_id
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # run_sweep repeats any warning about the problems
                    problems = generate_problems(config)
                encode_checked(tokenizer, problems, bos, n_ctx, chat=args.chat)
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
            subset=args.subset,
            prepend_bos=args.prepend_bos,
            chat=args.chat,
            probe_scope=args.probe_scope,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
        grid.info["command"] = _command_line(args.argv)
        try:
            out = grid.save(args.out, overwrite=args.overwrite, reservation=reservation)
        except KeyboardInterrupt as e:  # a signal held back during the final move arrives after it
            if reservation.written:
                e.written = reservation.target  # type: ignore[attr-defined]
            raise
    print(grid.to_text())
    print(f"wrote {out}/{{grid.csv, prompts.jsonl, heatmap.html, run.json}}")
    return 0


def _command_line(argv: Sequence[str]) -> str:
    """The command as typed, shell-quoted so that it can be pasted back into a shell."""
    import shlex

    return shlex.join(["lens-digits", *argv])


def _train_model(args: argparse.Namespace) -> int:
    from lens_digits.builtin.card import card_table, write_card
    from lens_digits.builtin.recipe import TrainConfig
    from lens_digits.builtin.train import is_checkpoint_dir, train, write_checkpoint
    from lens_digits.rundir import Reservation

    config = TrainConfig(
        n_layers=args.layers,
        d_model=args.d_model,
        n_heads=args.heads,
        d_mlp=getattr(args, "d_mlp", None),
        scales=args.scales,
        ops=args.ops,
        mixed=args.mixed,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    if args.threads < 0:
        raise LensDigitsError(f"--threads must be 1 or more (0: torch's default), got {args.threads}")
    if args.eval_n < 0:
        raise LensDigitsError(f"--eval-n must be 0 (no card) or more, got {args.eval_n}")
    from lens_digits.models import progress_bars

    with Reservation(args.out, args.overwrite, is_ours=is_checkpoint_dir) as reservation, progress_bars(not args.no_progress):
        result = train(config, threads=args.threads or None, progress=not args.no_progress)
        cards = []

        def fill(folder: Path) -> None:
            write_checkpoint(result, folder)
            if args.eval_n:  # measured before the folder moves into place, so an interrupt leaves no card-less checkpoint
                cards.append(write_card(folder, n_per_scale=args.eval_n, name=reservation.target.name))

        try:
            out = reservation.write(fill)
        except KeyboardInterrupt as e:
            if reservation.written:
                e.written = reservation.target  # type: ignore[attr-defined]
            raise
    if cards:
        print(card_table(cards[0]))
    print(f"wrote {out}" + (" with card.json and README.md" if cards else ""))
    return 0


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lens-digits``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    import signal

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
                return _run(args)
            if args.command == "train-model":
                return _train_model(args)
    except LensDigitsError as e:
        print(f"lens-digits: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        name = signal.Signals(signum).name
        written = getattr(e, "written", None)
        what = f"after writing {written}" if written else "nothing was written"
        print(f"lens-digits: stopped by {name}; {what}", file=sys.stderr)
        return 128 + signum
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
