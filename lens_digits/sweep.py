"""``run_sweep``: problems -> residuals -> decoders -> AccuracyGrid."""

import dataclasses
import importlib.metadata
import os
import platform
import time
import warnings
from collections.abc import Sequence
from typing import Any, cast

import torch

from lens_digits.adapter import ModelAdapter
from lens_digits.cache import ResidualCache, sweep_key
from lens_digits.carries import add_column_breakdown
from lens_digits.config import SweepConfig, parse_methods
from lens_digits.decoders.base import Decoder, Scores, Target, make_decoder
from lens_digits.errors import BoundaryMergeError, LensDigitsError
from lens_digits.generate import greedy_answers
from lens_digits.grid import AccuracyGrid
from lens_digits.patching import INTERVENTIONS, Intervention, make_intervention
from lens_digits.record import RunRecord
from lens_digits.residuals import ResidualSet, collect_residuals, tokens_only
from lens_digits.targets import EncodedProblem, encode_for_model
from lens_digits.tasks import Problem, TaskConfig, generate_problems


def versions() -> dict[str, str]:
    """Versions of the package and the libraries that shape its numbers."""
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
    methods: Sequence[str | Decoder | Intervention] = ("logit_lens",),
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
    norm: str = "final",
    within: Sequence[int] = (1, 10),
    thresholds: Sequence[float] = (0.5, 0.9),
    n_boot: int = 1000,
    seeds: Sequence[int] | None = None,
    pairs: int | None = None,
    decoder_options: dict[str, dict[str, Any]] | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = False,
    cache: "str | os.PathLike[str] | ResidualCache | None" = None,
    cache_train: bool = False,
) -> AccuracyGrid:
    """Accuracy of each decoder at each digit scale and layer.

    Generates the problems, runs the model once per batch keeping every layer's
    residual at the answer positions, fits the decoders that learn (on train and
    validation problems) and scores every decoder on the same test problems.

    Args:
        model: A ``HookedTransformer`` or ``TransformerBridge`` with a tokenizer.
        scales: Digit scales, e.g. ``[1, 2, 3, 4]`` or ``"1-4"``.
        n_per_scale: Test problems per scale: what every decoder is scored on.
        op: ``add``, ``sub``, ``mul`` or a registered operation.
        methods: Decoder names (``logit_lens``) or decoder instances.
        target: ``first`` (first answer token at the last prompt position),
            ``answer`` (every answer token, teacher-forced), ``model`` (every
            token of the model's own greedy answer, teacher-forced), ``both``
            (first and answer), ``all`` or a list.
        seed: Seed of the problem generator (and of decoders that use one).
        template: Prompt template name or format string (see ``TEMPLATES``).
        answer_prefix: Text before the answer's digits that is part of the answer
            (``" "`` for GPT-2-style tokenizers with a template ending in ``=``).
        few_shot: Solved examples put before each prompt.
        n_train: Train problems per scale for decoders that fit (default ``3 * n_per_scale``);
            the model runs on them only when such a decoder is asked for.
        n_val: Validation problems per scale for decoders that fit (default ``n_per_scale``).
        allow_negative: Let ``sub`` draw pairs with negative results.
        subset: Score ``all`` test problems, only those the model ``solved``
            (greedy answer exactly right) or only the ``unsolved`` ones.
        prepend_bos: Put BOS before prompts; None follows the model's config.
        chat: Wrap prompts in the tokenizer's chat template (instruct models).
        probe_scope: For ``probe``: ``per_scale`` (separate probes per digit
            scale) or ``pooled`` (one probe set fitted on all scales, scored per scale).
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
        decoder_options: Constructor options of decoders named in ``methods``,
            by name, e.g. ``{"probe": {"Cs": [0.1, 1.0]}}``.
        batch_size: Problems per forward pass.
        device: Where residuals are kept and decoders run (default: the model's).
        progress: Show progress bars.
        cache: A folder (or :class:`~lens_digits.cache.ResidualCache`) to keep the
            residuals in, shard by shard: a sweep run again with the same settings
            reads them instead of running the model (see :mod:`lens_digits.cache`).
        cache_train: Also run the model on the train and validation problems
            (and cache their residuals) when no decoder fits, so that probes can be
            fitted later from the cache (:func:`lens_digits.refit.refit`).

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
    decoders = [m for m in method_list if not isinstance(m, str)]
    return sweep(model, task, config, decoders=decoders, decoder_options=decoder_options, cache=cache)


def sweep(
    model: Any,
    task: TaskConfig,
    config: SweepConfig,
    *,
    decoders: Sequence[Decoder | Intervention] = (),
    decoder_options: dict[str, dict[str, Any]] | None = None,
    cache: ResidualCache | None = None,
) -> AccuracyGrid:
    """:func:`run_sweep` from its two configs: what the command line calls, and what ``run.json`` records.

    ``decoders`` are instances to use for the methods of the same name (others are built by name);
    ``cache`` keeps the residuals on disk (and reads those already there).
    """
    started = time.perf_counter()
    adapter = ModelAdapter.wrap(model)
    targets = list(config.targets)
    options: dict[str, dict[str, Any]] = {
        "probe": {"scope": config.probe_scope, "seed": task.seed, "progress": config.progress},
        "logit_lens": {"norm": config.norm, "within": config.within},
        "tuned_lens": {"seed": task.seed, "progress": config.progress, "within": config.within},
        "circular_probe": {"scope": config.probe_scope, "seed": task.seed, "progress": config.progress},
    }
    for name in ("patch", "patch_operands"):
        options[name] = {
            "pairs": config.pairs,
            "seed": task.seed,
            "batch_size": config.batch_size,
            "progress": config.progress,
            "template": task.template,
            "chat": config.chat,
        }
    for name, extra in (decoder_options or {}).items():
        options[name] = {**options.get(name, {}), **extra}
    given = {d.name: d for d in decoders}
    acting = [m for m in config.methods if isinstance(given.get(m), Intervention) or (m not in given and m in INTERVENTIONS)]
    readers: list[Decoder | Intervention] = [
        given.get(m) or make_decoder(m, adapter.model, **options.get(m, {})) for m in config.methods if m not in acting
    ]
    readers += [given.get(m) or make_intervention(m, **options.get(m, {})) for m in acting]
    plan = {d.name: [t for t in targets if t in d.targets] for d in readers}
    for d in readers:
        if not plan[d.name]:
            raise LensDigitsError(f"decoder {d.name!r} reads none of the targets {targets}; it reads {list(d.targets)}")
        skipped = [t for t in targets if t not in d.targets]
        if skipped and config.targets != ("first", "answer", "model"):  # "all" means every target each decoder reads
            warnings.warn(f"decoder {d.name!r} does not read target(s) {skipped}; it has no cells for them", stacklevel=2)

    seeds = [int(s) for s in config.seeds] if config.seeds is not None else [task.seed]
    base = None
    if cache is not None:
        cache.clear_partial()
        base = sweep_key(adapter, config.chat, config.prepend_bos, cache.shard_size)
    draws = [_one_draw(adapter, dataclasses.replace(task, seed=seed), config, readers, plan, cache, base) for seed in seeds]
    draw = draws[0] if len(draws) == 1 else _merge_draws(draws, seeds)
    results, scored, problems, runs, data = draw.results, draw.scored, draw.problems, draw.runs, draw.data
    record = RunRecord(
        model=adapter.describe(),
        task=task.to_dict(),
        sweep=config.to_dict(),
        methods={d.name: d.settings() for d in readers},
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


@dataclasses.dataclass
class _Draw:
    """One problem draw's scores: what :func:`sweep` aggregates into a grid."""

    results: list[tuple[str, str, Scores]]
    scored: list[Problem]
    problems: list[Problem]
    runs: dict[str, int]
    data: ResidualSet


