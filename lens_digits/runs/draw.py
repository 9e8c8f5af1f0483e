"""One draw of problems, start to finish: problems -> residuals (cached) -> greedy answers -> fitted and scored methods.

:func:`~lens_digits.runs.sweep.sweep` runs :func:`one_draw` once per seed and, for
several seeds, :func:`merge_draws`; ``lens-digits fit`` scores new methods on
a run's cached residuals with the same :func:`score_methods` and
:func:`merge_draws`. What the grid is made of, :class:`Draw`, is the same
either way.
"""

import dataclasses
import re
import warnings
from collections.abc import Sequence
from typing import Any, cast

import torch

from lens_digits._stack import user_stacklevel
from lens_digits.errors import BoundaryMergeError, LensDigitsError
from lens_digits.methods.base import Decoder, Intervention, Method, make_method
from lens_digits.methods.examples import breakdown_keys, example_rows
from lens_digits.methods.scores import Scores, Target, add_column_breakdown
from lens_digits.model.adapter import ModelAdapter
from lens_digits.model.greedy import greedy_answers
from lens_digits.problems.targets import EncodedProblem, encode_for_model
from lens_digits.problems.tasks import Problem, TaskConfig, generate_problems
from lens_digits.residuals.cache import ResidualCache
from lens_digits.residuals.collect import ResidualSet, collect_residuals, tokens_only
from lens_digits.runs.config import SweepConfig


@dataclasses.dataclass
class Draw:
    """One problem draw's scores: what :func:`sweep` aggregates into a grid."""

    results: list[tuple[str, str, Scores]]
    scored: list[Problem]
    problems: list[Problem]
    runs: dict[str, int]
    data: ResidualSet


def one_draw(
    adapter: ModelAdapter,
    task: TaskConfig,
    config: SweepConfig,
    used: list[Method],
    plan: dict[str, list[str]],
    cache: ResidualCache | None = None,
    key: dict[str, Any] | None = None,
) -> Draw:
    """Problems of one seed -> residuals (from the cache where it has them) -> fitted and scored methods.

    Returns:
        The draw: every method's scores per target, the scored test problems (annotated by interventions), all the
        problems (with the model's answers where it answered), how many problems the model ran on, and the residuals.

    Raises:
        BoundaryMergeError: The tokenizer merges the answer into the prompt; the message names the template and answer prefix.
        LensDigitsError: No test problems are left in ``config.subset``.
    """
    targets = list(config.targets)
    fits = any(getattr(d, "fits", False) for d in used) or config.cache_train
    problems = _generate(task, fits)
    try:
        encoded = encode_for_model(adapter, problems, prepend_bos=config.prepend_bos, chat=config.chat)
    except BoundaryMergeError as e:
        raise BoundaryMergeError(f"template {task.template!r} with answer prefix {task.answer_prefix!r}: {e}") from None
    _warn_unknown_tokens(adapter, problems, encoded)
    _warn_builtin_untrained(adapter, task)
    run = residual_rows(problems, fits)
    ran = set(run)  # prompts.jsonl says which problems the model saw (a lens-only run reads train tokens alone)
    problems = [dataclasses.replace(p, model_ran=i in ran) for i, p in enumerate(problems)]
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
    scored = test.select(keep)  # one object for both targets, so methods can reuse work across them
    tests = {"first": scored, "answer": scored}
    if own_data is not None:
        tests["model"] = own_data.select(keep)
    results = score_methods(adapter, used, plan, train, val, tests, task.seed)
    scored_problems = list(scored.problems)
    for d in used:
        if isinstance(d, Intervention):
            scored_problems = d.annotate(scored_problems)
            noted = {id(old): new for old, new in zip(scored.problems, scored_problems, strict=True)}
            problems = [noted.get(id(p), p) for p in problems]
    return Draw(results, scored_problems, problems, runs, data)


SHARED = re.compile(
    r"(?P<head>scale \d+ has only \d+ distinct \S+ problems) but (?P<asked>\d+) test, .*; "
    r"using (?P<test>\d+) test, (?P<train>\d+) train and \d+ validation, each once"
)


