"""Fourier features of a lens's logits over the numbers (Zhou et al. 2024), per layer column and digit place (method ``fourier``).

At each answer position and layer column, a lens (the logit lens by default, or
the tuned lens: ``lens="tuned_lens"``) gives logits over the vocabulary; those
of the *candidate numbers*, in order of their value, form a signal ``x_0 ..
x_{N-1}``:

- the ten digit tokens ``0..9`` where the tokenizer writes one digit per token;
- the number tokens ``0..N-1`` where it has every one of them (``0..999`` for
  Llama-3's chunks, ``0..99`` where it has those): the largest power of ten
  whose numbers are all single tokens. Where the answer's tokens begin with a
  space (GPT-2 after ``=`` and a space), the space-led tokens are the candidates.

Its discrete Fourier transform ``X_k`` (``numpy.fft.fft``) spreads the signal's
energy over frequencies; frequency ``k`` has period ``N / k`` (``k`` and ``N -
k`` are the same period). The constant term (``k = 0``) is left out: a lens's
logits are defined up to a constant per position (TransformerLens centres
them). A cell reports the *share* of the remaining energy ``sum |X_k|^2`` at each
period of ``periods`` (default 2, 2.5, 5 and 10, the periods Zhou et al. find
in pretrained models) and the ``rest``: one ``period`` row each, the share in
column ``energy``. A period ``T`` with ``N / T`` not an integer has no
frequency of its own and gets share 0.

The accuracy of a cell is whether the candidate with the largest logit is the
gold token's number at every position read (target ``first``: the first answer
token; ``answer``: every answer token, teacher-forced, with ``place`` rows per
digit place or per answer token as the lenses have).
"""

import math
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from lens_digits.errors import LensDigitsError, NonFiniteError
from lens_digits.methods.base import Decoder, make_method, register_method
from lens_digits.methods.lenses.base import Lens
from lens_digits.methods.scores import Scores, Target
from lens_digits.problems.digits import place_name
from lens_digits.residuals.collect import ResidualSet

__all__ = ["FOURIER_PERIODS", "FourierFeatures", "energy_shares", "number_tokens"]

FOURIER_PERIODS = (2.0, 2.5, 5.0, 10.0)
"""The periods of Zhou et al. (2024)."""

REST = "rest"


def energy_shares(logits: Float[Tensor, "row number"], periods: Sequence[float | int]) -> Float[Tensor, "row period_and_rest"]:
    """Share of each row's spectral energy (constant term left out) at each period, then the rest.

    Returns:
        One column per period, then the rest's share (float64); NaN where a row is constant (it has no energy).

    >>> x = torch.cos(2 * math.pi * torch.arange(10) / 5)[None]
    >>> [round(v, 6) for v in energy_shares(x, [2, 5, 10])[0].tolist()]
    [0.0, 1.0, 0.0, 0.0]
    """
    x = logits.to(torch.float64)
    x = x - x.mean(-1, keepdim=True)  # the constant term, which is left out, removed exactly
    n = x.shape[-1]
    power = torch.fft.fft(x, dim=-1).abs() ** 2  # (row, N)
    k = torch.arange(n)
    folded = torch.minimum(k, n - k).double()  # k and N - k share a period
    total = power[:, 1:].sum(-1)
    cols = []
    for period in periods:
        f = n / float(period)
        hit = (
            (folded - f).abs() < 1e-9
            if f > 0 and abs(f - round(f)) < 1e-9 and 1 <= round(f) <= n // 2
            else torch.zeros(n, dtype=torch.bool)
        )
        cols.append(power[:, hit].sum(-1))
    total = torch.where(total > 0, total, torch.nan)  # a constant row has no energy to share
    share = torch.stack(cols, dim=1) / total[:, None]
    rest = 1 - share.sum(-1, keepdim=True)
    return torch.cat([share, rest], dim=1)


