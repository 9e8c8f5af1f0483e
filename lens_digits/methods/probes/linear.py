"""Linear probes per digit place, fitted for every layer at once by one batched solver.

A probe reads the residual at the last prompt position (position 0 of a
:class:`~lens_digits.residuals.collect.ResidualSet`, before any answer token) and
predicts one digit place of the answer (units, tens, hundreds, ...) with a
10-way multinomial logistic regression. There is one probe per (group, layer,
place), where a group is a digit scale (``scope="per_scale"``) or all scales
together (``scope="pooled"``, one probe set evaluated per scale).

Recipe, per group:

- Labels: the digits of ``|answer|`` (the sign of a negative answer is not
  probed), padded with leading zeros to the group's width (the longest answer
  among its train and validation problems), so "every place right" is "the
  whole number right".
- Features: standardised with the mean and standard deviation of the group's
  *train* problems (population std; a constant feature keeps scale 1).
- Objective, as scikit-learn's ``LogisticRegression(C=C)`` with lbfgs: mean
  cross-entropy plus ``||W||^2 / (2 C n_train)``; the intercept is not
  penalised. Digits never seen among a group's train labels are never predicted.
- Every C of the grid is fitted; for each (group, layer, place) the C with the
  lowest validation cross-entropy is kept (values within float32 noise of it
  are ties: the smaller C wins). Test problems are only ever scored.
- Control task (in the sense of Hewitt and Liang 2019): the same operation on the
  operands with every digit relabelled by a fixed random permutation (drawn
  with the seed; ``47+85`` becomes ``π(4)π(7)+π(8)π(5)``), and its answer's
  digits as labels. It is a random but consistent function of the operands,
  built exactly like the task, so a model with random weights (whose digit
  embeddings are exchangeable) makes it exactly as easy to read as the real
  answer; a trained model computes the real answer and not this one. A probe
  scores on it only by reading operand identity out of the residual, so
  accuracy above the control (selectivity) is the answer itself, not the
  operands it comes from.
- Chance: the accuracy of always answering the train problems' most common
  label (per scale; per place for the place rows).

All cells (groups x C x layers x places, control included) are solved together
by :func:`fit_multinomial`, a batched L-BFGS with per-cell curvature history,
step sizes and stopping, running on the residuals' device.
"""

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lens_digits._stack import user_stacklevel
from lens_digits.errors import LensDigitsError
from lens_digits.methods.base import Decoder, register_method
from lens_digits.methods.probes.design import design
from lens_digits.methods.probes.examples import ProbeExamples
from lens_digits.methods.probes.files import ProbeRecord
from lens_digits.methods.probes.labels import control_labels, covered_places, digit_permutation, first_token_digits, majority_labels
from lens_digits.methods.probes.optim import SolverResult, fit_augmented
from lens_digits.methods.probes.weights import ProbeWeights, choose_strengths, default_c_index
from lens_digits.methods.scores import Scores, Target
from lens_digits.model.finite import check_finite
from lens_digits.problems.digits import N_DIGITS, answer_digits, digit_labels, place_name
from lens_digits.problems.tasks import Problem
from lens_digits.residuals.collect import ResidualSet

DEFAULT_CS = (0.01, 0.1, 1.0, 10.0)


