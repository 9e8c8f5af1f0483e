"""``lens-digits train-model``: train a small arithmetic model like the built-in ones, with its model card."""

import argparse
from pathlib import Path

from lens_digits.errors import LensDigitsError


def train_command(args: argparse.Namespace) -> int:
    """``lens-digits train-model``: train, save the checkpoint folder atomically, measure its card.

    Returns:
        The exit code (0).

    Raises:
        LensDigitsError: A setting is invalid, ``--threads`` or ``--eval-n`` is negative, or ``--eval-ops`` names an unknown operation.
    """
    return _train_model(args)


def _train_model(args: argparse.Namespace) -> int:
    import dataclasses

    from lens_digits.builtin.recipe import TrainConfig, recipe

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    config = recipe(args.recipe, **given)
    if args.threads < 0:
        raise LensDigitsError(f"--threads must be 1 or more (0: torch's default), got {args.threads}")
    if args.eval_n < 0:
        raise LensDigitsError(f"--eval-n must be 0 (no card) or more, got {args.eval_n}")
    from lens_digits.problems.operations import OPERATIONS
    from lens_digits.problems.tasks import parse_scales

    eval_scales = parse_scales(args.eval_scales) if args.eval_scales else [int(s) for s in config.scales]
    eval_ops = [o.strip() for o in args.eval_ops.split(",") if o.strip()] if args.eval_ops else list(config.ops)
    for op in eval_ops:
        if op not in OPERATIONS:
            raise LensDigitsError(f"unknown op {op!r} in --eval-ops; choose from {', '.join(sorted(OPERATIONS))}")

    from lens_digits.builtin.card import card_table, write_card
    from lens_digits.builtin.train import is_checkpoint_dir, train, write_checkpoint
    from lens_digits.model.hub import progress_bars
    from lens_digits.storage.reservation import Reservation

    with Reservation(args.out, args.overwrite, is_ours=is_checkpoint_dir) as reservation, progress_bars(not args.no_progress):
        result = train(config, threads=args.threads or None, progress=not args.no_progress)
        cards = []

        def fill(folder: Path) -> None:
            write_checkpoint(result, folder)
            if args.eval_n:  # measured before the folder moves into place, so an interrupt leaves no card-less checkpoint
                card = write_card(
                    folder,
                    scales=eval_scales,
                    ops=eval_ops,
                    n_per_scale=args.eval_n,
                    name=reservation.target.name,
                    progress=not args.no_progress,
                )
                cards.append(card)

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