def number_tokens(tokenizer: Any, space: bool = False, limits: Sequence[int] = (1000, 100, 10)) -> list[int]:
    """The token ids of the numbers ``0..N-1`` for the largest ``N`` of ``limits`` whose numbers are each one token.

    ``space``: the numbers with a leading space (``" 7"``), as GPT-2 writes an answer after ``=`` and a space.

    Returns:
        The ids, in order of value.

    Raises:
        LensDigitsError: Not even the ten digits are single tokens.
    """
    for limit in limits:
        ids = []
        for value in range(limit):
            got = tokenizer((" " if space else "") + str(value), add_special_tokens=False)["input_ids"]
            if len(got) != 1:
                break
            ids.append(got[0])
        else:
            return ids
    style = "with a leading space " if space else ""
    raise LensDigitsError(f"the tokenizer has no single token {style}for each digit 0-9; the fourier reading needs them")


@register_method
class FourierFeatures(Decoder):
    """The Fourier spectrum of a lens's logits over the candidate numbers, per layer column (see the module docstring).

    Args:
        lens: The lens whose logits are read (built with :meth:`from_model`).
        periods: The periods reported (any positive numbers; default 2, 2.5, 5, 10).
    """

    name = "fourier"
    targets = ("first", "answer")
    needs_model = True
    fits = False  # the lens reads the train problems' tokens (the tuned lens runs the model on them)
    uses = {"norm": "norm", "seed": "seed", "progress": "progress", "within": "within"}

    def __init__(self, lens: Lens, periods: Sequence[float | int] = FOURIER_PERIODS) -> None:
        """Read through ``lens``.

        Raises:
            LensDigitsError: ``lens`` has no tokenizer, or a period is not a positive number.
        """
        from lens_digits.methods.probes.helix import check_periods

        if lens.tokenizer is None:
            raise LensDigitsError("the fourier reading needs the model's tokenizer (to find the number tokens)")
        self.lens, self.periods = lens, check_periods(periods)
        self._ids: dict[bool, list[int]] = {}

    @classmethod
    def from_model(  # type: ignore[override]
        cls,
        model: Any,
        lens: str = "logit_lens",
        periods: Sequence[float | int] = FOURIER_PERIODS,
        norm: str = "final",
        lens_options: dict[str, Any] | None = None,
        **settings: Any,
    ) -> "FourierFeatures":
        """The reading through ``model``'s lens ``lens`` (``logit_lens``, ``tuned_lens`` or another registered lens).

        ``settings`` are the sweep's (seed, progress, within), passed to the lens if it uses them.

        Returns:
            The reading.

        Raises:
            LensDigitsError: ``model`` is None, or ``lens`` names no lens.
        """
        if model is None:
            raise LensDigitsError("the fourier reading reads through the model's unembedding: give the model")
        from lens_digits.methods.base import method_class

        cls_lens = method_class(lens)
        if not issubclass(cls_lens, Lens):
            raise LensDigitsError(f"the fourier reading reads a lens's logits; {lens!r} is not a lens (try logit_lens or tuned_lens)")
        given = {"norm": norm, **settings}
        built = make_method(lens, model, given, lens_options)  # the lens's from_model wraps the model
        assert isinstance(built, Lens)
        return cls(built, periods)

    def fit(self, train: ResidualSet, val: ResidualSet) -> None:
        """Prepare the lens (the tuned lens trains here)."""
        self.lens.prepare(train, val)

    def candidates(self, space: bool) -> list[int]:
        """The candidate number tokens, plain or with a leading space (cached).

        Returns:
            Their ids, in order of value.
        """
        if space not in self._ids:
            self._ids[space] = number_tokens(self.lens.tokenizer, space)
        return self._ids[space]

    @torch.inference_mode()
    def spectra(self, data: ResidualSet, n_pos: int) -> tuple[Tensor, Tensor]:
        """Energy shares and whether the top candidate is the gold number, per problem, layer column and answer position.

        Returns:
            ``(shares, right)`` of shapes (problem, layer, position, period + rest) and (problem, layer, position);
            positions past an answer's end hold NaN shares and True.

        Raises:
            NonFiniteError: The lens's logits are NaN or infinite at some layer column.
            LensDigitsError: The tokenizer has no single token for each digit.
        """
        text = self.lens.token_text
        gold = data.target_ids[:, :n_pos].cpu()
        n, n_cols = len(data), data.n_columns
        shares = torch.full((n, n_cols, n_pos, len(self.periods) + 1), math.nan, dtype=torch.float64)
        right = torch.ones(n, n_cols, n_pos, dtype=torch.bool)
        for pos in range(n_pos):
            real = (gold[:, pos] >= 0).nonzero()[:, 0]
            if not len(real):
                continue
            spaced = torch.tensor([text(int(gold[i, pos])).startswith(" ") for i in real.tolist()])
            for space in (False, True):
                rows = real[spaced == space]
                if not len(rows):
                    continue
                ids = torch.tensor(self.candidates(space))
                want = torch.tensor([_value(text(int(gold[i, pos]))) for i in rows.tolist()])
                for layer in range(n_cols):
                    logits = self.lens.layer_logits(data.resid[rows.to(data.resid.device), layer, pos], layer)[:, ids.to(data.resid.device)]
                    logits = logits.float().cpu()
                    if not bool(torch.isfinite(logits).all()):
                        raise NonFiniteError(
                            f"the {self.lens.name}'s logits are not finite (NaN or infinite) at layer column {layer}; check the weights"
                        )
                    shares[rows, layer, pos] = energy_shares(logits, self.periods)
                    right[rows, layer, pos] = logits.argmax(-1) == want
        return shares, right

    def score(self, data: ResidualSet, target: Target) -> Scores:
        """Top-candidate accuracy, with ``period`` rows (column ``energy``) and, for ``answer``, ``place`` rows.

        Returns:
            The scores per problem and layer column.

        Raises:
            LensDigitsError: ``target`` is not one it reads.
        """
        if target not in self.targets:
            raise LensDigitsError(f"the fourier reading reads targets {list(self.targets)}, not {target!r}")
        n_pos = 1 if target == "first" else data.target_ids.shape[1]
        shares, right = self.spectra(data, n_pos)
        labels = [_label(p) for p in self.periods] + [REST]
        main = self._scores(right.all(-1), shares.nanmean(2), labels)
        if target == "answer":
            main.breakdown["place"] = self._places(data, shares, right, labels)
        return main

    def _scores(self, correct: Tensor, shares: Tensor, labels: list[str], applies: Tensor | None = None) -> Scores:
        rows = {lab: Scores(correct, {"energy": shares[..., j]}, applies=applies) for j, lab in enumerate(labels)}
        return Scores(correct, {}, {"period": rows}, applies)

    def _places(self, data: ResidualSet, shares: Tensor, right: Tensor, labels: list[str]) -> dict[str, Scores]:
        gold = data.target_ids.cpu()
        digits = [[sum(c.isdigit() for c in self.lens.token_text(t)) for t in row if t >= 0] for row in gold.tolist()]
        by_place = all(d <= 1 for row in digits for d in row)
        out: dict[str, Scores] = {}
        for r in range(gold.shape[1]):
            pick = torch.full((len(data),), -1, dtype=torch.long)
            for i, row in enumerate(digits):
                if by_place:  # the token holding digit place r
                    places = [sum(row[j + 1 :]) for j in range(len(row))]
                    pick[i] = next((j for j, (d, p) in enumerate(zip(row, places, strict=True)) if d and p == r), -1)
                elif r < len(row):
                    pick[i] = r
            has = pick >= 0
            if not bool(has.any()):
                continue
            at = pick.clamp(min=0)
            ok = right[torch.arange(len(data)), :, at] & has[:, None]
            sh = shares[torch.arange(len(data)), :, at]
            out[place_name(r) if by_place else f"token {r + 1}"] = self._scores(ok, sh, labels, has)
        return out

    def settings(self) -> dict[str, Any]:
        """The lens and its settings, the periods and the candidate numbers, for ``run.json``.

        Returns:
            The settings, JSON-ready.
        """
        found = {("space" if k else "plain"): len(v) for k, v in self._ids.items()}
        return {"lens": self.lens.name, "lens_settings": self.lens.settings(), "periods": list(self.periods), "candidates": found}


def _label(period: float) -> str:
    """A period as a row label: ``2``, ``2.5``.

    Returns:
        The shortest decimal text of the period.
    """
    return f"{period:g}"


def _value(text: str) -> int:
    """The number a token's text spells (-1 where it is not one).

    Returns:
        The integer, or -1.
    """
    text = text.strip()
    return int(text) if text.isdigit() else -1
