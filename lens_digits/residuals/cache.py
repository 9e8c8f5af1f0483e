"""Residuals kept on disk in shards: a killed sweep resumes, and decoders refit without the model.

A :class:`ResidualCache` is a folder of shards. A shard holds the residuals of
one block of problems of one draw, split, digit scale and kind (``first``:
the last prompt position; ``answer``: every teacher-forced answer position;
``model``: the model's own greedy answer): ``NAME.safetensors`` (tensors
``resid`` and ``target_ids``, float32 and int64) and ``NAME.json`` beside it,
written last, with the file's SHA-256, the problems' token ids (their hash)
and the **key** the residuals were made with: the model (name, size and a
fingerprint of its weights), the tokenizer (a hash of its full definition),
the task settings, the BOS, chat wrapping, dtype and shard size.

:meth:`ResidualCache.collect` goes shard by shard: a shard on disk whose key
matches and whose checksum holds is read back (float32, bit for bit what was
computed); a missing, truncated or corrupted one is computed and written; a
shard made with other settings is refused with an error naming the setting
(or, when the run replaces an older one, ignored and overwritten). A sweep
collects shard by shard whether it is resumed or not, so a resumed sweep feeds
every decoder exactly the residuals an uninterrupted one does.

Each file is written to a temporary name, flushed and renamed, so a kill at
any moment leaves whole shards and at most one temporary file, which the next
run removes.
"""

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lens_digits._stack import user_stacklevel
from lens_digits.errors import LensDigitsError, OutputError
from lens_digits.model.adapter import ModelAdapter
from lens_digits.model.finite import count_nonfinite
from lens_digits.problems.targets import EncodedProblem
from lens_digits.problems.tasks import Problem
from lens_digits.residuals.assembly import alive, mapped_zeros, own
from lens_digits.residuals.collect import ResidualSet, collect_residuals, gold_ids
from lens_digits.residuals.keys import _difference, _ids_hash, cache_key, sweep_key, tokenizer_hash, weights_fingerprint
from lens_digits.storage import atomic
from lens_digits.storage.paths import CACHE_FOLDER, SHARD_FILE, pending_cache

__all__ = ["SHARD_FORMAT", "SHARD_SIZE", "ResidualCache", "cache_key", "sweep_key", "tokenizer_hash", "weights_fingerprint"]
# (the keys live in lens_digits.residuals.keys; imported here, where users have found them since 0.1)

SHARD_FORMAT = "lens_digits.shard"
SHARD_SIZE = 256
"""Problems per shard by default: a kill loses at most this many problems' work per kind."""


