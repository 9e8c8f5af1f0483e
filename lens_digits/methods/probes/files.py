"""What a fitted probe records: its settings for ``run.json``, and its files (``probe.safetensors`` + ``probe.json``).

:class:`ProbeRecord` is the part of :class:`~lens_digits.methods.probes.linear.LinearProbe`
(and so of :class:`~lens_digits.methods.probes.circular.CircularProbe`) that
describes, saves and restores a probe; the tensors' own format is
:func:`~lens_digits.methods.probes.weights.save_weights`'s.
"""

import os
from pathlib import Path
from typing import Any

import torch

from lens_digits.errors import LensDigitsError
from lens_digits.methods.probes.weights import ProbeWeights, load_weights, save_weights


class ProbeRecord:
    """Settings, saving and loading of a probe (a mixin of :class:`~lens_digits.methods.probes.linear.LinearProbe`)."""

    scope: str
    Cs: list[float]
    seed: int
    max_iter: int
    tol: float
    control: bool
    history: int
    group_scales: list[list[int]]
    n_places: list[int]
    fit_info: dict[str, Any]
    control_perm: list[int] | None
    train_labels: list[tuple[int, str, int]]
    _weights: ProbeWeights | None
    _control: ProbeWeights | None

    def settings(self) -> dict[str, Any]:
        """Recipe, groups and (after fitting) the chosen C of each probe, JSON-ready.

        Returns:
            A new dict of the settings by name.
        """
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
            out["places"] = self.place_names  # type: ignore[attr-defined]
            out["chosen_C"] = self._weights.C.cpu().tolist()  # [group][layer][place]
            if self._control is not None:
                out["control_chosen_C"] = self._control.C.cpu().tolist()
                out["control_perm"] = self.control_perm
            out["fit"] = self.fit_info
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``probe.safetensors`` (tensors) and ``probe.json`` (settings) into folder ``path``.

        Returns:
            The folder, created if needed.

        Raises:
            LensDigitsError: The probe is not fitted.
        """
        name = getattr(self, "name", "probe")
        meta = self.settings() | {"method": name, "train_labels": [list(t) for t in self.train_labels]}
        if self._weights is None:
            raise LensDigitsError("the probe is not fitted yet: call fit(train, val) or load one")
        return save_weights(path, self._weights, self._control, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device | None = None) -> Any:
        """Restore a probe written by :meth:`save`; it scores exactly as the saved one.

        Returns:
            The fitted probe.

        Raises:
            LensDigitsError: ``path`` holds no probe that can be read, or one of another class.
            NonFiniteError: A saved tensor holds NaN or infinite values.
        """
        weights, control, meta = load_weights(path, device)
        kind = meta.get("method", "probe")
        mine = getattr(cls, "name", "probe")
        if kind != mine:
            raise LensDigitsError(f"{path} holds a {kind!r} probe, not a {mine!r} one; load it with that class")
        probe = cls(**cls._init_args(meta), device=device)  # type: ignore[call-arg]
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
        """Constructor arguments from saved settings.

        Returns:
            The keyword arguments by name.
        """
        keys = ("scope", "Cs", "seed", "max_iter", "tol", "control", "history")
        return {k: meta[k] for k in keys}

    def __repr__(self) -> str:
        """Recipe and fitted state.

        Returns:
            ``LinearProbe(scope=..., Cs=...)`` with the groups and places, or ``unfitted``.
        """
        fitted = f", groups={self.group_scales}, places={self.n_places}" if self._weights is not None else ", unfitted"
        return f"LinearProbe(scope={self.scope!r}, Cs={self.Cs}{fitted})"
