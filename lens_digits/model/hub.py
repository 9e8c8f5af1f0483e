"""The Hugging Face hub, as the loader meets it: its address, whether it is switched off or reachable, its local cache.

A hub that cannot be reached is found in seconds (a connection, no request),
instead of the minute transformers spends retrying; a model in the local
cache then loads from it.
"""

import contextlib
import os
from collections.abc import Iterator


def hub_endpoint() -> str:
    """The Hugging Face hub's address (``HF_ENDPOINT``, or huggingface.co).

    Returns:
        The hub's URL.
    """
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_offline() -> bool:
    """Whether the user switched the hub off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``).

    Returns:
        True if either variable is set to ``1``, ``true``, ``yes`` or ``on``.
    """
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a connection to the hub opens within ``timeout`` seconds (no request is sent).

    Returns:
        True if the connection opened.
    """
    import socket
    from urllib.parse import urlparse

    url = urlparse(hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def cached(name: str) -> bool:
    """Whether the hub model ``name`` is in the local Hugging Face cache.

    Returns:
        True if its ``config.json`` is in the cache.
    """
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # a name the cache cannot hold (not a repo id)
        return False


@contextlib.contextmanager
def offline(on: bool) -> Iterator[None]:
    """Make transformers and huggingface_hub use only the local cache inside the block (no retries)."""
    if not on:
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


@contextlib.contextmanager
def progress_bars(show: bool) -> Iterator[None]:
    """Hide transformers' and huggingface_hub's progress bars inside the block (``show=False``), then restore them."""
    if show:
        yield
        return
    import transformers
    from huggingface_hub import utils as hub_utils

    was_on = transformers.utils.logging.is_progress_bar_enabled()
    hub_was_off = hub_utils.are_progress_bars_disabled()
    transformers.utils.logging.disable_progress_bar()
    hub_utils.disable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            transformers.utils.logging.enable_progress_bar()
        if not hub_was_off:
            hub_utils.enable_progress_bars()


def is_hub_failure(e: BaseException) -> bool:
    """Whether an exception (or its cause) is a failure to reach or find something on the hub.

    Returns:
        True if ``e`` or an exception in its chain of causes is an ``OSError``, a connection or time-out error,
        or comes from ``huggingface_hub``, ``requests``, ``httpx`` or ``urllib3``.
    """
    while e is not None:
        module = type(e).__module__ or ""
        if isinstance(e, (OSError, ConnectionError, TimeoutError)) or module.startswith(
            ("huggingface_hub", "requests", "httpx", "urllib3")
        ):
            return True
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return False