class ResidualCache:
    """A folder of residual shards (see the module docs).

    Args:
        folder: Where shards are written (and read first). Created on first write.
        read_also: Further folders to read shards from (the cache of a run directory being replaced); nothing is written there.
        discard_other_settings: A shard made with other settings is ignored and overwritten instead of refused (the run
            replaces the one that made it).
        shard_size: Problems per shard.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        read_also: Sequence[str | os.PathLike[str]] = (),
        discard_other_settings: bool = False,
        shard_size: int = SHARD_SIZE,
    ) -> None:
        """Nothing is read or written until :meth:`collect`.

        Raises:
            LensDigitsError: ``shard_size`` is not an integer from 1 to 1,000,000.
        """
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or not 1 <= shard_size <= 1_000_000:
            raise LensDigitsError(f"shard size must be an integer from 1 to 1,000,000 problems, got {shard_size!r}")
        self.folder = Path(folder)
        self.read_also = [Path(f) for f in read_also]
        self.discard_other_settings = discard_other_settings
        self.shard_size = shard_size
        self.counts = {"read": 0, "computed": 0}
        self.touched: set[str] = set()  # shards this cache read or wrote
        self.rejected: dict[str, str] = {}  # shards found whole but unusable, and why

    def shard_files(self) -> list[Path]:
        """The shard files (``.safetensors``) in the folder.

        Returns:
            Their paths, sorted; empty if the folder does not exist.
        """
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.suffix == ".safetensors" and SHARD_FILE.fullmatch(p.name))

    def blocks(self, problems: Sequence[Problem], kind: str, seed: int) -> Iterator[tuple[str, list[int]]]:
        """(shard name, problem indices) for every shard: by split and scale, in the problems' order, ``shard_size`` at a time."""
        groups: dict[tuple[str, int], list[int]] = {}
        for i, p in enumerate(problems):
            groups.setdefault((p.split, p.scale), []).append(i)
        for (split, scale), idx in groups.items():
            for b, start in enumerate(range(0, len(idx), self.shard_size)):
                yield f"seed{seed}-{kind}-{split}-scale{scale}-{b:04d}", idx[start : start + self.shard_size]

    def collect(
        self,
        adapter: ModelAdapter,
        key: dict[str, Any],
        problems: Sequence[Problem],
        encoded: Sequence[EncodedProblem],
        *,
        kind: str,
        seed: int,
        teacher_forcing: bool,
        batch_size: int = 64,
        store_device: str | torch.device | None = None,
        progress: bool = False,
    ) -> ResidualSet:
        """The residuals of ``problems``, read from valid shards and computed (and written) for the rest.

        Returns:
            The residuals of ``problems``, in their order, with the model's size and dtype in ``info``.

        Raises:
            LensDigitsError: ``problems`` is empty, or a shard on disk was made with other settings (unless ``discard_other_settings``).
        """
        problems, encoded = list(problems), list(encoded)
        if not problems:
            raise LensDigitsError("no problems to collect residuals for")
        target_ids = gold_ids(encoded, teacher_forcing)
        device = torch.device(store_device) if store_device is not None else adapter.device
        out = self.assemble(len(problems), adapter.n_layers + 1, target_ids.shape[1], adapter.d_model, device)
        bar = tqdm(total=len(problems), desc=f"residuals ({kind})", unit="problem", disable=not progress)
        info: dict[str, Any] = {}
        for name, idx in self.blocks(problems, kind, seed):
            part = self.block(
                adapter, key, name, [problems[i] for i in idx], [encoded[i] for i in idx], teacher_forcing, batch_size, store_device
            )
            _put(out, idx, part.resid)
            info = info or dict(part.info)
            del part  # one shard at a time is held besides the assembled residuals
            bar.update(len(idx))
        bar.close()
        info.update(n_layers=adapter.n_layers, d_model=adapter.d_model, model_dtype=str(adapter.dtype).replace("torch.", ""))
        return ResidualSet(out, target_ids.to(out.device), problems, encoded, info)

    def assemble(self, n: int, n_columns: int, n_pos: int, d_model: int, device: torch.device) -> Tensor:
        """Zeros to assemble ``n`` problems' residuals in: on the CPU, memory-mapped from a file in the cache folder.

        The file is unlinked as soon as it is mapped, so nothing is left on disk, and the residuals are pages the kernel
        can write out and read back under memory pressure instead of memory the process holds: a sweep whose residuals are
        larger than its memory streams through them.

        Returns:
            Float32 zeros of shape (problems, columns, positions, ``d_model``) on ``device``.
        """
        shape = (n, n_columns, n_pos, d_model)
        if device.type != "cpu" or n * n_columns * n_pos * d_model == 0:
            return torch.zeros(shape, dtype=torch.float32, device=device)
        self._ensure_folder()
        return mapped_zeros(self.folder, shape)

    def block(
        self,
        adapter: ModelAdapter,
        key: dict[str, Any],
        name: str,
        problems: list[Problem],
        encoded: list[EncodedProblem],
        teacher_forcing: bool,
        batch_size: int = 64,
        store_device: str | torch.device | None = None,
    ) -> ResidualSet:
        """One shard's residuals: read back if valid, else computed and written (what another process may do for it).

        Returns:
            The shard's residuals, with its problems and their encodings.
        """
        self.touched.add(name)
        found = self.read(name, key, encoded, store_device)
        if found is not None:
            self.counts["read"] += len(problems)
            return ResidualSet(found[0], found[1], problems, encoded, found[2])
        if name in self.rejected:
            warnings.warn(f"residual shard {name} in {str(self.folder)!r} {self.rejected[name]}: recomputed", stacklevel=user_stacklevel())
        part = collect_residuals(
            adapter, problems, encoded=encoded, teacher_forcing=teacher_forcing, batch_size=batch_size, store_device=store_device
        )
        self.write(name, key, part)
        self.counts["computed"] += len(problems)
        return part

    def load(self, problems: Sequence[Problem], *, kind: str, seed: int, task: dict[str, Any]) -> ResidualSet:
        """Every shard of ``problems`` from disk, without the model (the token ids come from the shards).

        Returns:
            The residuals of ``problems``, in their order, on the CPU.

        Raises:
            LensDigitsError: A shard is missing or damaged, or the shards disagree on their settings or were made for another ``task``.
        """
        key: dict[str, Any] | None = None
        metas = []
        for name, idx in self.blocks(problems, kind, seed):
            meta = self._meta(name)
            if meta is None:
                raise LensDigitsError(
                    f"the residual cache {str(self.folder)!r} has no shard {name} ({kind} residuals of {len(idx)} {problems[idx[0]].split} "
                    "problems); compute it with lens-digits run (train and validation residuals: run with a probe, or --cache-train)"
                )
            if key is None:
                key = meta["key"]
                differs = _difference(task, key.get("task"))
                if differs:
                    raise LensDigitsError(f"the residual cache {str(self.folder)!r} was made for other problems: task.{differs}")
            encoded = [EncodedProblem(tuple(p), tuple(a), d) for p, a, d in meta.get("encoded", [])]
            if len(encoded) != len(idx):
                raise LensDigitsError(self._damaged(name))
            metas.append((name, idx, encoded))
        if key is None:
            raise LensDigitsError("no problems to load residuals for")
        all_encoded: list[Any] = [None] * len(problems)
        for _, idx, encoded in metas:
            for k, i in enumerate(idx):
                all_encoded[i] = encoded[k]
        target_ids = gold_ids(all_encoded, kind != "first")
        out: Tensor | None = None
        info: dict[str, Any] = {}
        for name, idx, encoded in metas:
            found = self.read(name, key, encoded, "cpu")
            if found is None:
                raise LensDigitsError(self._damaged(name))
            if out is None:
                n_columns, d_model = found[0].shape[1], found[0].shape[3]
                out = self.assemble(len(problems), n_columns, target_ids.shape[1], d_model, torch.device("cpu"))
                info = found[2]
            _put(out, idx, found[0])
        assert out is not None
        return ResidualSet(out, target_ids, list(problems), all_encoded, info)

    def _damaged(self, name: str) -> str:
        why = self.rejected.get(name, "is damaged")
        return f"residual shard {name} in {str(self.folder)!r} {why}; run lens-digits run again to recompute it"

    def _meta(self, name: str) -> dict[str, Any] | None:
        try:
            meta = json.loads((self.folder / f"{name}.json").read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) and meta.get("format") == SHARD_FORMAT else None

    def read(
        self, name: str, key: dict[str, Any], encoded: Sequence[EncodedProblem], store_device: Any
    ) -> tuple[Tensor, Tensor, dict[str, Any]] | None:
        """A shard's ``(resid, target_ids, info)`` if it is on disk, whole and made with ``key`` for these token ids; None to compute it.

        Returns:
            ``(resid, target_ids, info)`` from the first folder holding a valid copy (on ``store_device`` if given); None if none does.

        Raises:
            LensDigitsError: The shard was made with other settings (unless ``discard_other_settings``).
        """
        from safetensors.torch import load

        for folder in [self.folder, *self.read_also]:
            meta_path, data_path = folder / f"{name}.json", folder / f"{name}.safetensors"
            if not meta_path.is_file():
                continue
            try:
                meta = json.loads(meta_path.read_text())
                data = data_path.read_bytes()
            except (OSError, ValueError):
                warnings.warn(f"residual shard {name} in {str(folder)!r} cannot be read: computed again", stacklevel=user_stacklevel())
                continue
            if not isinstance(meta, dict) or meta.get("format") != SHARD_FORMAT:
                continue
            differs = _difference(key, meta.get("key"))
            if differs:
                if self.discard_other_settings:
                    if folder == self.folder:  # this run's own folder: the stale shard goes
                        meta_path.unlink(missing_ok=True)
                        data_path.unlink(missing_ok=True)
                    continue
                raise LensDigitsError(
                    f"the residual cache {str(folder)!r} holds shard {name} made with other settings: {differs}. Run with the same "
                    f"settings to resume, or --overwrite to discard it (or --no-cache)"
                )
            if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
                warnings.warn(
                    f"residual shard {name} in {str(folder)!r} fails its checksum (truncated or damaged): computed again",
                    stacklevel=user_stacklevel(),
                )
                continue
            if meta.get("ids") != _ids_hash(encoded):
                continue  # other problems (the model's own answers changed): computed again
            tensors = load(data)
            resid, target_ids = tensors["resid"], tensors["target_ids"]
            bad = count_nonfinite(resid)
            if bad:  # written by hand or by another tool (its checksum updated): residuals this package makes are finite
                self.rejected[name] = f"holds {bad:,} NaN or infinite values"
                continue
            device = torch.device(store_device) if store_device is not None else None
            if device is not None:
                resid, target_ids = resid.to(device), target_ids.to(device)
            return resid, target_ids, dict(meta.get("info", {}))
        return None

    def write(self, name: str, key: dict[str, Any], part: ResidualSet) -> None:
        """Write one shard: the tensors, then the sidecar that makes it valid."""
        from safetensors.torch import save

        self._ensure_folder()
        data = save({"resid": part.resid.detach().cpu().contiguous(), "target_ids": part.target_ids.cpu().contiguous()})
        meta = {
            "format": SHARD_FORMAT,
            "key": key,
            "sha256": hashlib.sha256(data).hexdigest(),
            "ids": _ids_hash(part.encoded),
            "encoded": [[list(e.prompt_ids), list(e.answer_ids), e.first_token_digits] for e in part.encoded],
            "n": len(part),
            "info": part.info,
        }
        atomic.write_file(self.folder / f"{name}.safetensors", data)
        atomic.write_file(self.folder / f"{name}.json", (json.dumps(meta, indent=1, sort_keys=True, default=str) + "\n").encode())

    @classmethod
    def for_run_directory(cls, target: Path, *, overwrite: bool, shard_size: int = SHARD_SIZE) -> "ResidualCache":
        """The cache of a run into ``target``.

        Shards of a killed run are resumed (kept beside it, see :func:`~lens_digits.storage.paths.pending_cache`), those of
        the run it replaces reused (``target/cache``); with ``overwrite`` shards of other settings are discarded instead of refused.

        Returns:
            A cache writing into the pending cache beside ``target`` and also reading ``target/cache`` if it exists.
        """
        done = target / CACHE_FOLDER
        return cls(
            pending_cache(target), read_also=[done] if done.is_dir() else [], discard_other_settings=overwrite, shard_size=shard_size
        )

    def take_over(self, info: dict[str, Any]) -> None:
        """Before the run directory is written: take over the shards this run used.

        They move from the ``read_also`` folders into this cache's own (the old
        run directory goes), and the run's ``info`` notes that they will be its ``cache/``.
        """
        info["cache"] = {**info.get("cache", {}), "folder": CACHE_FOLDER}
        self._ensure_folder(parents=False)  # a folder removed meanwhile is an error, not made again empty
        for folder in self.read_also:
            for name in sorted(self.touched):
                meta, data = folder / f"{name}.json", folder / f"{name}.safetensors"
                if meta.is_file() and data.is_file() and not (self.folder / f"{name}.json").exists():
                    os.replace(data, self.folder / data.name)
                    os.replace(meta, self.folder / meta.name)

    def _ensure_folder(self, parents: bool = True) -> None:
        """Create the folder (and its ``parents``); a symbolic link where it should be is refused, never written through.

        Raises:
            OutputError: The folder is a symbolic link (before or after it is created) or a file.
        """
        link = "is a symbolic link; lens-digits never writes through one: remove it, or choose another --out"
        if self.folder.is_symlink():
            raise OutputError(f"the residual cache folder {str(self.folder)!r} {link}")
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputError(f"the residual cache folder {str(self.folder)!r} is a file; move it away or choose another --out")
        self.folder.mkdir(parents=parents, exist_ok=True)
        if self.folder.is_symlink():  # made a link by someone else between the check and the mkdir
            raise OutputError(f"the residual cache folder {str(self.folder)!r} {link}")

    def discard_if_empty(self) -> None:
        """Remove the folder if it holds no shard (a run that stopped before its first one): nothing is left behind."""
        if self.folder.is_symlink() or not self.folder.is_dir():
            return
        self.clear_partial(include_own=True)
        with contextlib.suppress(OSError):
            self.folder.rmdir()  # fails, keeping everything, if any shard is there

    def clear_partial(self, include_own: bool = False) -> None:
        """Remove temporary files that runs left in the folder when they were killed (those of live processes stay)."""
        if self.folder.is_dir():
            for p in self.folder.iterdir():
                if p.name.startswith(".") and p.name.endswith(".part") and (not alive(p.name) or (include_own and own(p.name))):
                    p.unlink(missing_ok=True)


def _put(out: Tensor, idx: list[int], resid: Tensor) -> None:
    """Copy one shard's residuals into their rows (a shard's answer positions may be fewer than the longest)."""
    if idx == list(range(idx[0], idx[0] + len(idx))):
        out[idx[0] : idx[0] + len(idx), :, : resid.shape[2]] = resid.to(out.device)
    else:
        out[torch.tensor(idx, dtype=torch.long, device=out.device), :, : resid.shape[2]] = resid.to(out.device)
