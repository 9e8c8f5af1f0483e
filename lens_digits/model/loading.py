"""Loading and building models: the one module that knows TransformerLens versions.

TransformerLens 4.x has only ``TransformerBridge``; 3.x has it beside
``HookedTransformer``. The rest of the package uses only what both share
(``run_with_hooks``, ``cfg.n_layers``, ``ln_final``, ``unembed``, the tokenizer),
through one :class:`~lens_digits.model.adapter.ModelAdapter`.
"""

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import torch

from lens_digits.errors import LensDigitsError, ModelLoadError, TransformerLensVersionError, first_line
from lens_digits.model.checkpoints import check_supported, inspect_checkpoint, load_tokenizer, transformer_lens_version
from lens_digits.model.hub import cached, hub_endpoint, hub_offline, hub_reachable, is_hub_failure, progress_bars
from lens_digits.model.hub import offline as offline_mode

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def hooked_transformer_class() -> Any:
    """``HookedTransformer`` where the installed TransformerLens has it (3.x), else None.

    Returns:
        The ``HookedTransformer`` class, or None if it cannot be imported.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from transformer_lens import HookedTransformer
    except ImportError:
        return None
    return HookedTransformer


def bridge_class() -> Any:
    """``TransformerBridge`` (TransformerLens 3.x and 4.x).

    Returns:
        The ``TransformerBridge`` class.
    """
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge


ANALYSIS_TOOLS_SINCE = "3.9"
"""The oldest TransformerLens release known to ship the ``tools.analysis`` that ``jacobian_lens``, ``attribution`` and ``dla`` wrap.