def _generate(task: TaskConfig, fits: bool) -> list[Problem]:
    """The task's problems; where a scale has too few, the warning names only the problems this sweep uses.

    A sweep whose methods all read test residuals (lenses, interventions) runs the model on test problems only, and
    reads the train problems' answers for the lenses' baseline: the validation problems are never used.

    Returns:
        The problems, as :func:`~lens_digits.problems.tasks.generate_problems` draws them.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        problems = generate_problems(task)
    for w in caught:
        text, match = str(w.message), SHARED.match(str(w.message))
        if match and not fits:
            text = (
                f"{match['head']}: using {match['test']} of the {match['asked']} test problems asked for, each once "
                f"(and {match['train']} train problems, whose answers give the lenses' baseline)"
            )
        warnings.warn(text, w.category, stacklevel=user_stacklevel())
    return problems


def residual_rows(problems: Sequence[Problem], fits: bool) -> list[int]:
    """The problems a sweep collects residuals of: the test problems, and train and validation ones for methods that fit.

    Split by split (each in the problems' order), so that each split's residuals are one run of rows: a view, not a copy.

    Returns:
        Indices into ``problems``: the test ones, then (if ``fits``) the train and validation ones.
    """
    splits = ("test", "train", "val") if fits else ("test",)
    return [i for split in splits for i, p in enumerate(problems) if p.split == split]


def residual_kind(targets: Sequence[str]) -> str:
    """``answer`` (teacher forcing: every answer position) when target ``answer`` is scored, else ``first`` (the last prompt position).

    Returns:
        ``"answer"`` or ``"first"``.
    """
    return "answer" if "answer" in targets else "first"


def build_methods(
    names: Sequence[str],
    adapter: ModelAdapter | None,
    settings: dict[str, Any],
    options: dict[str, dict[str, Any]] | None = None,
    given: Sequence[Method] = (),
) -> list[Method]:
    """The methods of a sweep or refit: instances ``given`` by name, the others built from their names.

    Each is built by :func:`~lens_digits.methods.base.make_method` from the sweep
    ``settings`` its class declares it uses, and its ``options``. Decoders come
    first, then interventions (which run the model on the test problems).

    Returns:
        The methods, in that order.
    """
    by_name = {m.name: m for m in given}
    built = [by_name.get(name) or make_method(name, adapter, settings, (options or {}).get(name)) for name in names]
    return [m for m in built if not isinstance(m, Intervention)] + [m for m in built if isinstance(m, Intervention)]


def score_methods(
    adapter: ModelAdapter | None,
    used: Sequence[Method],
    plan: dict[str, list[str]],
    train: ResidualSet,
    val: ResidualSet,
    tests: dict[str, ResidualSet],
    seed: int,
) -> list[tuple[str, str, Scores]]:
    """Fit each decoder on ``train`` and ``val`` and score it (interventions: run them) on each target's test set.

    ``adapter`` None (refitting from a residual cache) allows decoders only.

    Returns:
        ``(method, target, scores)`` for every method and target it reads.

    Raises:
        LensDigitsError: An intervention is to be scored without an ``adapter``.
    """
    results = []
    for d in used:
        if isinstance(d, Intervention):  # runs the model itself, on the test problems (their residuals are the sources)
            if adapter is None:
                raise LensDigitsError(f"method {d.name!r} runs the model; it cannot be scored from cached residuals alone")
            d.prepare(adapter, train, val)
            for t in plan[d.name]:
                results.append((d.name, t, _with_examples(d, t, d.score(adapter, tests[t], cast(Target, t)), tests[t], seed)))
            continue
        # A decoder that draws random numbers from torch's global generator gets the same ones on every run,
        # and the caller's generator is left as it was.
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []):
            torch.manual_seed(seed)
            assert isinstance(d, Decoder), d
            d.prepare(train, val)
            for t in plan[d.name]:
                results.append((d.name, t, _with_examples(d, t, d.score(tests[t], cast(Target, t)), tests[t], seed)))
    return results


def _with_examples(method: Method, target: str, scores: Scores, data: ResidualSet, seed: int) -> Scores:
    """``scores`` with the carry rows, and the method's example readings of a fixed sample of the problems its cells count.

    Called right after the method scored ``data`` (an intervention's examples are what that scoring found).

    Returns:
        ``scores`` itself, its ``breakdown`` and ``examples`` filled in.
    """
    scores = add_column_breakdown(scores, data.problems)
    rows = example_rows(data.problems, seed, None if scores.applies is None else scores.applies.tolist())
    found = method.examples(data, cast(Target, target), rows) if rows else None
    if found:
        where = {data.problems[r].prompt: r for r in rows}  # a draw's test prompts are distinct
        for e in found:
            e.rows = breakdown_keys(scores, where[e.problem.prompt])
        scores.examples = list(found)
    return scores


def merge_draws(draws: list[Draw], seeds: list[int]) -> Draw:
    """Several draws as one: each method's scores over all their test problems, with ``seed`` rows for each draw alone.

    Returns:
        The merged draw: the draws' problems in order, their model runs summed, and the first draw's residuals.
    """
    results = []
    sizes = [len(d.scored) for d in draws]
    which = torch.repeat_interleave(torch.arange(len(draws)), torch.tensor(sizes))
    for i, (name, target, _) in enumerate(draws[0].results):
        merged = Scores.concat([d.results[i][2] for d in draws])
        merged.breakdown["seed"] = {str(s): Scores(merged.correct, merged.metrics, applies=which == k) for k, s in enumerate(seeds)}
        for e in merged.examples:  # each draw's examples sit in its own seed row
            e.rows.append(f"seed={e.problem.seed}")
        results.append((name, target, merged))
    runs = {k: sum(d.runs[k] for d in draws) for k in draws[0].runs}
    return Draw(results, [p for d in draws for p in d.scored], [p for d in draws for p in d.problems], runs, draws[0].data)


def _warn_unknown_tokens(adapter: ModelAdapter, problems: Sequence[Problem], encoded: Sequence[EncodedProblem]) -> None:
    """Warn when the problems' text holds characters the tokenizer does not know (it reads them as its unknown token).

    The text is tokenized on its own, without special tokens: a tokenizer whose one special token serves as BOS,
    EOS and unknown alike (GPT-2, Pythia) puts it before every prompt, which is not an unknown character; and a
    byte-level vocabulary spells a space as ``Ġ``, so characters are looked up by tokenizing them, not by name.
    """
    tok = adapter.tokenizer
    unk = getattr(tok, "unk_token_id", None)
    if unk is None:
        return
    texts = [p.prompt + p.answer_prefix + p.answer for p in problems]
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    bad = [p for p, row in zip(problems, ids, strict=True) if unk in row]
    if bad:
        p = bad[0]
        chars = sorted({c for c in p.prompt + p.answer_prefix + p.answer if unk in tok(c, add_special_tokens=False)["input_ids"]})
        shown = f" (characters {''.join(chars)!r})" if chars else ""
        warnings.warn(
            f"{len(bad)} of {len(problems)} problems contain characters this tokenizer does not know{shown}, as in {p.prompt!r}: "
            "the model reads them as unknown; use a template it can read",
            stacklevel=user_stacklevel(),
        )


def _warn_builtin_untrained(adapter: ModelAdapter, task: TaskConfig) -> None:
    """Warn when the built-in model is asked for an operation or template it was not trained on."""
    from lens_digits.builtin import builtin_card, shipped_model
    from lens_digits.problems.tasks import TEMPLATES

    shipped = shipped_model(adapter.name)
    if shipped is None:
        return
    recipe = builtin_card(shipped)["recipe"]
    if not any(_same_operation(task.op, trained) for trained in recipe["ops"]):
        warnings.warn(
            f"the built-in model {shipped} was trained on {', '.join(recipe['ops'])} only, not {task.op!r}: expect a grid near 0 "
            "(train one with lens-digits train-model --ops ...)",
            stacklevel=user_stacklevel(),
        )
    if task.template != TEMPLATES["compact"] or task.few_shot or task.answer_prefix:
        warnings.warn(
            f"the built-in model {shipped} was trained on the compact template {TEMPLATES['compact']!r} alone, without few-shot "
            "examples or an answer prefix: other prompts read as nonsense to it",
            stacklevel=user_stacklevel(),
        )


def _same_operation(op: str, trained: str) -> bool:
    """Whether operation ``op`` writes and computes what ``trained`` does (a filtered ``add`` is still addition).

    Returns:
        True if both have the same symbol and results on a few operand pairs (or, if either is unregistered, the same name).
    """
    from lens_digits.problems.operations import OPERATIONS

    a, b = OPERATIONS.get(op), OPERATIONS.get(trained)
    if a is None or b is None:
        return op == trained
    pairs = [(0, 0), (3, 4), (9, 9), (47, 85), (12, 37), (999, 1), (5, 123)]
    try:
        return a.symbol == b.symbol and all(a.fn(x, y) == b.fn(x, y) for x, y in pairs)
    except Exception:  # a custom function that rejects some of these operands
        return False
