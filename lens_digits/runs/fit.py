"""``lens-digits fit``: methods fitted and scored on a run directory's cached residuals, without the model.

A run directory written with its residual cache (``cache/``, the default of
``lens-digits run``) holds every residual its methods read. :func:`refit`
rebuilds the run's train, validation and test sets from the shards (the
problems from ``prompts.jsonl``, the token ids from the shards), fits and
scores the methods asked for exactly as the sweep does (same seed, same
sets, same subsets), and adds their rows to the grid, replacing rows of the
same methods (their example readings too). The lenses read through the model's readout: give the model (the logit
lens never runs it; the tuned lens runs it on the train problems to train, as
in a sweep). Patching runs the model on every pair: it needs ``lens-digits run``.
"""

import dataclasses
import datetime
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from lens_digits.errors import LensDigitsError, OutputError
from lens_digits.methods.base import Decoder, Method, method_class
from lens_digits.model.adapter import ModelAdapter
from lens_digits.problems.targets import encode_for_model
from lens_digits.problems.tasks import TaskConfig
from lens_digits.residuals.cache import ResidualCache
from lens_digits.residuals.collect import ResidualSet, tokens_only
from lens_digits.results.cells import fill_breakdown_labels
from lens_digits.results.grid import AccuracyGrid
from lens_digits.runs.config import SweepConfig, method_settings
from lens_digits.runs.draw import Draw, build_methods, merge_draws, score_methods
from lens_digits.settings import parse_methods
from lens_digits.storage.paths import CACHE_FOLDER, is_cache_folder, pending_cache
from lens_digits.storage.reservation import Reservation

__all__ = ["refit"]


def refit(
    run_dir: str | os.PathLike[str],
    methods: Sequence[str | Decoder],
    *,
    method_options: dict[str, dict[str, Any]] | None = None,
    probe_scope: str | None = None,
    model: Any = None,
    progress: bool = False,
    save: bool = True,
    decoder_options: dict[str, dict[str, Any]] | None = None,
) -> AccuracyGrid:
    """Fit and score ``methods`` on the cached residuals of ``run_dir`` and add them to its grid.

    Args:
        run_dir: A run directory with its ``cache/``.
        methods: Method names (or decoder instances): ``probe``, ``circular_probe``, your own; lenses with ``model``.
        method_options: Options by method name (the keywords of their ``from_model``).
        probe_scope: For probes: ``per_scale`` or ``pooled`` (default: the run's).
        model: The run's model, for methods that read through it (the lenses;
            the tuned lens also runs it to train), and it must be the model the
            residuals came from (its weights' fingerprint is checked against the cache's).
        progress: Show progress bars.
        save: Write the updated run directory (atomically, its cache kept); False: only return the grid.
        decoder_options: The name of ``method_options`` before 0.2.

    Returns:
        The run's grid with the new methods' rows (and emergence layers) in place of any earlier ones.

    Raises:
        LensDigitsError: No cache, a method that runs the model (patching), or a lens without the model (or another
            model than the cache's).
        OutputError: Another command holds the run directory, or it is read-only.
    """
    run_dir = Path(run_dir).expanduser()
    adapter = None if model is None else ModelAdapter.wrap(model)  # the entry point: below it, the adapter
    options = {**(decoder_options or {}), **(method_options or {})}
    if not save:
        return _refit(run_dir, methods, options, probe_scope, adapter, progress, None)
    if not (run_dir / "grid.csv").is_file():
        AccuracyGrid.load(run_dir)  # the error that names what is missing, before anything is locked
    # The run directory is locked from reading its grid to saving it: a second fit waits for nothing and loses nothing,
    # it exits at once naming this one.
    with Reservation(run_dir, overwrite=True) as reservation:
        if not os.access(reservation.target, os.W_OK | os.X_OK):
            raise OutputError(f"cannot update {str(run_dir)!r}: the run directory is read-only; make it writable or copy it elsewhere")
        return _refit(run_dir, methods, options, probe_scope, adapter, progress, reservation)