3.9.0 and 4.3.0 both have it (the methods are tested on both); whether an installed release has it is
found by importing it, not from its version number."""


def analysis_tools(method: str) -> Any:
    """TransformerLens' ``tools.analysis`` package, which ``method`` wraps.

    Returns:
        The ``transformer_lens.tools.analysis`` module.

    Raises:
        TransformerLensVersionError: The installed TransformerLens has no ``tools.analysis`` (a release before 3.9).
    """
    try:
        import transformer_lens.tools.analysis as tools
    except ImportError:
        raise TransformerLensVersionError(
            f"method {method!r} needs TransformerLens >= {ANALYSIS_TOOLS_SINCE} (its tools.analysis), but "
            f"{transformer_lens_version()} has none; pip install 'transformer-lens>={ANALYSIS_TOOLS_SINCE}'"
        ) from None
    return tools


def model_kind(model: Any) -> Literal["HookedTransformer", "TransformerBridge"]:
    """Which of the two supported model classes ``model`` is.

    Returns:
        ``"HookedTransformer"`` or ``"TransformerBridge"``.

    Raises:
        LensDigitsError: ``model`` is neither.
    """
    ht = hooked_transformer_class()
    if ht is not None and isinstance(model, ht):
        return "HookedTransformer"
    if isinstance(model, bridge_class()):
        return "TransformerBridge"
    raise LensDigitsError(
        f"expected a TransformerLens HookedTransformer or TransformerBridge, got {type(model).__name__}; "
        "load one with lens_digits.load_model(...)"
    )


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to load onto: ``None`` means cuda when available, else cpu.

    Returns:
        The device, checked to exist on this machine.

    Raises:
        LensDigitsError: The name is not a device, or names one this machine lacks.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise LensDigitsError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise LensDigitsError(f"device {str(device)!r} asked for, but {why}; use --device cpu (or leave it out)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise LensDigitsError(f"device {str(device)!r} asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise LensDigitsError(f"device {str(device)!r} asked for, but MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise LensDigitsError(f"device {str(device)!r} is not supported; use cpu, cuda, cuda:N or mps")
    return dev


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bfloat16"`` -> ``torch.bfloat16``; None stays None.

    Returns:
        The torch dtype named (a dtype is returned as it is), or None.

    Raises:
        LensDigitsError: The name is not ``float32``, ``float16`` or ``bfloat16``.
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise LensDigitsError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def _looks_like_path(name: str) -> bool:
    """Hub names are ``name`` or ``org/name``; anything else is meant as a folder.

    Returns:
        True if ``name`` can only be meant as a folder.
    """
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    kind: Literal["auto", "bridge", "hooked"] = "auto",
    progress: bool | None = None,
    n_devices: int | None = None,
    device_map: str | dict[str, Any] | None = None,
) -> Any:
    """Load a model from a local Hugging Face checkpoint folder or a hub name.

    ``auto`` and ``bridge`` load through ``TransformerBridge.boot_transformers``,
    which exists in TransformerLens 3.x and 4.x; ``hooked`` uses
    ``HookedTransformer.from_pretrained`` (3.x only, hub names only).
    The model is returned in eval mode. ``progress``: show transformers' loading and download bars
    (None, the default: for hub names only, where a download may take a while; a local folder loads in silence).

    For models larger than one GPU, ``n_devices`` (split the layers over that
    many GPUs) or ``device_map`` (e.g. ``"auto"``, as in Hugging Face) are passed
    to TransformerLens' own loader; residuals are gathered from whichever device
    each layer runs on.

    Returns:
        The ``TransformerBridge`` (or, with ``kind="hooked"``, ``HookedTransformer``), in eval mode.

    Raises:
        ModelLoadError: No checkpoint at the path, or the hub cannot be reached.
        LensDigitsError: An unknown ``kind``, ``device`` or ``dtype``, or ``kind="hooked"`` with a local folder or
            a TransformerLens that has no ``HookedTransformer``.
    """
    name = os.fspath(name_or_path)
    torch_dtype = parse_dtype(dtype) or torch.float32
    device = resolve_device(device) if device_map is None else device
    if kind not in ("auto", "bridge", "hooked"):
        raise LensDigitsError(f"unknown model kind {kind!r}; choose auto, bridge or hooked")
    source = check_source(name, architecture=kind != "hooked")
    is_local, offline = source.local, source.offline
    name = source.name
    try:
        with progress_bars(not is_local if progress is None else progress), offline_mode(offline):
            model = _load(name, kind, is_local, device, torch_dtype, n_devices, device_map)
    except LensDigitsError:
        raise
    except torch.OutOfMemoryError:
        raise ModelLoadError(f"out of memory loading {name!r} on {device}; use --dtype bfloat16, a smaller model or more devices") from None
    except Exception as e:  # transformers and TransformerLens raise many kinds; the user needs one line
        if "supported architecture" in str(e).lower():
            raise ModelLoadError(
                f"TransformerLens {transformer_lens_version()} does not support the architecture of {name!r} "
                f"({first_line(e)}); use a model of a supported family (GPT-2, Pythia, Llama, Mistral, Qwen2, Gemma, ...) "
                "or upgrade transformer-lens"
            ) from e
        if is_local:
            raise ModelLoadError(f"could not load the checkpoint folder {name!r}: {first_line(e)}") from e
        if is_hub_failure(e):
            raise ModelLoadError(
                f"could not get {name!r} from the Hugging Face hub ({first_line(e)}). Without network, "
                "pass a local checkpoint folder, or use the built-in model (lens-digits run without --model; "
                "lens_digits.load_builtin_model())"
            ) from e
        raise ModelLoadError(f"could not load {name!r}: {first_line(e)}") from e
    model.eval()
    return model


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a model comes from, as :func:`check_source` found it."""

    name: str
    """A local folder (absolute, ``~`` expanded) or a hub name."""
    local: bool
    offline: bool
    """A hub name that must be read from the local cache (the hub cannot be reached)."""


