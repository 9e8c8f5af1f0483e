"""Linear probes per digit place, fitted for every layer at once by one batched solver.

A probe reads the residual at the last prompt position (position 0 of a
:class:`~lens_digits.residuals.ResidualSet`, before any answer token) and
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
  best validation accuracy is kept (ties: lower validation cross-entropy, then
  smaller C). Test problems are only ever scored.
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
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lens_digits.decoders.base import Decoder, Scores, Target, register_decoder
from lens_digits.decoders.labels import (
    N_DIGITS,
    answer_digits,
    control_labels,
    covered_places,
    digit_labels,
    digit_permutation,
    first_token_digits,
    majority_labels,
    place_name,
)
from lens_digits.decoders.probe_weights import ProbeWeights, best_strength, default_c_index, load_weights, save_weights
from lens_digits.errors import LensDigitsError
from lens_digits.finite import check_finite
from lens_digits.optim import SolverResult, fit_augmented
from lens_digits.residuals import ResidualSet
from lens_digits.tasks import Problem

DEFAULT_CS = (0.01, 0.1, 1.0, 10.0)


@register_decoder
class LinearProbe(Decoder):
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
                (default: the size of the standardised train residuals it fits on).
            progress: Show the solver's iterations.
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
        """The fitted probes (raises before :meth:`fit`)."""
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
        """Index of the probe group that reads each problem."""
        index = {s: g for g, scales in enumerate(self.group_scales) for s in scales}
        if self.scope == "pooled":
            return [0] * len(problems)
        missing = sorted({p.scale for p in problems} - set(index))
        if missing:
            raise LensDigitsError(f"no probe was fitted for digit scale(s) {missing}; fitted scales: {sorted(index)}")
        return [index[p.scale] for p in problems]

    # ---- fit -------------------------------------------------------------------------------------

    def fit(self, train: ResidualSet, val: ResidualSet) -> None:
        """Fit every probe on ``train`` and choose each one's C on ``val``."""
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

        # Standardised train features, groups padded to the largest with zero-weight rows.
        rows = [torch.nonzero(tr_group == g)[:, 0] for g in range(n_groups)]
        n_max = max(len(r) for r in rows)
        x = torch.zeros(n_groups, n_layers, n_max, dim + 1, device=device)  # last column: the intercept's ones
        x[..., dim] = 1
        sw = torch.zeros(n_groups, n_max, device=device)
        labels = torch.zeros(n_groups, n_max, n_tasks * n_places, dtype=torch.long)
        mean = torch.zeros(n_groups, n_layers, dim, device=device)
        std = torch.ones(n_groups, n_layers, dim, device=device)
        tr_labels = digit_labels([p.answer for p in train.problems], n_places)
        self.control_perm = digit_permutation(self.seed) if self.control else None
        tr_control = control_labels(train.problems, self.control_perm, n_places) if self.control_perm is not None else None
        self.train_labels = [(p.scale, p.answer, k) for p, k in zip(train.problems, first_token_digits(train), strict=True)]
        for g, r in enumerate(rows):
            feats = train.resid[r.to(train.resid.device), :, 0, :].to(device).transpose(0, 1)  # (L, n_g, d)
            stats = [torch.var_mean(layer.double(), dim=0, correction=0) for layer in feats]  # float64, a layer at a time
            sd, mu = torch.stack([v for v, _ in stats]).sqrt(), torch.stack([m for _, m in stats])
            sd = torch.where(sd < 10 * torch.finfo(torch.float64).eps, torch.ones_like(sd), sd)
            mean[g], std[g] = mu.float(), sd.float()
            x[g, :, : len(r), :dim] = (feats - mean[g][:, None]) / std[g][:, None]
            sw[g, : len(r)] = 1
            labels[g, : len(r), :n_places] = tr_labels[r]
            if tr_control is not None:
                labels[g, : len(r), n_places:] = tr_control[r]
            del feats
        classes = torch.zeros(n_groups, n_tasks * n_places, N_DIGITS, dtype=torch.bool)
        for g, r in enumerate(rows):
            classes[g] = torch.nn.functional.one_hot(labels[g, : len(r)], N_DIGITS).any(0)

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
        chosen = torch.full((n_groups, n_layers, n_tasks * n_places), default_c_index(self.Cs), dtype=torch.long)
        va_labels = digit_labels([p.answer for p in val.problems], n_places)
        no_val = []
        for g in range(n_groups):
            r = torch.nonzero(va_group == g)[:, 0]
            if len(r) == 0:
                no_val.append(self.group_scales[g])
                continue
            lab = va_labels[r]
            if self.control_perm is not None:
                lab = torch.cat([lab, control_labels([val.problems[i] for i in r.tolist()], self.control_perm, n_places)], 1)
            feats = val.resid[r.to(val.resid.device), :, 0, :].to(device)  # (n, L, d)
            chosen[g] = best_strength(W[g], b[g], mean[g], std[g], classes[g], feats, lab.to(device)).cpu()
        if no_val:
            warnings.warn(
                f"no validation problems for scale group(s) {no_val}: using C={self.Cs[default_c_index(self.Cs)]} there",
                stacklevel=2,
            )
        kept = ProbeWeights.chosen(W, b, mean, std, classes, chosen.to(device), self.Cs)
        for name, t in (("weights", kept.W), ("intercepts", kept.b)):
            check_finite(
                t, f"the fitted {self.name}'s {name}", "the residuals or the solver overflowed; report this with the run's settings"
            )
        self._weights = kept.places(slice(0, n_places))
        self._control = kept.places(slice(n_places, 2 * n_places)) if self.control else None
        iters = res.n_iter.view(n_groups, n_layers, n_c, n_tasks * n_places)
        conv = res.converged.view(n_groups, n_layers, n_c, n_tasks * n_places)
        self.fit_info = {
            "n_train": [len(r) for r in rows],
            "n_val": [int((va_group == g).sum()) for g in range(n_groups)],
            "n_fits": int(conv.numel()),
            "converged": int(conv.sum()),
            "hit_max_iter": int((~conv & (iters >= self.max_iter)).sum()),
            "stalled": int((~conv & (iters < self.max_iter)).sum()),
            "mean_iter": round(float(iters.float().mean()), 1),
            "max_iter_used": int(iters.max()),
        }
        if self.fit_info["hit_max_iter"]:
            warnings.warn(
                f"{self.fit_info['hit_max_iter']} of {conv.numel()} probe fits (all C, layers, places) reached "
                f"max_iter={self.max_iter} before max|grad| <= {self.tol}; C is still chosen on validation problems, "
                "raise max_iter for tighter fits",
                stacklevel=2,
            )

    def solve(
        self,
        x: Float[Tensor, "block problem d_model_1"],
        labels: Int[Tensor, "block problem task"],
        sample_weight: Float[Tensor, "block problem"],
        classes: Bool[Tensor, "block task digit"],
    ) -> SolverResult:
        """Fit every (block, C, task) cell: 10-way logistic regressions by the batched L-BFGS of :mod:`lens_digits.optim`.

        ``x`` holds standardised features with a last column of ones (the
        intercept); rows of weight 0 are padding. Subclasses with another model
        of the digits (:class:`CircularProbe`) override this alone.
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
        """Predicted digit of every place, units first, for every problem and layer."""
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

    # ---- settings, save, load --------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """Recipe, groups and (after fitting) the chosen C of each probe, JSON-ready."""
        out: dict[str, Any] = {
            "scope": self.scope,
            "Cs": self.Cs,
            "seed": self.seed,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "control": self.control,
            "history": self.history,
        }
        if self._weights is not None:
            out["group_scales"] = self.group_scales
            out["n_places"] = self.n_places
            out["places"] = self.place_names
            out["chosen_C"] = self._weights.C.cpu().tolist()  # [group][layer][place]
            if self._control is not None:
                out["control_chosen_C"] = self._control.C.cpu().tolist()
                out["control_perm"] = self.control_perm
            out["fit"] = self.fit_info
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``probe.safetensors`` (tensors) and ``probe.json`` (settings) into folder ``path``."""
        meta = self.settings() | {"method": self.name, "train_labels": [list(t) for t in self.train_labels]}
        return save_weights(path, self.weights, self._control, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device | None = None) -> "LinearProbe":
        """Restore a probe written by :meth:`save`; it scores exactly as the saved one."""
        weights, control, meta = load_weights(path, device)
        kind = meta.get("method", "probe")
        if kind != cls.name:
            raise LensDigitsError(f"{path} holds a {kind!r} probe, not a {cls.name!r} one; load it with that class")
        probe = cls(**cls._init_args(meta), device=device)
        probe._weights, probe._control = weights, control
        if control is not None:
            probe.control_perm = [int(d) for d in meta["control_perm"]]
        probe.train_labels = [(int(s), str(a), int(k)) for s, a, k in meta["train_labels"]]
        probe.group_scales = [list(s) for s in meta["group_scales"]]
        probe.n_places = list(meta["n_places"])
        probe.fit_info = dict(meta.get("fit", {}))
        return probe

    @classmethod
    def _init_args(cls, meta: dict[str, Any]) -> dict[str, Any]:
        """Constructor arguments from saved settings."""
        keys = ("scope", "Cs", "seed", "max_iter", "tol", "control", "history")
        return {k: meta[k] for k in keys}

    def __repr__(self) -> str:
        """Recipe and fitted state."""
        fitted = f", groups={self.group_scales}, places={self.n_places}" if self._weights is not None else ", unfitted"
        return f"LinearProbe(scope={self.scope!r}, Cs={self.Cs}{fitted})"
