"""Loading and building models: the one module that knows TransformerLens versions.

TransformerLens 4.x has only ``TransformerBridge``; 3.x has it beside
``HookedTransformer``. The rest of the package uses only what both share
(``run_with_hooks``, ``cfg.n_layers``, ``ln_final``, ``unembed``, the tokenizer),
through the small accessors below.
"""

import importlib.metadata
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import torch

from lens_digits.errors import LensDigitsError, ModelLoadError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def transformer_lens_version() -> str:
    """Installed TransformerLens version."""
    return importlib.metadata.version("transformer-lens")


def hooked_transformer_class() -> type | None:
    """``HookedTransformer`` where the installed TransformerLens has it (3.x), else None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from transformer_lens import HookedTransformer
    except ImportError:
        return None
    return HookedTransformer


def bridge_class() -> type:
    """``TransformerBridge`` (TransformerLens 3.x and 4.x)."""
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge


def model_kind(model: Any) -> Literal["HookedTransformer", "TransformerBridge"]:
    """Which of the two supported model classes ``model`` is."""
    ht = hooked_transformer_class()
    if ht is not None and isinstance(model, ht):
        return "HookedTransformer"
    if isinstance(model, bridge_class()):
        return "TransformerBridge"
    raise LensDigitsError(
        f"expected a TransformerLens HookedTransformer or TransformerBridge, got {type(model).__name__}; "
        "load one with lens_digits.load_model(...)"
    )


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bfloat16"`` -> ``torch.bfloat16``; None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise LensDigitsError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def model_tokenizer(model: Any) -> Any:
    """The model's Hugging Face tokenizer; a clear error if it has none."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise LensDigitsError(
            "the model has no tokenizer; load it from a checkpoint folder that has one, or build it with "
            "lens_digits.build_model(tokenizer=...)"
        )
    return tok


def model_bos_token_id(model: Any) -> int | None:
    """BOS id to put before prompts, following the model's own ``default_prepend_bos``."""
    if not getattr(model.cfg, "default_prepend_bos", True):
        return None
    return getattr(model_tokenizer(model), "bos_token_id", None)


def model_context_length(model: Any) -> int | None:
    """Longest input the model takes, in tokens."""
    n_ctx = getattr(model.cfg, "n_ctx", None)
    return int(n_ctx) if n_ctx else None


def model_device(model: Any) -> torch.device:
    """Device of the model's first parameter (where its input tokens go)."""
    return next(model.parameters()).device


def model_dtype(model: Any) -> torch.dtype:
    """Floating dtype of the model's parameters."""
    return next(p for p in model.parameters() if p.is_floating_point()).dtype


def describe_model(model: Any) -> dict[str, Any]:
    """A JSON-ready summary for ``run.json``."""
    cfg = model.cfg
    return {
        "name": str(getattr(cfg, "model_name", "unknown")),
        "kind": model_kind(model),
        "n_layers": int(cfg.n_layers),
        "d_model": int(cfg.d_model),
        "d_vocab": int(cfg.d_vocab),
        "n_ctx": model_context_length(model),
        "dtype": str(model_dtype(model)).replace("torch.", ""),
        "device": str(model_device(model)),
    }


def _looks_like_path(name: str) -> bool:
    """Hub names are ``name`` or ``org/name``; anything else is meant as a folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    kind: Literal["auto", "bridge", "hooked"] = "auto",
    progress: bool = True,
    n_devices: int | None = None,
    device_map: str | dict[str, Any] | None = None,
) -> Any:
    """Load a model from a local Hugging Face checkpoint folder or a hub name.

    ``auto`` and ``bridge`` load through ``TransformerBridge.boot_transformers``,
    which exists in TransformerLens 3.x and 4.x; ``hooked`` uses
    ``HookedTransformer.from_pretrained`` (3.x only, hub names only).
    The model is returned in eval mode. ``progress=False`` hides the loading bars.

    For models larger than one GPU, ``n_devices`` (split the layers over that
    many GPUs) or ``device_map`` (e.g. ``"auto"``, as in Hugging Face) are passed
    to TransformerLens' own loader; residuals are gathered from whichever device
    each layer runs on.

    Raises:
        ModelLoadError: No checkpoint at the path, or the hub cannot be reached.
    """
    name = os.fspath(name_or_path)
    torch_dtype = parse_dtype(dtype) or torch.float32
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = Path(name).expanduser()
    is_local = path.exists()
    if is_local:
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{name!r} is not a Hugging Face checkpoint folder (no config.json in it); pass the folder that save_pretrained wrote"
            )
        name = str(path)
    elif _looks_like_path(name):
        raise ModelLoadError(f"no checkpoint folder at {name!r}; check the path, or pass a hub name")
    if kind not in ("auto", "bridge", "hooked"):
        raise LensDigitsError(f"unknown model kind {kind!r}; choose auto, bridge or hooked")
    if not progress:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    try:
        if kind == "hooked":
            ht = hooked_transformer_class()
            if ht is None:
                raise LensDigitsError(
                    f"kind='hooked' needs HookedTransformer, which TransformerLens {transformer_lens_version()} removed; use kind='bridge'"
                )
            if is_local:
                raise LensDigitsError("kind='hooked' loads hub names only; use kind='bridge' for a local folder")
            extra = {"n_devices": n_devices} if n_devices else {}
            model = ht.from_pretrained(name, device=device, dtype=torch_dtype, **extra)
        else:
            extra = {k: v for k, v in (("n_devices", n_devices), ("device_map", device_map)) if v is not None}
            model = bridge_class().boot_transformers(name, device=None if device_map else device, dtype=torch_dtype, **extra)
    except LensDigitsError:
        raise
    except (OSError, ValueError) as e:
        where = f"the checkpoint folder {name!r}" if is_local else f"{name!r} from the Hugging Face hub"
        raise ModelLoadError(
            f"could not load {where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}. Without network, "
            "pass a local checkpoint folder, or use the built-in model (lens-digits run without --model; "
            "lens_digits.load_builtin_model())"
        ) from e
    model.eval()
    return model


def peek_checkpoint(folder: str | os.PathLike[str]) -> tuple[Any, int | None]:
    """Tokenizer and context length of a local checkpoint folder, without loading its weights.

    Lets bad settings (a template the tokenizer merges, prompts that do not fit)
    be reported before a slow model load.
    """
    import transformers

    path = Path(folder).expanduser()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    config = transformers.AutoConfig.from_pretrained(path)
    n_ctx = next((getattr(config, k) for k in ("max_position_embeddings", "n_positions", "n_ctx") if getattr(config, k, None)), None)
    return tokenizer, n_ctx


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
    """
    if d_vocab is None:
        if tokenizer is None:
            raise LensDigitsError("build_model needs d_vocab or a tokenizer")
        d_vocab = len(tokenizer)
    common = dict(
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