def check_source(name_or_path: str | os.PathLike[str], *, architecture: bool = True) -> Source:
    """Check, in seconds and without loading weights, that a model can be loaded: what :func:`load_model` does first.

    A local folder is inspected (config, weights, tokenizer, and with ``architecture``
    whether TransformerLens runs it); a hub name must be reachable, or in the local
    cache when the hub is not (or is switched off with ``HF_HUB_OFFLINE``).

    Returns:
        Where the model comes from: the folder (absolute) or hub name, and whether it must be read from the local cache.

    Raises:
        ModelLoadError: The folder is missing or damaged, or the hub name cannot be reached or found in the cache.
    """
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        config = inspect_checkpoint(path)
        load_tokenizer(path)
        if architecture:
            check_supported(config, str(path))
        return Source(str(path), True, False)
    if _looks_like_path(name):
        raise ModelLoadError(f"no checkpoint folder at {name!r}; check the path, or pass a hub name")
    if hub_offline() or not hub_reachable():
        # Without this check, transformers retries for a minute before it fails or falls back to its cache.
        if not cached(name):
            why = "the hub is switched off (HF_HUB_OFFLINE)" if hub_offline() else f"cannot reach the Hugging Face hub ({hub_endpoint()})"
            raise ModelLoadError(
                f"{why} and {name!r} is not in the local cache; "
                f"{'there is no folder of that name here either; ' if '/' not in name else ''}pass a local checkpoint folder, "
                "or use the built-in model (lens-digits run without --model; lens_digits.load_builtin_model())"
            )
        return Source(name, False, not hub_offline())
    return Source(name, False, False)


def _load(name: str, kind: str, is_local: bool, device: Any, torch_dtype: torch.dtype, n_devices: int | None, device_map: Any) -> Any:
    if kind == "hooked":
        ht = hooked_transformer_class()
        if ht is None:
            raise LensDigitsError(
                f"kind='hooked' needs HookedTransformer, which TransformerLens {transformer_lens_version()} removed; use kind='bridge'"
            )
        if is_local:
            raise LensDigitsError("kind='hooked' loads hub names only; use kind='bridge' for a local folder")
        extra = {"n_devices": n_devices} if n_devices else {}
        return ht.from_pretrained(name, device=device, dtype=torch_dtype, **extra)
    extra = {k: v for k, v in (("n_devices", n_devices), ("device_map", device_map)) if v is not None}
    return bridge_class().boot_transformers(name, device=None if device_map else device, dtype=torch_dtype, **extra)


def build_model(
    *,
    tokenizer: Any = None,
    kind: Literal["bridge", "hooked"] = "bridge",
    n_layers: int = 2,
    d_model: int = 32,
    n_heads: int = 4,
    n_ctx: int = 64,
    d_vocab: int | None = None,
    normalization_type: Literal["LN", "RMS"] = "LN",
    act_fn: str = "gelu",
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Any:
    """A small randomly initialised model, built from a config with no download.

    ``kind="bridge"`` uses ``TransformerBridge.boot_native``; ``kind="hooked"`` a
    ``HookedTransformer`` (TransformerLens 3.x only). ``d_vocab`` defaults to the
    tokenizer's vocabulary size.

    Returns:
        The model, in eval mode.

    Raises:
        LensDigitsError: Neither ``d_vocab`` nor a tokenizer is given, ``kind`` is unknown, or ``kind="hooked"``
            with a TransformerLens that has no ``HookedTransformer``.
    """
    if d_vocab is None:
        if tokenizer is None:
            raise LensDigitsError("build_model needs d_vocab or a tokenizer")
        d_vocab = len(tokenizer)
    common: dict[str, Any] = dict(
        n_layers=n_layers,
        d_model=d_model,
        d_head=d_model // n_heads,
        n_heads=n_heads,
        n_ctx=n_ctx,
        d_vocab=d_vocab,
        act_fn=act_fn,
        normalization_type=normalization_type,
        seed=seed,
    )
    if kind == "hooked":
        ht = hooked_transformer_class()
        if ht is None:
            raise LensDigitsError(f"TransformerLens {transformer_lens_version()} has no HookedTransformer; use kind='bridge'")
        from transformer_lens import HookedTransformerConfig

        model = ht(HookedTransformerConfig(**common, device=str(device)), tokenizer=tokenizer)
    elif kind == "bridge":
        from transformer_lens.config import TransformerBridgeConfig

        model = bridge_class().boot_native(TransformerBridgeConfig(**common), tokenizer=tokenizer, device=device)
    else:
        raise LensDigitsError(f"unknown model kind {kind!r}; choose bridge or hooked")
    model.eval()
    return model