def _one_draw(
    adapter: ModelAdapter,
    task: TaskConfig,
    config: SweepConfig,
    readers: list[Decoder | Intervention],
    plan: dict[str, list[str]],
    cache: ResidualCache | None = None,
    key: dict[str, Any] | None = None,
) -> _Draw:
    """Problems of one seed -> residuals (from the cache where it has them) -> fitted and scored decoders."""
    targets = list(config.targets)
    problems = generate_problems(task)
    try:
        encoded = encode_for_model(adapter, problems, prepend_bos=config.prepend_bos, chat=config.chat)
    except BoundaryMergeError as e:
        raise BoundaryMergeError(f"template {task.template!r} with answer prefix {task.answer_prefix!r}: {e}") from None
    _warn_unknown_tokens(adapter, problems, encoded)
    _warn_builtin_untrained(adapter, task)
    fits = any(getattr(d, "fits", False) for d in readers) or config.cache_train
    run = residual_rows(problems, fits)
    common: dict[str, Any] = dict(batch_size=config.batch_size, store_device=config.device, progress=config.progress)

    def collect(probs: list[Problem], enc: list[EncodedProblem], kind: str) -> ResidualSet:
        forcing = kind != "first"
        if cache is None:
            return collect_residuals(adapter, probs, encoded=enc, teacher_forcing=forcing, **common)
        shard_key = {**(key or {}), "task": task.to_dict()}
        return cache.collect(adapter, shard_key, probs, enc, kind=kind, seed=task.seed, teacher_forcing=forcing, **common)

    data = collect([problems[i] for i in run], [encoded[i] for i in run], residual_kind(targets))
    runs = {"residuals": len(run), "greedy": 0}
    test_idx = [j for j, p in enumerate(data.problems) if p.split == "test"]
    test = data.select(test_idx)
    own_data = None
    if "model" in targets or config.subset != "all":  # the model's own answers, for the test problems only
        prompts = [e.prompt_ids for e in test.encoded]
        steps = [len(e.answer_ids) + 2 for e in test.encoded]
        outputs = greedy_answers(adapter, prompts, steps, batch_size=config.batch_size, progress=config.progress)
        runs["greedy"] = len(prompts)
        answered = {
            id(p): dataclasses.replace(p, model_output=o.text, model_correct=o.text == p.answer)
            for p, o in zip(test.problems, outputs, strict=True)
        }
        test.problems = [answered[id(p)] for p in test.problems]
        problems = [answered.get(id(p), p) for p in problems]
        if "model" in targets:
            own = [EncodedProblem(e.prompt_ids, o.token_ids) for e, o in zip(test.encoded, outputs, strict=True)]
            own_data = collect(test.problems, own, "model")
            runs["residuals"] += len(own)
    subset = config.subset
    keep = [i for i, p in enumerate(test.problems) if subset == "all" or p.model_correct == (subset == "solved")]
    if not keep:
        raise LensDigitsError(f"no test problems left in subset {subset!r}; use more problems or another subset")
    if fits:
        train, val = data.split("train"), data.split("val")
    else:
        split = {s: [i for i, p in enumerate(problems) if p.split == s] for s in ("train", "val")}
        train, val = (
            tokens_only([problems[i] for i in split[s]], [encoded[i] for i in split[s]], data.n_columns) for s in ("train", "val")
        )
    scored = test.select(keep)  # one object for both targets, so decoders can reuse work across them
    tests = {"first": scored, "answer": scored}
    if own_data is not None:
        tests["model"] = own_data.select(keep)
    results = score_readers(adapter, readers, plan, train, val, tests, task.seed)
    scored_problems = list(scored.problems)
    for d in readers:
        if isinstance(d, Intervention):
            scored_problems = d.annotate(scored_problems)
            noted = {id(old): new for old, new in zip(scored.problems, scored_problems, strict=True)}
            problems = [noted.get(id(p), p) for p in problems]
    return _Draw(results, scored_problems, problems, runs, data)