def _refit(
    run_dir: Path,
    methods: Sequence[str | Decoder],
    options: dict[str, dict[str, Any]],
    probe_scope: str | None,
    model: ModelAdapter | None,
    progress: bool,
    reservation: Reservation | None,
) -> AccuracyGrid:
    grid = AccuracyGrid.load(run_dir)
    folder = run_dir / CACHE_FOLDER
    if not is_cache_folder(folder):
        stray = pending_cache(run_dir.resolve())
        if not is_cache_folder(stray):
            raise LensDigitsError(
                f"{str(run_dir)!r} has no residual cache (it was run with --no-cache, or before caches existed); "
                "run lens-digits run again without --no-cache"
            )
        folder = stray  # moved aside by an update that was interrupted
    record = grid.record
    task = TaskConfig.from_dict(record.task)
    config = SweepConfig.from_dict(record.sweep)
    if probe_scope is not None:
        config = dataclasses.replace(config, probe_scope=probe_scope)
    settings = method_settings(task, dataclasses.replace(config, progress=progress))
    names = parse_methods(methods)
    for name in names:
        if isinstance(name, str) and method_class(name).runs_model:
            raise LensDigitsError(f"method {name!r} runs the model; use lens-digits run (fit reads cached residuals only)")
    if model is not None:
        _check_model(model, folder)
    used = build_methods(
        [n if isinstance(n, str) else n.name for n in names], model, settings, options, [n for n in names if not isinstance(n, str)]
    )
    targets = list(record.targets)
    plan = {d.name: [t for t in targets if t in d.targets] for d in used}
    for d in used:
        if not plan[d.name]:
            raise LensDigitsError(f"method {d.name!r} reads none of the run's targets {targets}; it reads {list(d.targets)}")
    shard_size = int((record.cache or {}).get("shard_size", 0)) or None
    if shard_size is None:
        raise LensDigitsError(f"{str(run_dir / 'run.json')!r} does not say how its residual cache was sharded; run lens-digits run again")
    cache = ResidualCache(folder, shard_size=shard_size)
    seeds = [int(s) for s in config.seeds] if config.seeds is not None else [task.seed]
    draws = []
    for seed in seeds:
        problems = [p for p in grid.problems if p.seed == seed or (p.seed is None and len(seeds) == 1)]
        draws.append(_one_draw(cache, dataclasses.replace(task, seed=seed), config, targets, used, plan, problems, model))
    draw = draws[0] if len(draws) == 1 else merge_draws(draws, seeds)
    new = AccuracyGrid.from_scores(
        draw.results, draw.scored, thresholds=[float(t) for t in config.thresholds], n_boot=config.n_boot, seed=task.seed
    )
    names = [d.name for d in used]
    table = _combined(grid.table, new.table, names)
    emergence = _combined(grid.emergence, new.emergence, names)
    info = dict(grid.info)
    info["methods"] = {**info.get("methods", {}), **{d.name: d.settings() for d in used}}
    info["sweep"] = {**info.get("sweep", {}), "methods": list(dict.fromkeys([*info.get("sweep", {}).get("methods", []), *names]))}
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    info["refits"] = [*info.get("refits", []), {"methods": names, "when": when}]
    examples = [e for e in grid.examples if e["method"] not in names] + new.examples
    updated = AccuracyGrid(table, grid.problems, info, emergence=emergence, examples=examples)
    if reservation is not None:
        _save_in_place(updated, run_dir, folder, reservation)
    return updated


def _check_model(adapter: ModelAdapter, folder: Path) -> None:
    """The model must be the one whose residuals are cached.

    Raises:
        LensDigitsError: The model's weights fingerprint is not the one the cache's shards record.
    """
    import json

    from lens_digits.residuals.cache import weights_fingerprint

    meta = next((p for p in sorted(folder.glob("*.json"))), None)
    if meta is None:
        return
    made = json.loads(meta.read_text()).get("key", {})
    if made.get("weights") != weights_fingerprint(adapter.model):
        raise LensDigitsError(
            f"the model given is not the one the cached residuals came from ({made.get('model')!r}, weights fingerprint "
            f"{str(made.get('weights'))[:12]}); give that model"
        )


