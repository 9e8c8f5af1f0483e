"""The built-in arithmetic model, shipped in the package, and the code that trained it.

``arith-llama`` is a small Llama (RMSNorm, rotary positions) with a character
tokenizer, trained by :func:`train_model` on additions written as
:mod:`lens_digits.problems.tasks` writes them (``12+34=``). It makes the grid of
``lens-digits run`` and of the tutorials offline: strong on the digit scales it
was trained on, weak beyond them, and readable only in its later layers.
Its model card (``README.md``) and measured accuracies (``card.json``) sit in
the checkpoint folder.

>>> import lens_digits as ld
>>> ld.load_builtin_model(device="cpu").cfg.n_layers == builtin_card()["recipe"]["n_layers"]
True
"""

import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lens_digits.errors import ModelLoadError

if TYPE_CHECKING:
    from lens_digits.builtin.card import greedy_accuracy, write_card
    from lens_digits.builtin.recipe import TrainConfig, builtin_tokenizer
    from lens_digits.builtin.train import train, train_model

_LAZY = {
    "greedy_accuracy": "card",
    "write_card": "card",
    "TrainConfig": "recipe",
    "builtin_tokenizer": "recipe",
    "train": "train",
    "train_model": "train",
}


def __getattr__(name: str) -> Any:
    """Import the training and card code on first use (so that ``lens_digits.builtin`` loads no torch).

    Returns:
        The attribute ``name`` of its submodule, cached in the module's globals.

    Raises:
        AttributeError: ``name`` is not one of the lazily imported attributes.
    """
    if name not in _LAZY:
        raise AttributeError(f"module 'lens_digits.builtin' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lens_digits.builtin.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


BUILTIN_MODEL_NAME = "arith-llama"


def builtin_model_path() -> Path:
    """Folder of the shipped checkpoint (inside the installed package).

    Returns:
        The path of the ``arith-llama`` folder; it is not checked to exist.
    """
    return Path(__file__).parent / BUILTIN_MODEL_NAME


def model_source(name: str | None) -> str:
    """What to load for a model name: the shipped checkpoint's folder for ``None`` or ``"builtin"``, else the name itself.

    Returns:
        The folder or name, as a string.
    """
    return str(builtin_model_path()) if name in (None, "builtin") else str(name)


def builtin_card() -> dict[str, Any]:
    """The shipped model's card: recipe, parameter count and greedy accuracy per op and scale.

    Returns:
        The contents of the checkpoint's ``card.json``.

    Raises:
        ModelLoadError: ``card.json`` is missing from the installed package.
    """
    path = builtin_model_path() / "card.json"
    if not path.is_file():
        raise ModelLoadError(f"the built-in model's card is missing ({path}); reinstall lens-digits")
    return json.loads(path.read_text())


def load_builtin_model(device: Any = None, dtype: Any = None) -> Any:
    """Load the shipped arithmetic model with :func:`lens_digits.load_model` (a ``TransformerBridge``).

    Args:
        device: Where to put it (default: cuda if available, else cpu).
        dtype: Model dtype (default float32).

    Returns:
        The loaded model.

    Raises:
        ModelLoadError: The checkpoint is missing from the installed package.
    """
    from lens_digits.model.loading import load_model

    path = builtin_model_path()
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"the built-in model is missing from the installed package ({path}); reinstall lens-digits")
    return load_model(path, device=device, dtype=dtype)


__all__ = [
    "BUILTIN_MODEL_NAME",
    "TrainConfig",
    "builtin_card",
    "builtin_model_path",
    "model_source",
    "builtin_tokenizer",
    "greedy_accuracy",
    "load_builtin_model",
    "train",
    "train_model",
    "write_card",
]