def residual_rows(problems: Sequence[Problem], fits: bool) -> list[int]:
    """The problems a sweep collects residuals of: the test problems, and train and validation ones for decoders that fit.

    Split by split (each in the problems' order), so that each split's residuals are one run of rows: a view, not a copy.
    """
    splits = ("test", "train", "val") if fits else ("test",)
    return [i for split in splits for i, p in enumerate(problems) if p.split == split]


def residual_kind(targets: Sequence[str]) -> str:
    """``answer`` (teacher forcing: every answer position) when target ``answer`` is scored, else ``first`` (the last prompt position)."""
    return "answer" if "answer" in targets else "first"


def score_readers(
    adapter: ModelAdapter | None,
    readers: Sequence[Decoder | Intervention],
    plan: dict[str, list[str]],
    train: ResidualSet,
    val: ResidualSet,
    tests: dict[str, ResidualSet],
    seed: int,
) -> list[tuple[str, str, Scores]]:
    """Fit each decoder on ``train`` and ``val`` and score it (interventions: run them) on each target's test set.

    ``adapter`` None (refitting from a residual cache) allows decoders only.
    """
    results = []
    for d in readers:
        if isinstance(d, Intervention):  # runs the model itself, on the test problems (their residuals are the sources)
            if adapter is None:
                raise LensDigitsError(f"method {d.name!r} runs the model; it cannot be scored from cached residuals alone")
            for t in plan[d.name]:
                results.append((d.name, t, add_column_breakdown(d.score(adapter, tests[t], cast(Target, t)), tests[t].problems)))
            continue
        # A decoder that draws random numbers from torch's global generator gets the same ones on every run,
        # and the caller's generator is left as it was.
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []):
            torch.manual_seed(seed)
            d.fit(train, val)
            for t in plan[d.name]:
                results.append((d.name, t, add_column_breakdown(d.score(tests[t], cast(Target, t)), tests[t].problems)))
    return results


