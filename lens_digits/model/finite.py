"""Non-finite numbers are found and named, never scored.

A model whose weights hold NaN or infinities (or whose activations overflow)
produces NaN residuals and logits; read by a lens, every top-1 is garbage and
every cell would silently be 0. Residual collection, the lenses' readout and
greedy decoding check what they compute and stop with a
:class:`~lens_digits.errors.NonFiniteError` naming the first layer column where
it happens and, when the weights themselves are not finite, the first such
parameter in the model's order.
"""

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from lens_digits.errors import NonFiniteError

_CHUNK = 1 << 24
"""Values checked at once (bounds the temporary mask for a large embedding)."""


def count_nonfinite(t: Tensor) -> int:
    """How many values of ``t`` are NaN or infinite (a chunk at a time: no full-size mask).

    Returns:
        The number of NaN or infinite values.
    """
    flat = t.detach().reshape(-1)
    return sum(int((~torch.isfinite(flat[s : s + _CHUNK])).sum()) for s in range(0, flat.numel(), _CHUNK))


def nonfinite_parameters(named: Iterable[tuple[str, Tensor]], limit: int = 3) -> list[str]:
    """The first ``limit`` parameters (in order) that hold NaN or infinite values, described as ``name (k of n values)``.

    Returns:
        One description per such floating-point parameter, at most ``limit``; empty if all are finite.
    """
    found = []
    for name, p in named:
        if not p.is_floating_point():
            continue
        bad = count_nonfinite(p)
        if bad:
            shown = name.replace("._original_component", "").replace("_original_component.", "")  # a bridge's wrapped names
            found.append(f"{shown} ({bad:,} of {p.numel():,} values)")
            if len(found) >= limit:
                break
    return found


def weights_note(modules: Any) -> str:
    """Why the numbers are not finite, for an error message: the first non-finite parameters, or that the weights are finite.

    ``modules``: a model, or a sequence of ``(prefix, module)`` pairs (the parts a readout uses).

    Returns:
        A clause naming the first non-finite parameters (a damaged or diverged checkpoint), or, if all
        weights are finite, saying that the activations overflow and what to try.
    """
    if isinstance(modules, Sequence):
        named = [(f"{prefix}.{n}" if prefix else n, p) for prefix, m in modules for n, p in m.named_parameters()]
    else:
        named = list(modules.named_parameters())
    bad = nonfinite_parameters(named)
    if bad:
        return f"the weights themselves are not finite: {', '.join(bad)}; the checkpoint is damaged or its training diverged"
    return "the weights are finite, so the activations overflow: load the model in float32 (--dtype float32), or check its inputs"


def first_bad_column(finite: Tensor) -> int | None:
    """The first layer column (axis 1 of a ``(problem, column)`` mask) where some problem is not finite; None if all are.

    Returns:
        The index of that column, or None if every value of ``finite`` is true.
    """
    bad = (~finite).any(0)
    return int(bad.nonzero()[0]) if bool(bad.any()) else None


def raise_nonfinite_residuals(model: Any, finite: Tensor, hook_names: Sequence[str], prompts: Sequence[str]) -> None:
    """Raise a :class:`NonFiniteError` for residuals that are not finite (``finite``: ``(problem, column)`` mask).

    Raises:
        NonFiniteError: Some residual is not finite; the message names the first such column, how many problems, a prompt and the weights.
    """
    column = first_bad_column(finite)
    if column is None:
        return
    rows = (~finite[:, column]).nonzero()[:, 0].tolist()
    example = prompts[rows[0]] if rows and rows[0] < len(prompts) else None
    raise NonFiniteError(
        f"the model's residual stream is not finite (NaN or infinite) at layer column {column} ({hook_names[column]}) in "
        f"{len(rows)} of {finite.shape[0]} problems" + (f", e.g. {example!r}" if example is not None else "") + f"; {weights_note(model)}"
    )


def check_finite(t: Tensor, what: str, fix: str) -> None:
    """Raise a :class:`NonFiniteError` naming ``what`` (and ``fix``) if ``t`` holds NaN or infinite values.

    Raises:
        NonFiniteError: ``t`` holds NaN or infinite values.
    """
    bad = count_nonfinite(t)
    if bad:
        raise NonFiniteError(f"{what} holds {bad:,} NaN or infinite value(s) of {t.numel():,}; {fix}")
