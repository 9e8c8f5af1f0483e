"""Local checkpoint folders, checked before their weights are loaded.

A damaged folder (a ``config.json`` that is not JSON, an unknown
``model_type``, no tokenizer, truncated weights, an architecture
TransformerLens cannot run) fails here with a message naming the file, in
seconds rather than after a slow weight load.
"""

import json
import os
from pathlib import Path
from typing import Any

from lens_digits.errors import ModelLoadError, first_line


def transformer_lens_version() -> str:
    """Installed TransformerLens version.

    Returns:
        The version of the installed ``transformer-lens`` distribution.
    """
    import importlib.metadata

    return importlib.metadata.version("transformer-lens")


def supported_architectures() -> set[str] | None:
    """Hugging Face architecture names the installed TransformerBridge can run (None if it does not say).

    Returns:
        The architecture names (e.g. ``GPT2LMHeadModel``), or None if the installed TransformerLens has no such list.
    """
    try:
        from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    except ImportError:
        return None
    return set(SUPPORTED_ARCHITECTURES)


def check_supported(config: dict[str, Any], name: str) -> None:
    """Refuse, before loading weights, a checkpoint whose architecture TransformerLens cannot run.

    Raises:
        ModelLoadError: ``config`` names architectures, and the installed TransformerBridge supports none of them.
    """
    supported = supported_architectures()
    architectures = config.get("architectures") or []
    if supported is None or not architectures or any(a in supported for a in architectures):
        return
    raise ModelLoadError(
        f"TransformerLens {transformer_lens_version()} does not support the architecture of {name!r} ({', '.join(architectures)}); "
        "use a model of a supported family (GPT-2, Pythia, Llama, Mistral, Qwen2, Gemma, ...) or upgrade transformer-lens"
    )


def _check_safetensors(file: Path) -> None:
    """Check that a safetensors file is whole: its header parses and covers the file exactly.

    Raises:
        ModelLoadError: The header does not parse, or its length and offsets do not match the file's size.
        ValueError: Never to the caller: a header length past the end of the file is turned into a ``ModelLoadError``.
    """
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or 8 + n > size:
                raise ValueError("header length beyond the end of the file")
            header = json.loads(f.read(n))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ModelLoadError(f"{file} is damaged or truncated ({first_line(e)}); save or download it again") from None
    expected = 8 + n + max(ends, default=0)
    if expected != size:
        raise ModelLoadError(
            f"{file} is truncated or damaged: {size:,} bytes where its header says {expected:,}; save or download it again"
        )


def inspect_checkpoint(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a local checkpoint folder without loading its weights; return its ``config.json``.

    Returns:
        The folder's ``config.json``, parsed.

    Raises:
        ModelLoadError: No folder, a ``config.json`` that is not valid JSON or
            names a ``model_type`` transformers does not know, no tokenizer, or
            weight files that are missing or truncated. The message names the file.
    """
    path = Path(folder).expanduser()
    config_file = path / "config.json"
    if not path.is_dir() or not config_file.is_file():
        raise ModelLoadError(
            f"{str(folder)!r} is not a Hugging Face checkpoint folder (no config.json in it); pass the folder that save_pretrained wrote"
        )
    try:
        config = json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{config_file} is not valid JSON ({first_line(e)}); save the model again with save_pretrained") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_file} must hold a JSON object, not {type(config).__name__}")
    model_type = config.get("model_type")
    from transformers import CONFIG_MAPPING

    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        import transformers

        raise ModelLoadError(
            f"{config_file} names model_type {model_type!r}, which transformers {transformers.__version__} does not know; "
            "check the file, or upgrade transformers if the architecture is newer"
        )
    index = path / "model.safetensors.index.json"
    shards: list[Path] = []
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = [path / name for name in sorted(set(weight_map.values()))]
        except (ValueError, KeyError, TypeError) as e:
            raise ModelLoadError(f"{index} is damaged ({first_line(e)}); save or download the checkpoint again") from None
        for shard in shards:
            if not shard.is_file():
                raise ModelLoadError(f"{path} lacks weight shard {shard.name} listed in {index.name}; download it again")
    elif (path / "model.safetensors").is_file():
        shards = [path / "model.safetensors"]
    elif not any(path.glob("pytorch_model*.bin")):
        raise ModelLoadError(f"{path} has no weights (model.safetensors or pytorch_model.bin); save the model with save_pretrained")
    for shard in shards:
        _check_safetensors(shard)
    return config


def peek_checkpoint(folder: str | os.PathLike[str]) -> tuple[Any, int | None]:
    """Tokenizer and context length of a local checkpoint folder, without loading its weights.

    Lets bad settings (a template the tokenizer merges, prompts that do not fit)
    be reported before a slow model load.

    Returns:
        ``(tokenizer, n_ctx)``: the saved tokenizer, and the context length that ``config.json`` gives
        (``max_position_embeddings``, ``n_positions`` or ``n_ctx``; None if it gives none).

    Raises:
        ModelLoadError: The folder is not a whole checkpoint (see :func:`inspect_checkpoint`), or its tokenizer does not load.
    """
    path = Path(folder).expanduser()
    config = inspect_checkpoint(path)
    tokenizer = load_tokenizer(path)
    n_ctx = next((config[k] for k in ("max_position_embeddings", "n_positions", "n_ctx") if isinstance(config.get(k), int)), None)
    return tokenizer, n_ctx


def load_tokenizer(folder: str | os.PathLike[str]) -> Any:
    """The tokenizer saved in a checkpoint folder.

    Returns:
        The tokenizer, as ``transformers.AutoTokenizer`` loads it.

    Raises:
        ModelLoadError: The folder has no tokenizer files, or they do not load.
    """
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(Path(folder).expanduser())
    except Exception as e:  # transformers raises ValueError, OSError, TypeError, JSON errors...
        raise ModelLoadError(
            f"{str(folder)!r} has no usable tokenizer ({first_line(e)}); save one into it with tokenizer.save_pretrained(folder)"
        ) from None