def _merge_draws(draws: list[_Draw], seeds: list[int]) -> _Draw:
    """Several draws as one: each method's scores over all their test problems, with ``seed`` rows for each draw alone."""
    results = []
    sizes = [len(d.scored) for d in draws]
    which = torch.repeat_interleave(torch.arange(len(draws)), torch.tensor(sizes))
    for i, (name, target, _) in enumerate(draws[0].results):
        merged = Scores.concat([d.results[i][2] for d in draws])
        merged.breakdown["seed"] = {str(s): Scores(merged.correct, merged.metrics, applies=which == k) for k, s in enumerate(seeds)}
        results.append((name, target, merged))
    runs = {k: sum(d.runs[k] for d in draws) for k in draws[0].runs}
    return _Draw(results, [p for d in draws for p in d.scored], [p for d in draws for p in d.problems], runs, draws[0].data)


def _warn_unknown_tokens(adapter: ModelAdapter, problems: Sequence[Problem], encoded: Sequence[EncodedProblem]) -> None:
    """Warn when prompts contain the tokenizer's unknown token (characters the model cannot read)."""
    unk = getattr(adapter.tokenizer, "unk_token_id", None)
    if unk is None:
        return
    bad = [p for p, e in zip(problems, encoded, strict=True) if unk in e.prompt_ids or unk in e.answer_ids]
    if bad:
        p = bad[0]
        chars = sorted({c for c in p.prompt + p.answer_prefix + p.answer if adapter.tokenizer.convert_tokens_to_ids(c) == unk})
        shown = f" (characters {''.join(chars)!r})" if chars else ""
        warnings.warn(
            f"{len(bad)} of {len(problems)} problems contain tokens this tokenizer does not know{shown}, as in {p.prompt!r}: "
            "the model reads them as unknown; use a template it can read",
            stacklevel=3,
        )


def _warn_builtin_untrained(adapter: ModelAdapter, task: TaskConfig) -> None:
    """Warn when the built-in model is asked for an operation or template it was not trained on."""
    from pathlib import Path

    from lens_digits.builtin import builtin_card, builtin_model_path
    from lens_digits.tasks import TEMPLATES

    try:
        same = Path(adapter.name).resolve() == builtin_model_path().resolve()
    except OSError:
        return
    if not same:
        return
    recipe = builtin_card()["recipe"]
    if not any(_same_operation(task.op, trained) for trained in recipe["ops"]):
        warnings.warn(
            f"the built-in model was trained on {', '.join(recipe['ops'])} only, not {task.op!r}: expect a grid near 0 "
            "(train one with lens-digits train-model --ops ...)",
            stacklevel=3,
        )
    if task.template != TEMPLATES["compact"] or task.few_shot or task.answer_prefix:
        warnings.warn(
            f"the built-in model was trained on the compact template {TEMPLATES['compact']!r} alone, without few-shot examples "
            "or an answer prefix: other prompts read as nonsense to it",
            stacklevel=3,
        )


def _same_operation(op: str, trained: str) -> bool:
    """Whether operation ``op`` writes and computes what ``trained`` does (a filtered ``add`` is still addition)."""
    from lens_digits.operations import OPERATIONS

    a, b = OPERATIONS.get(op), OPERATIONS.get(trained)
    if a is None or b is None:
        return op == trained
    pairs = [(0, 0), (3, 4), (9, 9), (47, 85), (12, 37), (999, 1), (5, 123)]
    try:
        return a.symbol == b.symbol and all(a.fn(x, y) == b.fn(x, y) for x, y in pairs)
    except Exception:  # a custom function that rejects some of these operands
        return False


def describe_encoding(model: ModelAdapter, data: ResidualSet, prepend_bos: bool | None, chat: bool) -> dict[str, Any]:
    """What was fed, for ``run.json``: the BOS actually used and, per digit scale, one test problem's tokens."""
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
