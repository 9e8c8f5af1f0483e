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


MODELS = ("arith-llama-28", "arith-llama")
"""The shipped models, by name: the first is the default (``builtin``)."""

DEFAULT_MODEL = MODELS[0]
BUILTIN_MODEL_NAME = DEFAULT_MODEL
"""The default shipped model's name (the name of 0.1's one model, ``arith-llama``, before the deep one shipped)."""


def builtin_name(name: str | None = None) -> str:
    """The shipped model a name means: ``None``, ``"builtin"`` -> the default; ``"builtin:NAME"`` or ``NAME`` -> that one.

    Returns:
        A name of :data:`MODELS`.

    Raises:
        ModelLoadError: No shipped model has that name; the message lists them.
    """
    if name in (None, "builtin"):
        return DEFAULT_MODEL
    chosen = str(name).removeprefix("builtin:")
    if chosen not in MODELS:
        raise ModelLoadError(f"no built-in model {chosen!r}; the package ships {', '.join(MODELS)} (lens-digits models lists them)")
    return chosen


def builtin_model_path(name: str | None = None) -> Path:
    """Folder of a shipped checkpoint inside the installed package (default: the default model's).

    Returns:
        The folder's path; it is not checked to exist.

    Raises:
        ModelLoadError: ``name`` is no shipped model.
    """
    return Path(__file__).parent / builtin_name(name)


def model_source(name: str | None) -> str:
    """What to load for a model name: a shipped checkpoint's folder for ``None``, ``builtin`` or ``builtin:NAME``, else the name.

    Returns:
        The folder or name, as a string.

    Raises:
        ModelLoadError: ``builtin:NAME`` names no shipped model.
    """
    if name is None or str(name) == "builtin" or str(name).startswith("builtin:"):
        return str(builtin_model_path(name))
    return str(name)


def shipped_model(folder: str | Path) -> str | None:
    """The name of the shipped model at ``folder`` (None if it is none of them).

    Returns:
        A name of :data:`MODELS`, or None.
    """
    try:
        resolved = Path(folder).resolve()
    except OSError:
        return None
    return next((m for m in MODELS if resolved == (Path(__file__).parent / m).resolve()), None)


def builtin_card(name: str | None = None) -> dict[str, Any]:
    """A shipped model's card: recipe, parameter count and greedy accuracy per op and scale (default: the default model's).

    Returns:
        The contents of the checkpoint's ``card.json``.

    Raises:
        ModelLoadError: The card is missing from the installed package, or ``name`` is no shipped model.
    """
    path = builtin_model_path(name) / "card.json"
    if not path.is_file():
        raise ModelLoadError(f"the built-in model's card is missing ({path}); reinstall lens-digits")
    card: dict[str, Any] = json.loads(path.read_text())
    return card


def list_models() -> list[tuple[str, str]]:
    """Each shipped model with its card's one-line summary (layers, width, what it was trained on, its accuracy).

    Returns:
        ``(name, summary)`` pairs, the default first.
    """
    out = []
    for name in MODELS:
        card = builtin_card(name)
        r = card["recipe"]
        acc = card["accuracy"].get(r["ops"][0], {})
        accuracy = " / ".join(f"{acc[str(s)]['accuracy']:.2f}" for s in r["scales"] if str(s) in acc)
        default = ", the default" if name == DEFAULT_MODEL else ""
        out.append(
            (
                name,
                f"{r['n_layers']} layers, d_model {r['d_model']}, {card['n_parameters']:,} parameters{default}; trained on "
                f"{', '.join(r['ops'])} at digit scales {', '.join(map(str, r['scales']))}; greedy accuracy {accuracy}",
            )
        )
    return out


def load_builtin_model(name: str | None = None, device: Any = None, dtype: Any = None) -> Any:
    """Load a shipped arithmetic model with :func:`lens_digits.load_model` (a ``TransformerBridge``).

    Args:
        name: Which one (:data:`MODELS`; default: the default, ``arith-llama-28``).
        device: Where to put it (default: cuda if available, else cpu).
        dtype: Model dtype (default float32).

    Returns:
        The model, in eval mode.

    Raises:
        ModelLoadError: ``name`` is no shipped model, or the checkpoint is missing from the installed package.
    """
    from lens_digits.model.loading import load_model

    if name is not None and (name in ("cpu", "cuda", "mps") or str(name).startswith("cuda:")):
        device, name = name, None  # load_builtin_model("cpu"): the device, given first as before 0.2
    path = builtin_model_path(name)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"the built-in model is missing from the installed package ({path}); reinstall lens-digits")
    return load_model(path, device=device, dtype=dtype)


__all__ = [
    "BUILTIN_MODEL_NAME",
    "DEFAULT_MODEL",
    "MODELS",
    "builtin_name",
    "list_models",
    "shipped_model",
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