def _one_draw(
    cache: ResidualCache,
    task: TaskConfig,
    config: SweepConfig,
    targets: list[str],
    used: list[Method],
    plan: dict[str, list[str]],
    problems: list[Any],
    model: ModelAdapter | None = None,
) -> Draw:
    """One draw's sets from the cache, as the sweep built them, and the methods' scores on them.

    Decoders that do not fit get the train and validation problems' tokens only
    (a lens's baseline), from the cache when it has them, else from the model's tokenizer.

    Returns:
        The draw: the methods' scores, the scored test problems, ``problems``, no model runs, and the test residuals.

    Raises:
        LensDigitsError: No test problems are left in ``config.subset``.
    """
    fits = any(getattr(d, "fits", False) for d in used)
    kind = "answer" if "answer" in targets else "first"
    key_task = task.to_dict()
    tests = [p for p in problems if p.split == "test"]
    test = cache.load(tests, kind=kind, seed=task.seed, task=key_task)
    subset = config.subset
    keep = [i for i, p in enumerate(test.problems) if subset == "all" or p.model_correct == (subset == "solved")]
    if not keep:
        raise LensDigitsError(f"no test problems left in subset {subset!r}")
    split: dict[str, ResidualSet] = {}
    for name in ("train", "val"):
        chosen = [p for p in problems if p.split == name]
        if fits:
            split[name] = cache.load(chosen, kind=kind, seed=task.seed, task=key_task)
            continue
        try:
            encoded = cache.load(chosen, kind=kind, seed=task.seed, task=key_task).encoded
        except LensDigitsError:
            if model is None:
                chosen, encoded = [], []
            else:
                encoded = encode_for_model(model, chosen, prepend_bos=config.prepend_bos, chat=config.chat)
        split[name] = tokens_only(chosen, encoded, test.n_columns)
    scored = test.select(keep)
    sets = {"first": scored, "answer": scored}
    if "model" in targets:
        sets["model"] = cache.load(test.problems, kind="model", seed=task.seed, task=key_task).select(keep)
    results = score_methods(None, used, plan, split["train"], split["val"], sets, task.seed)
    return Draw(results, list(scored.problems), problems, {}, test)


def _combined(old: pd.DataFrame, new: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """``old`` without rows of ``methods``, then ``new``; ``old``'s column order first.

    Returns:
        The combined table, with breakdown labels that a side lacked filled in as ``all``.
    """
    kept = old[~old["method"].isin(methods)] if len(old) else old
    columns = list(dict.fromkeys([*old.columns, *new.columns]))
    frames = [f for f in (kept, new) if len(f)]
    if not frames:
        return pd.DataFrame(columns=columns)
    table = pd.concat(frames, ignore_index=True)
    columns = [c for c in columns if c in table.columns]
    return fill_breakdown_labels(table[columns].copy())  # breakdowns a side did not have read "all", as in a sweep with both


def _save_in_place(grid: AccuracyGrid, run_dir: Path, folder: Path, reservation: Reservation) -> None:
    """Replace the run directory with the updated one, its cache carried over by renames (and put back if that fails).

    Raises:
        LensDigitsError: Something is already where the cache is moved aside to (another run's residual cache).
    """
    pending = pending_cache(reservation.target)
    moved = folder != pending
    if moved:
        if os.path.lexists(pending):
            raise LensDigitsError(f"{str(pending)!r} is in the way (another run's residual cache); remove it or move it aside")
        os.rename(folder, pending)
    try:
        grid.save(run_dir, overwrite=True, reservation=reservation, cache=pending)
    finally:
        if moved and not reservation.written and pending.is_dir() and not os.path.lexists(folder):
            os.rename(pending, folder)  # the run directory is as it was, cache included