@register_method
class LinearProbe(ProbeRecord, ProbeExamples, Decoder):
    """10-way linear probes per digit place, for every layer, chosen on validation problems.

    ``correct`` for target ``answer`` is "every place right" (the whole number,
    leading zeros included); for target ``first`` it is "every place the first
    answer token covers right" (see :func:`first_token_digits`). Metrics per
    cell: ``chance`` (accuracy of always answering the most common label of the
    scale's train problems), ``control`` (accuracy of the same recipe on the
    control task, see the module docstring) and ``selectivity`` (accuracy
    minus control). The ``place`` breakdown gives the same per digit place.

    After :meth:`fit`, :attr:`weights` holds the probes (:class:`ProbeWeights`),
    :attr:`control_weights` the control probes and :attr:`group_scales` the
    scales of each group.

    >>> import lens_digits as ld
    >>> grid = ld.run_sweep(ld.testing.tiny_model(), scales=[1], n_per_scale=40, methods=["probe"], target="first")
    >>> sorted(grid.to_dataframe()["place"].unique())
    ['all', 'tens', 'units']
    """

    name = "probe"
    uses = {"probe_scope": "scope", "probe_max_iter": "max_iter", "seed": "seed", "progress": "progress"}
    targets = ("first", "answer")
    fits = True

    def __init__(
        self,
        scope: Literal["per_scale", "pooled"] = "per_scale",
        Cs: Sequence[float] = DEFAULT_CS,
        seed: int = 0,
        max_iter: int = 1000,
        tol: float = 1e-6,
        device: str | torch.device | None = None,
        *,
        control: bool = True,
        history: int = 10,
        max_bytes: int | None = None,
        progress: bool = False,
    ) -> None:
        """Set up an unfitted probe.

        Args:
            scope: ``per_scale``: separate probes for each digit scale; ``pooled``:
                one probe set fitted on all scales (evaluated per scale).
            Cs: Inverse L2 strengths to choose from (scikit-learn's ``C``).
            seed: Seed of the control task's lookup tables.
            max_iter: L-BFGS iteration cap per probe.
            tol: Stop a probe when the max-abs gradient of its mean objective is below this. The default, 1e-6, lets
                most fits run to the precision of float32 (where they stop as stalled), so that residuals that differ
                in their last bits (other batch sizes) give the same probes' predictions.
            device: Where to fit and score (default: where the train residuals are).
            control: Also fit probes on the control task (doubles the work).
            history: L-BFGS memory.
            max_bytes: Working-memory budget of the solver; layers are solved in chunks that fit it
                (default: the size of the standardised train residuals it fits on, at least 512 MiB).
            progress: Show the solver's iterations.

        Raises:
            LensDigitsError: ``scope``, ``Cs``, ``max_iter``, ``tol`` or ``history`` is out of range.
        """
        if scope not in ("per_scale", "pooled"):
            raise LensDigitsError(f"scope must be 'per_scale' or 'pooled', got {scope!r}")
        cs = sorted({float(c) for c in Cs})
        if not cs or any(not (c > 0 and math.isfinite(c)) for c in cs):
            raise LensDigitsError(f"Cs must be positive finite numbers, got {list(Cs)}")
        if not isinstance(max_iter, int) or max_iter < 1:
            raise LensDigitsError(f"max_iter must be a positive integer, got {max_iter!r}")
        if not tol > 0:
            raise LensDigitsError(f"tol must be positive, got {tol!r}")
        if not isinstance(history, int) or history < 1:
            raise LensDigitsError(f"history must be a positive integer, got {history!r}")
        self.scope = scope
        self.Cs = cs
        self.seed = int(seed)
        self.max_iter = max_iter
        self.tol = float(tol)
        self.device = None if device is None else torch.device(device)
        self.control = bool(control)
        self.history = history
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self.progress = bool(progress)
        self._weights: ProbeWeights | None = None
        self._control: ProbeWeights | None = None
        self.group_scales: list[list[int]] = []
        self.n_places: list[int] = []
        self.fit_info: dict[str, Any] = {}
        self.control_perm: list[int] | None = None
        self.train_labels: list[tuple[int, str, int]] = []

    # ---- fitted state ------------------------------------------------------------------------

    @property
    def weights(self) -> ProbeWeights:
        """The fitted probes (raises before :meth:`fit`).

        Raises:
            LensDigitsError: The probe is not fitted yet.
        """
        if self._weights is None:
            raise LensDigitsError("the probe is not fitted yet: call fit(train, val) or LinearProbe.load(path)")
        return self._weights

    @property
    def control_weights(self) -> ProbeWeights | None:
        """The control-task probes (None when ``control=False``)."""
        self.weights  # noqa: B018 - raise if unfitted
        return self._control

    @property
    def place_names(self) -> list[str]:
        """Names of the probed places, units first."""
        return [place_name(p) for p in range(self.weights.W.shape[2])]

    def group_of(self, problems: Sequence[Problem]) -> list[int]:
        """Index of the probe group that reads each problem.

        Returns:
            One group index per problem.

        Raises:
            LensDigitsError: No probe was fitted for a problem's digit scale.
        """
        index = {s: g for g, scales in enumerate(self.group_scales) for s in scales}
        if self.scope == "pooled":
            return [0] * len(problems)
        missing = sorted({p.scale for p in problems} - set(index))
        if missing:
            raise LensDigitsError(f"no probe was fitted for digit scale(s) {missing}; fitted scales: {sorted(index)}")
        return [index[p.scale] for p in problems]

    # ---- fit -------------------------------------------------------------------------------------

    def fit(self, train: ResidualSet, val: ResidualSet) -> None:
        """Fit every probe on ``train`` and choose each one's C on ``val``.

        Raises:
            LensDigitsError: ``train`` is empty.
            NonFiniteError: The fitted weights or intercepts are not finite.
        """
        if len(train) == 0:
            raise LensDigitsError("probes need train problems; the train split is empty")
        device = self.device or train.resid.device
        scales = sorted({p.scale for p in train.problems})
        self.group_scales = [scales] if self.scope == "pooled" else [[s] for s in scales]
        self.n_places = []
        n_groups, n_layers, dim = len(self.group_scales), train.n_columns, train.resid.shape[-1]
        tr_group = torch.tensor(self.group_of(train.problems))
        val_keep = [i for i, p in enumerate(val.problems) if any(p.scale in s for s in self.group_scales)]
        val = val.select(val_keep)
        va_group = torch.tensor(self.group_of(val.problems), dtype=torch.long)
        for g in range(n_groups):
            answers = [p.answer for i, p in enumerate(train.problems) if tr_group[i] == g]
            answers += [p.answer for i, p in enumerate(val.problems) if va_group[i] == g]
            self.n_places.append(max(len(answer_digits(a)) for a in answers))
        n_places = max(self.n_places)
        n_tasks = 2 if self.control else 1

        self.control_perm = digit_permutation(self.seed) if self.control else None
        self.train_labels = [(p.scale, p.answer, k) for p, k in zip(train.problems, first_token_digits(train), strict=True)]
        tr_labels = digit_labels([p.answer for p in train.problems], n_places)
        if self.control_perm is not None:
            tr_labels = torch.cat([tr_labels, control_labels(train.problems, self.control_perm, n_places)], 1)
        x, sw, labels, mean, std, classes = design(train, tr_group, n_groups, tr_labels, device)

        res = self.solve(
            einops.rearrange(x, "group layer n d -> (group layer) n d"),  # one block per (group, layer)
            einops.repeat(labels, "group n task -> (group layer) n task", layer=n_layers),
            einops.repeat(sw, "group n -> (group layer) n", layer=n_layers),
            einops.repeat(classes, "group task digit -> (group layer) task digit", layer=n_layers),
        )
        del x
        n_c = len(self.Cs)
        W = res.W.view(n_groups, n_layers, n_c, n_tasks * n_places, dim, N_DIGITS)
        b = res.b.view(n_groups, n_layers, n_c, n_tasks * n_places, N_DIGITS)
        classes = classes.to(device)

        # Choose C per (group, layer, place) on validation problems.
        va_labels = digit_labels([p.answer for p in val.problems], n_places)
        if self.control_perm is not None:
            va_labels = torch.cat([va_labels, control_labels(val.problems, self.control_perm, n_places)], 1)
        chosen, empty = choose_strengths(W, b, mean, std, classes, val, va_group, va_labels, default_c_index(self.Cs))
        no_val = [self.group_scales[g] for g in empty]
        if no_val:
            warnings.warn(
                f"no validation problems for scale group(s) {no_val}: using C={self.Cs[default_c_index(self.Cs)]} there",
                stacklevel=user_stacklevel(),
            )
        kept = ProbeWeights.chosen(W, b, mean, std, classes, chosen.to(device), self.Cs)
        for name, t in (("weights", kept.W), ("intercepts", kept.b)):
            check_finite(
                t, f"the fitted {self.name}'s {name}", "the residuals or the solver overflowed; report this with the run's settings"
            )
        self._weights = kept.places(slice(0, n_places))
        self._control = kept.places(slice(n_places, 2 * n_places)) if self.control else None
        self.fit_info = {
            "n_train": [int((tr_group == g).sum()) for g in range(n_groups)],
            "n_val": [int((va_group == g).sum()) for g in range(n_groups)],
        } | res.summary(self.max_iter)
        if self.fit_info["hit_max_iter"]:
            warnings.warn(
                f"{self.fit_info['hit_max_iter']} of {self.fit_info['n_fits']} probe fits (all C, layers, places) reached "
                f"max_iter={self.max_iter} before max|grad| <= {self.tol}; C is still chosen on validation problems, "
                "raise max_iter (--max-iter) for tighter fits",
                stacklevel=user_stacklevel(),
            )

    def solve(
        self,
        x: Float[Tensor, "block problem d_model_1"],
        labels: Int[Tensor, "block problem task"],
        sample_weight: Float[Tensor, "block problem"],
        classes: Bool[Tensor, "block task digit"],
    ) -> SolverResult:
        """Fit every (block, C, task) cell: 10-way logistic regressions by the batched L-BFGS of :mod:`lens_digits.methods.probes.optim`.

        ``x`` holds standardised features with a last column of ones (the
        intercept); rows of weight 0 are padding. Subclasses with another model
        of the digits (:class:`CircularProbe`) override this alone.

        Returns:
            The parameters and convergence of every cell.
        """
        return fit_augmented(
            x,
            labels,
            self.Cs,
            sample_weight=sample_weight,
            classes=classes,
            n_classes=N_DIGITS,
            max_iter=self.max_iter,
            tol=self.tol,
            history=self.history,
            max_ls=25,
            max_bytes=self.max_bytes,
            progress=self.progress,
        )

    # ---- score -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def predict(self, data: ResidualSet, control: bool = False) -> Int[Tensor, "problem layer place"]:
        """Predicted digit of every place, units first, for every problem and layer.

        Returns:
            The digits, of shape (problem, layer column, place).

        Raises:
            LensDigitsError: Not fitted, no control probes (``control=True``), another layer count, or a scale with no probe.
        """
        weights = self.weights if not control else self.control_weights
        if weights is None:
            raise LensDigitsError("this probe was fitted with control=False")
        groups = torch.tensor(self.group_of(data.problems), dtype=torch.long)
        out = torch.zeros(len(data), data.n_columns, weights.W.shape[2], dtype=torch.long)
        if data.n_columns != weights.W.shape[1]:
            raise LensDigitsError(f"the probes have {weights.W.shape[1]} layers but the residuals {data.n_columns}")
        for g in range(len(self.group_scales)):
            r = torch.nonzero(groups == g)[:, 0]
            if len(r):
                feats = data.resid[r.to(data.resid.device), :, 0, :]
                out[r] = weights.logits(feats, g).argmax(-1).cpu()
        return out

    def score(self, data: ResidualSet, target: Target) -> Scores:
        """Per-problem, per-layer correctness with chance, control and a per-place breakdown.

        ``chance`` is 1 where the problem's label is the most common label among
        the train problems of its scale (so a cell's mean is the accuracy of always
        answering that label); ``control`` is the control probes' accuracy on the
        control task's test labels; ``selectivity`` is accuracy minus control.

        Returns:
            Correctness per problem and layer column, with those metrics and the ``place`` breakdown.

        Raises:
            LensDigitsError: ``target`` is not one the probe supports, the probe is not fitted, or a scale has no probe.
        """
        if target not in self.targets:
            raise LensDigitsError(f"unknown target {target!r}; probes support {list(self.targets)}")
        n, n_layers = len(data), data.n_columns
        n_places = self.weights.W.shape[2]
        lengths = [len(answer_digits(p.answer)) for p in data.problems]
        train_answers = [a for _, a, _ in self.train_labels]
        width = max([n_places, *lengths, *(len(answer_digits(a)) for a in train_answers)])
        labels = digit_labels([p.answer for p in data.problems], width)  # (n, width)
        pred = torch.zeros(n, n_layers, width, dtype=torch.long)
        pred[..., :n_places] = self.predict(data)
        groups = self.group_of(data.problems)
        ctrl_ok = None
        if self._control is not None and self.control_perm is not None:
            ctrl = torch.zeros_like(pred)
            ctrl[..., :n_places] = self.predict(data, control=True)
            ctrl_labels = labels.clone()
            ctrl_labels[:, :n_places] = control_labels(data.problems, self.control_perm, n_places)
            ctrl_ok = ctrl == ctrl_labels[:, None]  # (n, L, width)
        covered = covered_places(target, lengths, first_token_digits(data) if target == "first" else None, width)
        scales = [p.scale for p in data.problems]
        tr_scales = [s for s, _, _ in self.train_labels]
        tr_labels = digit_labels(train_answers, width)
        tr_lengths = [len(answer_digits(a)) for a in train_answers]
        tr_covered = covered_places(target, tr_lengths, [k for _, _, k in self.train_labels] if target == "first" else None, width)

        def scores(cover: Tensor, tr_cover: Tensor, applies: Tensor | None = None) -> Scores:
            ok = ((pred == labels[:, None]) | ~cover[:, None]).all(-1)  # (n, L)
            majority = majority_labels(tr_labels, tr_cover, tr_scales)
            keys = [tuple(row[c].tolist()) for row, c in zip(labels, cover, strict=True)]
            chance = torch.tensor([float(majority.get(s) == k) for k, s in zip(keys, scales, strict=True)])
            metrics = {"chance": chance[:, None].expand(n, n_layers).clone()}
            if ctrl_ok is not None:
                c_ok = (ctrl_ok | ~cover[:, None]).all(-1)
                metrics["control"] = c_ok.float()
                metrics["selectivity"] = ok.float() - c_ok.float()
            return Scores(ok, metrics, applies=applies)

        main = scores(covered, tr_covered)
        group_places = torch.tensor(self.n_places)[torch.tensor(groups, dtype=torch.long)]  # (n,)
        places = {}
        for p in range(n_places):
            cover = torch.zeros(n, width, dtype=torch.bool)
            cover[:, p] = True
            tr_cover = torch.zeros(len(train_answers), width, dtype=torch.bool)
            tr_cover[:, p] = True
            places[place_name(p)] = scores(cover, tr_cover, applies=group_places > p)
        main.breakdown = {"place": places}
        return main
