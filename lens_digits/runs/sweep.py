"""``run_sweep``: problems -> residuals -> methods -> AccuracyGrid (one draw of problems per seed: :mod:`lens_digits.runs.draw`)."""

import dataclasses
import importlib.metadata
import os
import platform
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from lens_digits._stack import user_stacklevel
from lens_digits.errors import LensDigitsError
from lens_digits.methods.base import Method
from lens_digits.model.adapter import ModelAdapter
from lens_digits.problems.tasks import TaskConfig
from lens_digits.residuals.cache import ResidualCache, sweep_key, weights_fingerprint
from lens_digits.residuals.collect import ResidualSet
from lens_digits.results.grid import AccuracyGrid
from lens_digits.results.record import RunRecord
from lens_digits.runs.config import SweepConfig, method_settings
from lens_digits.runs.draw import build_methods, merge_draws, one_draw
from lens_digits.settings import parse_methods


def versions() -> dict[str, str]:
    """Versions of the package and the libraries that shape its numbers.

    Returns:
        Distribution name (and ``python``) -> version; ``not installed`` for one that is missing.
    """
    out = {"python": platform.python_version()}
    for dist in ("lens-digits", "transformer-lens", "torch", "transformers", "tokenizers", "plotly"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def run_sweep(
    model: Any,
    scales: Sequence[int] | str = (1, 2, 3, 4),
    n_per_scale: int = 200,
    op: str = "add",
    methods: Sequence[str | Method] = ("logit_lens",),
    target: str | Sequence[str] = "answer",
    seed: int = 0,
    *,
    template: str = "compact",
    answer_prefix: str = "",
    few_shot: int = 0,
    n_train: int | None = None,
    n_val: int | None = None,
    allow_negative: bool = False,
    subset: str = "all",
    prepend_bos: bool | None = None,
    chat: bool = False,
    probe_scope: str = "per_scale",
    probe_max_iter: int = 1000,
    norm: str = "final",
    within: Sequence[int] = (1, 10),
    thresholds: Sequence[float] = (0.5, 0.9),
    n_boot: int = 1000,
    seeds: Sequence[int] | None = None,
    pairs: int | None = None,
    method_options: dict[str, dict[str, Any]] | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = False,
    cache: "str | os.PathLike[str] | ResidualCache | None" = None,
    cache_train: bool = False,
    decoder_options: dict[str, dict[str, Any]] | None = None,
) -> AccuracyGrid:
    """Accuracy of each method at each digit scale and layer.

    Generates the problems, runs the model once per batch keeping every layer's
    residual at the answer positions, fits the methods that learn (on train and
    validation problems) and scores every method on the same test problems.

    Args:
        model: A ``HookedTransformer`` or ``TransformerBridge`` with a tokenizer.
        scales: Digit scales, e.g. ``[1, 2, 3, 4]`` or ``"1-4"``.
        n_per_scale: Test problems per scale: what every method is scored on.
        op: ``add``, ``sub``, ``mul`` or a registered operation.
        methods: Method names (``logit_lens``, ``probe``, ``patch``, a plug-in's) or method instances.
        target: ``first`` (first answer token at the last prompt position),
            ``answer`` (every answer token, teacher-forced), ``model`` (every
            token of the model's own greedy answer, teacher-forced), ``both``
            (first and answer), ``all`` or a list.
        seed: Seed of the problem generator (and of methods that use one).
        template: Prompt template name or format string (see ``TEMPLATES``).
        answer_prefix: Text before the answer's digits that is part of the answer
            (``" "`` for GPT-2-style tokenizers with a template ending in ``=``).
        few_shot: Solved examples put before each prompt.
        n_train: Train problems per scale for methods that fit (default ``3 * n_per_scale``);
            the model runs on them only when such a method is asked for.
        n_val: Validation problems per scale for methods that fit (default ``n_per_scale``).
        allow_negative: Let ``sub`` draw pairs with negative results.
        subset: Score ``all`` test problems, only those the model ``solved``
            (greedy answer exactly right) or only the ``unsolved`` ones.
        prepend_bos: Put BOS before prompts; None follows the model's config.
        chat: Wrap prompts in the tokenizer's chat template (instruct models).
        probe_scope: For ``probe``: ``per_scale`` (separate probes per digit
            scale) or ``pooled`` (one probe set fitted on all scales, scored per scale).
        probe_max_iter: For ``probe``: L-BFGS iterations per fit at most.
        norm: The lenses' readout before the last layer: ``final`` (the model's final
            norm with each residual's own statistics) or ``none`` (the unembedding alone).
        within: Lenses: the k of the ``within_k`` scores (share of problems whose
            decoded number is within ±k of the target's).
        thresholds: Accuracies whose first layer is an emergence layer (``grid.emergence``).
        n_boot: Bootstrap resamples of the emergence layers' 95% intervals.
        seeds: Several problem draws: every cell is over all of them, and ``seed``
            rows give each draw alone (their spread); None: the one draw of ``seed``.
        pairs: For method ``patch``: (source, target) pairs per digit scale
            (None: every test problem that has a source).
        method_options: Options of methods named in ``methods``, by name, e.g.
            ``{"probe": {"Cs": [0.1, 1.0]}}`` (the keywords of their ``from_model``).
        batch_size: Problems per forward pass.
        device: Where residuals are kept and methods run (default: the model's).
        progress: Show progress bars.
        cache: A folder (or :class:`~lens_digits.residuals.cache.ResidualCache`) to keep the
            residuals in, shard by shard: a sweep run again with the same settings
            reads them instead of running the model (see :mod:`lens_digits.residuals.cache`).
        cache_train: Also run the model on the train and validation problems
            (and cache their residuals) when no method fits, so that probes can be
            fitted later from the cache (:func:`lens_digits.runs.fit.refit`).
        decoder_options: The name of ``method_options`` before 0.2.

    Returns:
        The grid: every method, target, digit scale and layer column, with its problems and run record.

    Raises:
        LensDigitsError: A setting is invalid (the message names it), or a method reads none of the targets.

    >>> import lens_digits as ld
    >>> grid = ld.run_sweep(ld.testing.tiny_model(), scales=[1], n_per_scale=10, target="first")
    >>> row = grid.to_dataframe().iloc[0]
    >>> row["method"], row["target"], int(row["scale"]), int(row["layer"]), int(row["n"])
    ('logit_lens', 'first', 1, 0, 10)
    """
    method_list = parse_methods(methods)
    task = TaskConfig(
        scales=scales,
        n_per_scale=n_per_scale,
        op=op,
        template=template,
        answer_prefix=answer_prefix,
        few_shot=few_shot,
        seed=seed,
        n_train=n_train,
        n_val=n_val,
        allow_negative=allow_negative,
    )
    config = SweepConfig(
        methods=[m if isinstance(m, str) else m.name for m in method_list],
        targets=target,
        subset=subset,
        prepend_bos=prepend_bos,
        chat=chat,
        probe_scope=probe_scope,
        probe_max_iter=probe_max_iter,
        norm=norm,
        within=within,
        thresholds=thresholds,
        n_boot=n_boot,
        seeds=seeds,
        pairs=pairs,
        batch_size=batch_size,
        cache_train=cache_train,
        device=None if device is None else str(device),
        progress=progress,
    )
    if cache is not None and not isinstance(cache, ResidualCache):
        cache = ResidualCache(cache)
    given = [m for m in method_list if not isinstance(m, str)]
    options = {**(decoder_options or {}), **(method_options or {})}
    return sweep(model, task, config, methods=given, method_options=options, cache=cache)


def sweep(
    model: "ModelAdapter | Any",
    task: TaskConfig,
    config: SweepConfig,
    *,
    methods: Sequence[Method] = (),
    method_options: dict[str, dict[str, Any]] | None = None,
    cache: ResidualCache | None = None,
    decoders: Sequence[Method] = (),
    decoder_options: dict[str, dict[str, Any]] | None = None,
) -> AccuracyGrid:
    """:func:`run_sweep` from its two configs: what the command line calls, and what ``run.json`` records.

    ``methods`` are instances to use for the methods of the same name (the others are built by name,
    with ``method_options``); ``cache`` keeps the residuals on disk (and reads those already there).
    ``decoders`` and ``decoder_options`` are the names of ``methods`` and ``method_options`` before 0.2.

    Returns:
        The grid of every method, target, digit scale and layer column.

    Raises:
        LensDigitsError: A method reads none of the targets.
    """
    started = time.perf_counter()
    adapter = ModelAdapter.wrap(model)  # the entry point: every stage below gets this adapter
    targets = list(config.targets)
    given = [*methods, *decoders]
    method_options = {**(decoder_options or {}), **(method_options or {})}
    used = build_methods(config.methods, adapter, method_settings(task, config), method_options, given)
    plan = {d.name: [t for t in targets if t in d.targets] for d in used}
    for d in used:
        if not plan[d.name]:
            raise LensDigitsError(f"method {d.name!r} reads none of the targets {targets}; it reads {list(d.targets)}")
        skipped = [t for t in targets if t not in d.targets]
        if skipped and config.targets != ("first", "answer", "model"):  # "all" means every target each method reads
            warnings.warn(f"method {d.name!r} does not read target(s) {skipped}; it has no cells for them", stacklevel=user_stacklevel())

    seeds = [int(s) for s in config.seeds] if config.seeds is not None else [task.seed]
    base = None
    if cache is not None:
        cache.clear_partial()
        base = sweep_key(adapter, config.chat, config.prepend_bos, cache.shard_size)
    draws = [one_draw(adapter, dataclasses.replace(task, seed=seed), config, used, plan, cache, base) for seed in seeds]
    draw = draws[0] if len(draws) == 1 else merge_draws(draws, seeds)
    results, scored, problems, runs, data = draw.results, draw.scored, draw.problems, draw.runs, draw.data
    size = {"n_params": sum(p.numel() for p in adapter.model.parameters()), "weights": weights_fingerprint(adapter.model)}
    record = RunRecord(
        model=adapter.describe() | size,
        task=task.to_dict(),
        sweep=config.to_dict(),
        methods={d.name: d.settings() for d in used},
        targets=targets,
        encoding=describe_encoding(adapter, data, config.prepend_bos, config.chat),
        n_problems={s: sum(p.split == s for p in problems) for s in ("train", "val", "test")},
        model_runs=runs,
        versions=versions(),
        seconds=round(time.perf_counter() - started, 2),
        subset=config.subset,
        prepend_bos=config.prepend_bos,
        chat=config.chat,
        seed=task.seed,
        batch_size=config.batch_size,
    )
    if cache is not None:
        record.cache = {"folder": str(cache.folder), "shard_size": cache.shard_size, "problems": dict(cache.counts)}
    return AccuracyGrid.from_scores(
        results, scored, problems, record.to_dict(), thresholds=[float(t) for t in config.thresholds], n_boot=config.n_boot, seed=task.seed
    )


def describe_encoding(model: ModelAdapter, data: ResidualSet, prepend_bos: bool | None, chat: bool) -> dict[str, Any]:
    """What was fed, for ``run.json``: the BOS actually used and, per digit scale, one test problem's tokens.

    Returns:
        ``bos`` (whether one was prepended, its id and token, what was asked for), ``chat_template``, and ``examples``:
        per digit scale, a test problem's prompt and answer with their token ids and tokens.
    """
    tokenizer = model.tokenizer
    bos = None if chat else model.bos_id(prepend_bos)
    examples = {}
    for p, e in zip(data.problems, data.encoded, strict=True):
        if p.split != "test" or str(p.scale) in examples:
            continue
        examples[str(p.scale)] = {
            "prompt": p.prompt,
            "answer": p.answer_prefix + p.answer,
            "prompt_ids": list(e.prompt_ids),
            "answer_ids": list(e.answer_ids),
            "prompt_tokens": [tokenizer.decode([t]) for t in e.prompt_ids],
            "answer_tokens": [tokenizer.decode([t]) for t in e.answer_ids],
        }
    token = tokenizer.convert_ids_to_tokens(bos) if bos is not None else None
    return {
        "bos": {"prepended": bos is not None, "id": bos, "token": token, "requested": prepend_bos},
        "chat_template": chat,
        "examples": examples,
    }
