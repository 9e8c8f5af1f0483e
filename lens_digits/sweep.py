"""``run_sweep``: problems -> residuals -> decoders -> AccuracyGrid."""

import dataclasses
import importlib.metadata
import platform
import time
from collections.abc import Sequence
from typing import Any, cast

import torch

from lens_digits.adapter import ModelAdapter
from lens_digits.config import SweepConfig, parse_methods
from lens_digits.decoders.base import Decoder, Target, make_decoder
from lens_digits.errors import BoundaryMergeError, LensDigitsError
from lens_digits.generate import greedy_answers
from lens_digits.grid import AccuracyGrid
from lens_digits.record import RunRecord
from lens_digits.residuals import ResidualSet, collect_residuals
from lens_digits.targets import EncodedProblem
from lens_digits.tasks import TaskConfig, generate_problems


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
    scales: Sequence[int] | str = (1, 2, 3),
    n_per_scale: int = 200,
    op: str = "add",
    methods: Sequence[str | Decoder] = ("logit_lens",),
    target: str | Sequence[str] = "answer",
    seed: int = 0,
    *,
    template: str = "compact",
    answer_prefix: str = "",
    few_shot: int = 0,
    split: tuple[float, float, float] = (0.6, 0.2, 0.2),
    allow_negative: bool = False,
    subset: str = "all",
    prepend_bos: bool | None = None,
    chat: bool = False,
    probe_scope: str = "per_scale",
    decoder_options: dict[str, dict[str, Any]] | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> AccuracyGrid:
    """Accuracy of each decoder at each digit scale and layer.

    Generates the problems, runs the model once per batch keeping every layer's
    residual at the answer positions, fits the decoders that learn (on train and
    validation problems) and scores every decoder on the same test problems.

    Args:
        model: A ``HookedTransformer`` or ``TransformerBridge`` with a tokenizer.
        scales: Digit scales, e.g. ``[1, 2, 3, 4]`` or ``"1-4"``.
        n_per_scale: Distinct problems per scale, before the train/val/test split.
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
        split: Fractions of problems for train, validation and test.
        allow_negative: Let ``sub`` draw pairs with negative results.
        subset: Score ``all`` test problems, only those the model ``solved``
            (greedy answer exactly right) or only the ``unsolved`` ones.
        prepend_bos: Put BOS before prompts; None follows the model's config.
        chat: Wrap prompts in the tokenizer's chat template (instruct models).
        probe_scope: For ``probe``: ``per_scale`` (separate probes per digit
            scale) or ``pooled`` (one probe set fitted on all scales, scored per scale).
        decoder_options: Constructor options of decoders named in ``methods``,
            by name, e.g. ``{"probe": {"Cs": [0.1, 1.0]}}``.
        batch_size: Problems per forward pass.
        device: Where residuals are kept and decoders run (default: the model's).
        progress: Show progress bars.

    >>> import lens_digits as ld
    >>> grid = ld.run_sweep(ld.testing.tiny_model(), scales=[1], n_per_scale=10, target="first")
    >>> row = grid.to_dataframe().iloc[0]
    >>> row["method"], row["target"], int(row["scale"]), int(row["layer"]), int(row["n"])
    ('logit_lens', 'first', 1, 0, 2)
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
        split=split,
        allow_negative=allow_negative,
    )
    config = SweepConfig(
        methods=[m if isinstance(m, str) else m.name for m in method_list],
        targets=target,
        subset=subset,
        prepend_bos=prepend_bos,
        chat=chat,
        probe_scope=probe_scope,
        batch_size=batch_size,
        device=None if device is None else str(device),
        progress=progress,
    )
    return sweep(model, task, config, decoders=[m for m in method_list if not isinstance(m, str)], decoder_options=decoder_options)


def sweep(
    model: Any,
    task: TaskConfig,
    config: SweepConfig,
    *,
    decoders: Sequence[Decoder] = (),
    decoder_options: dict[str, dict[str, Any]] | None = None,
) -> AccuracyGrid:
    """:func:`run_sweep` from its two configs: what the command line calls, and what ``run.json`` records.

    ``decoders`` are instances to use for the methods of the same name (others are built by name).
    """
    started = time.perf_counter()
    adapter = ModelAdapter.wrap(model)
    targets = list(config.targets)
    options: dict[str, dict[str, Any]] = {"probe": {"scope": config.probe_scope, "seed": task.seed}}
    for name, extra in (decoder_options or {}).items():
        options[name] = {**options.get(name, {}), **extra}
    given = {d.name: d for d in decoders}
    readers = [given.get(m) or make_decoder(m, adapter.model, **options.get(m, {})) for m in config.methods]
    for d in readers:
        unsupported = [t for t in targets if t not in d.targets]
        if unsupported:
            raise LensDigitsError(f"decoder {d.name!r} does not support target(s) {unsupported}; it supports {list(d.targets)}")
    problems = generate_problems(task)
    common: dict[str, Any] = dict(batch_size=config.batch_size, store_device=config.device, progress=config.progress)
    try:
        data = collect_residuals(
            adapter, problems, teacher_forcing="answer" in targets, prepend_bos=config.prepend_bos, chat=config.chat, **common
        )
    except BoundaryMergeError as e:
        raise BoundaryMergeError(f"template {task.template!r} with answer prefix {task.answer_prefix!r}: {e}") from None
    own_data = None
    if "model" in targets or config.subset != "all":
        prompts = [e.prompt_ids for e in data.encoded]
        steps = [len(e.answer_ids) + 2 for e in data.encoded]
        outputs = greedy_answers(adapter, prompts, steps, batch_size=config.batch_size, progress=config.progress)
        problems = [
            dataclasses.replace(p, model_output=o.text, model_correct=o.text == p.answer) for p, o in zip(problems, outputs, strict=True)
        ]
        data.problems = problems
        if "model" in targets:
            own = [EncodedProblem(e.prompt_ids, o.token_ids) for e, o in zip(data.encoded, outputs, strict=True)]
            own_data = collect_residuals(adapter, problems, encoded=own, **common)
    subset = config.subset
    keep = [i for i, p in enumerate(problems) if p.split == "test" and (subset == "all" or p.model_correct == (subset == "solved"))]
    if not keep:
        raise LensDigitsError(f"no test problems left in subset {subset!r}; use more problems or another subset")
    train, val = data.split("train"), data.split("val")
    test = data.select(keep)  # one object for both targets, so decoders can reuse work across them
    tests = {"first": test, "answer": test}
    if own_data is not None:
        tests["model"] = own_data.select(keep)
    results = []
    for d in readers:
        # A decoder that draws random numbers from torch's global generator gets the same ones on every run,
        # and the caller's generator is left as it was.
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []):
            torch.manual_seed(task.seed)
            d.fit(train, val)
            for t in targets:
                results.append((d.name, t, d.score(tests[t], cast(Target, t))))
    record = RunRecord(
        model=adapter.describe(),
        task=task.to_dict(),
        sweep=config.to_dict(),
        methods={d.name: d.settings() for d in readers},
        targets=targets,
        encoding=describe_encoding(adapter, data, config.prepend_bos, config.chat),
        n_problems={s: sum(p.split == s for p in problems) for s in ("train", "val", "test")},
        versions=versions(),
        seconds=round(time.perf_counter() - started, 2),
        subset=subset,
        prepend_bos=config.prepend_bos,
        chat=config.chat,
        seed=task.seed,
        batch_size=config.batch_size,
    )
    return AccuracyGrid.from_scores(results, [problems[i] for i in keep], problems, record.to_dict())


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
