"""``lens-digits run``: a sweep of a model (the built-in one unless ``--model``) into a run directory."""

import argparse
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lens_digits.errors import BoundaryMergeError, LensDigitsError


def run_command(args: argparse.Namespace) -> int:
    """``lens-digits run``: check every setting, reserve ``--out``, sweep, write the run directory and print the grid.

    Returns:
        The exit code (0).

    Raises:
        LensDigitsError: A setting is invalid, ``--executor ray`` comes with ``--no-cache``, or ``--address`` without ``--executor ray``.
    """
    return _run(args)


def known_methods(args: argparse.Namespace, names: Sequence[str]) -> None:
    """Import ``--import`` modules, then check that every method name is registered (plug-ins included).

    Raises:
        LensDigitsError: A name is not a registered method.
    """
    from lens_digits.methods import import_modules, method_class

    import_modules(args.imports)
    for name in names:
        try:
            method_class(name)
        except LensDigitsError as e:
            raise LensDigitsError(f"{e} (in --methods; a method of your own: --import MODULE)") from None


def _run(args: argparse.Namespace) -> int:
    from lens_digits.problems.tasks import TaskConfig
    from lens_digits.runs.config import SweepConfig
    from lens_digits.settings import config_from_args

    # Check every setting before anything slow happens (the configs load no torch).
    task = config_from_args(TaskConfig, args)
    config = config_from_args(SweepConfig, args, progress=not args.no_progress)
    from lens_digits.model.loading import parse_dtype, resolve_device

    parse_dtype(args.dtype)
    resolve_device(args.device)
    known_methods(args, config.methods)

    from lens_digits.results.emergence import EMERGENCE_LEGEND, emergence_text
    from lens_digits.storage.paths import RUN_FILES
    from lens_digits.storage.reservation import Reservation

    # Reserve the output folder before any compute: a second run into it fails now, not after its sweep.
    with Reservation(args.out, args.overwrite) as reservation:
        if args.executor == "ray" and args.no_cache:
            raise LensDigitsError("--executor ray shares the work through the residual cache; leave out --no-cache")
        from lens_digits.runs.executors import ray_options

        args.ray = ray_options(args.executor, args.address, args.threads, args.gpus, args.resources)
        cache = None
        if not args.no_cache:
            from lens_digits.residuals.cache import SHARD_SIZE, ResidualCache

            shard_size = SHARD_SIZE if args.shard_size is None else args.shard_size
            cache = ResidualCache.for_run_directory(reservation.target, overwrite=args.overwrite, shard_size=shard_size)
        try:
            grid = _sweep(args, task, config, cache)
        finally:
            if cache is not None:
                cache.discard_if_empty()  # a run that stopped before its first shard leaves no cache folder behind
        if cache is not None:
            cache.take_over(grid.info)  # the shards it read from the run directory it replaces
        try:
            out = grid.save(args.out, overwrite=args.overwrite, reservation=reservation, cache=None if cache is None else cache.folder)
        except KeyboardInterrupt as e:  # a signal held back during the final move arrives after it
            if reservation.written:
                e.written = reservation.target  # type: ignore[attr-defined]
            raise
    print(grid.to_text())
    if not grid.emergence.empty:
        print("\n" + EMERGENCE_LEGEND)
        print(emergence_text(grid.emergence))
    written = [name for name in RUN_FILES if (out / name).exists()] + (["cache/"] if (out / "cache").is_dir() else [])
    print(f"wrote {out}/{{{', '.join(written)}}}")
    return 0


def _sweep(args: argparse.Namespace, task: Any, config: Any, cache: Any = None) -> Any:
    """Load the model (tokenizer-level problems are caught before the weights load) and run the sweep.

    Returns:
        The sweep's grid, with the command line (and the executor, if cached) in its info.

    Raises:
        BoundaryMergeError: A local checkpoint's tokenizer merges the answer into the prompt; the message names the template.
    """
    from lens_digits.builtin import model_source
    from lens_digits.model.checkpoints import peek_checkpoint
    from lens_digits.model.loading import load_model
    from lens_digits.problems.targets import encode_checked
    from lens_digits.problems.tasks import generate_problems
    from lens_digits.runs.sweep import sweep

    args.model = model_source(args.model)
    if Path(args.model).expanduser().is_dir():
        tokenizer, n_ctx = peek_checkpoint(args.model)
        try:
            bos = None if config.prepend_bos is False else tokenizer.bos_token_id
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the sweep repeats any warning about the problems
                problems = generate_problems(task)
            encode_checked(tokenizer, problems, bos, n_ctx, chat=config.chat)
        except BoundaryMergeError as e:
            raise BoundaryMergeError(f"template {task.template!r} with answer prefix {task.answer_prefix!r}: {e}") from None
    shards = []
    if args.executor == "ray":  # the residual shards are computed on the cluster; this process reads them back
        from lens_digits.runs.ray_shards import prefill_with_ray

        gpus = 1.0 if str(args.device or "").startswith("cuda") else 0.0
        spec = {"model": args.model, "dtype": args.dtype, "device": args.device, "gpus": gpus}
        shards = prefill_with_ray(spec, task, config, cache, address=args.address, progress=not args.no_progress, **args.ray)
    model = load_model(args.model, device=args.device, dtype=args.dtype, progress=False if args.no_progress else None)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)  # --threads: this process's too
    try:
        grid = sweep(model, task, config, cache=cache)
    finally:
        torch.set_num_threads(threads)
    grid.info["command"] = _command_line(args.argv)
    if cache is not None:
        grid.info["cache"] = {**grid.info.get("cache", {}), "executor": args.executor}
        if args.executor == "ray" and shards:  # the Ray nodes that computed this run's shards
            grid.info["cache"]["nodes"] = sorted({s["node"] for s in shards})
    return grid


def _command_line(argv: Sequence[str]) -> str:
    """The command as typed, shell-quoted so that it can be pasted back into a shell.

    Returns:
        ``lens-digits`` and ``argv``, joined into one shell-quoted line.
    """
    import shlex

    return shlex.join(["lens-digits", *argv])
