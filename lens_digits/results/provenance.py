"""What a run was, from its ``run.json``: the report's header (model, task, readout, versions, command), as HTML."""

import html
from pathlib import PurePath
from typing import Any

__all__ = ["provenance", "provenance_html"]


def _join(values: Any) -> str:
    if isinstance(values, (list, tuple)):
        return ", ".join(str(v) for v in values)
    return "" if values is None else str(values)


def _count(n: Any) -> str:
    return f"{n:,}" if isinstance(n, int) and not isinstance(n, bool) else _join(n)


def provenance(info: dict[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The facts of a run record worth a header, grouped: model, task, reading, software, run.

    Facts the record does not hold (an older run, a grid made in Python) are left out.

    Returns:
        ``(group, [(name, value), ...])`` pairs, values as plain text.

    >>> dict(provenance({"model": {"name": "m", "n_layers": 4}})[0][1])
    {'name': 'm', 'layers': '4'}
    """
    model = info.get("model") or {}
    task = info.get("task") or {}
    sweep = info.get("sweep") or {}
    versions = info.get("versions") or {}
    bos = (info.get("encoding") or {}).get("bos") or {}
    n_params = model.get("n_params") or (info.get("study") or {}).get("n_params")
    weights = str(model.get("weights") or "")
    groups: list[tuple[str, list[tuple[str, Any]]]] = [
        (
            "model",
            [
                ("name", shown_model_name(model.get("name"))),
                ("parameters", _count(n_params) if n_params else None),
                ("layers", model.get("n_layers")),
                ("width", model.get("d_model")),
                ("vocabulary", model.get("d_vocab")),
                ("kind", model.get("kind")),
                ("weights fingerprint", weights[:16] if weights else None),
                ("dtype", model.get("dtype")),
                ("device", model.get("device")),
            ],
        ),
        (
            "task",
            [
                ("operation", task.get("op")),
                ("template", repr(task["template"]) if "template" in task else None),
                ("digit scales", _join(task.get("scales"))),
                ("test problems per scale", task.get("n_per_scale")),
                ("train / validation per scale", f"{task['n_train']} / {task['n_val']}" if task.get("n_train") is not None else None),
                ("seeds", _join(sweep.get("seeds")) if sweep.get("seeds") else task.get("seed")),
                ("few-shot examples", task.get("few_shot") or None),
                ("answer prefix", repr(task["answer_prefix"]) if task.get("answer_prefix") else None),
            ],
        ),
        (
            "reading",
            [
                ("methods", _join(sweep.get("methods"))),
                ("targets", _join(info.get("targets"))),
                ("subset", sweep.get("subset")),
                ("lens norm", sweep.get("norm")),
                ("BOS", (f"prepended ({bos.get('token')})" if bos.get("prepended") else "none") if bos else None),
                ("chat template", "yes" if sweep.get("chat") else None),
            ],
        ),
        (
            "software",
            [(name, versions.get(name)) for name in ("lens-digits", "transformer-lens", "torch", "transformers", "plotly", "python")],
        ),
        (
            "run",
            [
                ("command", info.get("command") or ("made in Python (run_sweep)" if info.get("versions") else None)),
                ("seconds", info.get("seconds")),
                ("refits", "; ".join(f"{_join(r.get('methods'))} at {r.get('when')}" for r in info.get("refits") or []) or None),
            ],
        ),
    ]
    out = []
    for group, facts in groups:
        kept = [(name, _join(value)) for name, value in facts if value not in (None, "")]
        if kept:
            out.append((group, kept))
    return out


def provenance_html(info: dict[str, Any]) -> str:
    """The header of one run: its :func:`provenance` as definition lists, one per group.

    Returns:
        HTML (every value escaped); a note where the record holds nothing.
    """
    groups = provenance(info)
    if not groups:
        return '<p class="none">no run record (run.json) for this grid</p>'
    parts = []
    for group, facts in groups:
        rows = "".join(f"<dt>{html.escape(name)}</dt><dd>{html.escape(value)}</dd>" for name, value in facts)
        parts.append(f'<div class="facts"><h3>{html.escape(group)}</h3><dl>{rows}</dl></div>')
    return "".join(parts)


def shown_model_name(name: Any) -> Any:
    """A model's name as a page shows it: a shipped model as ``builtin:NAME``, not the path of the package it ran from.

    Returns:
        ``builtin:arith-llama-28`` for a path ending in ``lens_digits/builtin/arith-llama-28`` (on any machine), else ``name``.

    >>> shown_model_name("/site-packages/lens_digits/builtin/arith-llama-28"), shown_model_name("gpt2")
    ('builtin:arith-llama-28', 'gpt2')
    """
    from lens_digits.builtin import MODELS

    parts = PurePath(str(name)).parts if name else ()
    if len(parts) >= 3 and parts[-3:-1] == ("lens_digits", "builtin") and parts[-1] in MODELS:
        return f"builtin:{parts[-1]}"
    return name
