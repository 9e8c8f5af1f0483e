"""Module paths of releases before 0.2, kept for one release: importing one warns and gives the module's new home.

0.2 moved the 46 modules of one flat folder into folders by stage
(``lens_digits.grid`` is now :mod:`lens_digits.results.grid`, ...). A
:class:`sys.meta_path` finder answers the old names: ``import lens_digits.grid``
and ``from lens_digits.grid import AccuracyGrid`` still work, with a
``DeprecationWarning`` naming the new module. A module that was split
(``lens_digits.config``, ``lens_digits.carries``, ``lens_digits.decoders.base``,
``lens_digits.decoders.labels``) answers with a module that looks each name up
in its successors.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Sequence
from typing import Any

OLD_MODULES: dict[str, tuple[str, ...]] = {
    "adapter": ("model.adapter",),
    "atomic": ("storage.atomic",),
    "batching": ("model.batching",),
    "cache": ("residuals.cache",),
    "carries": ("problems.carries", "methods.scores"),
    "chartok": ("model.tokenizers",),
    "checkpoints": ("model.checkpoints",),
    "config": ("settings", "runs.config", "problems.targets", "results.figures"),
    "decoders": ("methods",),
    "decoders.base": ("methods.base", "methods.scores", "problems.targets"),
    "decoders.circular_probe": ("methods.probes.circular",),
    "decoders.labels": ("methods.probes.labels", "problems.digits"),
    "decoders.lens": ("methods.lenses.base",),
    "decoders.logit_lens": ("methods.lenses.logit",),
    "decoders.probe_weights": ("methods.probes.weights",),
    "decoders.probes": ("methods.probes.linear",),
    "decoders.tuned_lens": ("methods.lenses.tuned",),
    "draw": ("runs.draw",),
    "emergence": ("results.emergence",),
    "executors": ("runs.executors",),
    "generate": ("model.greedy",),
    "grid": ("results.grid",),
    "kvcache": ("model.kvcache",),
    "models": ("model.loading",),
    "operations": ("problems.operations",),
    "optim": ("methods.probes.optim",),
    "outputs": ("storage.paths",),
    "patching": ("methods.interventions.patching",),
    "plotting": ("results.figures",),
    "readout": ("model.readout",),
    "record": ("results.record",),
    "redraw": ("cli.plot",),
    "reductions": ("model.reductions",),
    "refit": ("runs.fit",),
    "rundir": ("storage.reservation", "storage.paths"),
    "runfiles": ("results.files",),
    "study": ("runs.study", "cli.study"),
    "sweep": ("runs.sweep",),
    "targets": ("problems.targets",),
    "tasks": ("problems.tasks",),
}
"""Old module path (below ``lens_digits.``) -> where its names live now, first match wins."""


class _Moved(types.ModuleType):
    """An old module path: every attribute is looked up in its successors."""

    def __init__(self, name: str, targets: Sequence[str]) -> None:
        super().__init__(name, f"Deprecated alias of {', '.join('lens_digits.' + t for t in targets)}.")
        self._targets = [f"lens_digits.{t}" for t in targets]

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        for target in self._targets:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} (moved to {', '.join(self._targets)}) has no attribute {attr!r}")

    def __dir__(self) -> list[str]:
        return sorted({n for t in self._targets for n in dir(importlib.import_module(t))})


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers ``import lens_digits.OLD`` with the module's new home (one target) or a :class:`_Moved` (several)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        old = fullname.removeprefix("lens_digits.")
        if old == fullname or old not in OLD_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=old == "decoders")

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        old = spec.name.removeprefix("lens_digits.")
        targets = OLD_MODULES[old]
        new = ", ".join(f"lens_digits.{t}" for t in targets)
        warnings.warn(f"{spec.name} is deprecated (moved in lens-digits 0.2): import from {new}", DeprecationWarning, stacklevel=4)
        if len(targets) == 1:
            module = importlib.import_module(f"lens_digits.{targets[0]}")
            self._specs[spec.name] = module.__spec__  # the import system writes the alias's over it: put it back after
            return module
        return _Moved(spec.name, targets)

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the module is the new one (whose own spec is restored)."""
        for name, original in list(self._specs.items()):
            if module.__spec__ is not None and module.__spec__.name == name:
                module.__spec__ = original
                module.__loader__ = original.loader if original is not None else None
                del self._specs[name]

    def __init__(self) -> None:
        self._specs: dict[str, Any] = {}


if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())  # before the path finder, which would take lens_digits.decoders.probes for the new probes package
