"""The tuned lens (Belrose et al. 2023): an affine translator per layer before the model's own readout.

Layer column ``l < n_layers`` is read as ``readout(h + h W_l^T + b_l)``, with
``W_l`` and ``b_l`` zero at the start (the identity: the logit lens); the last
column, the final residual, has no translator, so it is the model's own
prediction. The translators are trained to match the model's final-layer
distribution (KL divergence from it), all layers in one optimisation on the
residuals' device, at every position of the training text: the sweep's train
problems (prompt and answer) by default, or a corpus (a text file, one document
per line, or a ``datasets`` folder with a ``text`` column).

Saved as ``tuned_lens.safetensors`` + ``tuned_lens.json``; :meth:`TunedLens.load`
also reads lenses published by the tuned-lens library (``config.json`` +
``params.pt``, read with ``weights_only=True``), whose translators have the
same form (``h + translator(h)``) and the same layer numbering.
"""

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from lens_digits.errors import LensDigitsError, NonFiniteError, first_line
from lens_digits.methods.base import register_method
from lens_digits.methods.lenses.base import WITHIN, Lens
from lens_digits.model.adapter import ModelAdapter
from lens_digits.model.batching import length_batches
from lens_digits.model.finite import check_finite
from lens_digits.model.readout import Readout
from lens_digits.residuals.collect import ResidualSet

FORMAT = "lens_digits.tuned_lens/1"


class _Stop(Exception):
    pass


@torch.inference_mode()
def all_positions(
    adapter: ModelAdapter, sequences: Sequence[Sequence[int]], batch_size: int = 32, max_positions: int = 8192, seed: int = 0
) -> Float[Tensor, "position layer d_model"]:
    """Every position's residual at every layer column of token sequences (a seeded sample of ``max_positions``).

    Kept in the model's dtype on the model's device; the forward pass stops at the final residual.

    Returns:
        The residuals, of shape (position, layer column, d_model): one row per kept position.
    """
    names = adapter.resid_hook_names
    kept: list[Tensor] = []
    for rows in length_batches([len(s) for s in sequences], batch_size):
        tokens = torch.tensor([list(sequences[i]) for i in rows], dtype=torch.long, device=adapter.device)
        layers: list[Tensor] = []

        def keep(x: Tensor, hook: Any, layers: list[Tensor] = layers) -> None:
            layers.append(x.reshape(-1, x.shape[-1]).to(adapter.device))

        def stop(x: Tensor, hook: Any) -> None:
            raise _Stop

        try:
            adapter.run_with_hooks(tokens, [(name, keep) for name in names] + [(names[-1], stop)])
        except _Stop:
            pass
        kept.append(torch.stack(layers, 1))  # (B*T, layer, d)
    x = torch.cat(kept)
    if len(x) > max_positions:
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:max_positions]
        x = x[pick.to(x.device)]
    return x


def read_corpus(path: str | os.PathLike[str]) -> list[str]:
    """Documents of a text file (one per non-empty line) or of a ``datasets`` folder's ``text`` column.

    Returns:
        The non-empty documents (a text file's lines stripped).

    Raises:
        LensDigitsError: Nothing is at ``path``, or it is a folder and ``datasets`` is not installed or it has no ``text`` column.
    """
    path = Path(path).expanduser()
    if path.is_file():
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.is_dir():
        try:
            from datasets import load_from_disk
        except ImportError:
            raise LensDigitsError(f"{str(path)!r} is a folder: reading a datasets folder needs `pip install datasets`") from None
        data = load_from_disk(str(path))
        if hasattr(data, "keys") and "train" in data:
            data = data["train"]
        if "text" not in data.column_names:
            raise LensDigitsError(f"the dataset at {str(path)!r} has no 'text' column (columns: {data.column_names})")
        return [t for t in data["text"] if t and t.strip()]
    raise LensDigitsError(f"no corpus at {str(path)!r}: pass a text file (one document per line) or a datasets folder")


@register_method
class TunedLens(Lens):
    """A tuned lens over a TransformerLens model, trained on the sweep's train problems or a corpus.

    Args:
        readout: The model's readout (final norm, unembedding, output transforms).
        model: The model (or adapter): the lens runs it on its training text.
        steps: Optimiser steps (Adam).
        lr: Adam's learning rate.
        batch_size: Positions per step (all layers together).
        corpus: Train on this text (a file or a datasets folder) instead of the train problems.
        max_positions: Most training positions kept (a seeded sample).
        max_length: Longest corpus document, in tokens (longer ones are cut).
        seed: Seeds the position sample and minibatches.
        progress: Show the training steps.
        within: The k of the ``within_k`` numeric scores (see :class:`~lens_digits.methods.lenses.base.Lens`).
    """

    name = "tuned_lens"
    uses = {"seed": "seed", "progress": "progress", "within": "within"}

    def __init__(
        self,
        readout: Readout,
        model: "ModelAdapter | None" = None,
        *,
        steps: int = 300,
        lr: float = 1e-3,
        batch_size: int = 256,
        corpus: str | None = None,
        max_positions: int = 8192,
        max_length: int = 128,
        seed: int = 0,
        progress: bool = False,
        within: Sequence[int] = WITHIN,
    ) -> None:
        """An untrained (identity) lens; :meth:`fit` trains it unless it was loaded.

        Raises:
            LensDigitsError: ``steps``, ``batch_size``, ``max_positions`` or ``max_length`` is not a positive integer, or ``lr`` is
                not positive.
        """
        super().__init__(readout, within=within)
        self.adapter = model
        for name, value in (("steps", steps), ("batch_size", batch_size), ("max_positions", max_positions), ("max_length", max_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LensDigitsError(f"{name} must be a positive integer, got {value!r}")
        if not lr > 0:
            raise LensDigitsError(f"lr must be positive, got {lr!r}")
        self.steps, self.lr, self.batch_size = steps, float(lr), batch_size
        self.corpus, self.max_positions, self.max_length, self.seed, self.progress = corpus, max_positions, max_length, seed, progress
        self.W: Tensor | None = None  # (layer, d, d): h' = h + h W^T + b
        self.b: Tensor | None = None  # (layer, d)
        self.trained = False
        self.info: dict[str, Any] = {}

    @classmethod
    def from_model(cls, model: Any, path: str | None = None, **options: Any) -> "TunedLens":  # type: ignore[override]
        """A tuned lens for ``model``: trained in :meth:`fit`, or loaded from ``path`` (ours, or tuned-lens's format).

        Returns:
            The lens.

        Raises:
            LensDigitsError: ``model`` is None, or :meth:`load` cannot use the lens at ``path``.
            NonFiniteError: The lens at ``path`` holds NaN or infinite values.
        """
        if model is None:
            raise LensDigitsError("the tuned lens reads through the model's unembedding and trains by running it: give the model")
        if path is not None:
            return cls.load(path, model, **options)
        adapter = ModelAdapter.wrap(model)  # a user's entry point too: the TransformerLens model itself works
        return cls(Readout(adapter), adapter, **options)

    # ---- reading ---------------------------------------------------------------------------------

    def transform_hidden(self, resid: Float[Tensor, "*batch d_model"], layer: int) -> Float[Tensor, "*batch d_model"]:
        """``h + h W^T + b`` for layer columns with a translator; the final residual as it is.

        Returns:
            The translated residuals, in the translators' dtype and device.
        """
        if self.W is None or self.b is None or layer >= self.W.shape[0]:
            return resid
        W, b = self.W[layer], self.b[layer]
        h = resid.to(W.device, W.dtype)
        return h + h @ W.T + b

    translate = transform_hidden
    """The name of :meth:`transform_hidden` before 0.2."""

    # ---- training --------------------------------------------------------------------------------

    def fit(self, train: ResidualSet, val: ResidualSet) -> None:
        """Train the translators, unless the lens was loaded (the base class notes the baseline).

        Raises:
            LensDigitsError: The lens was built without its model, the corpus cannot be read, or there is no training text.
            NonFiniteError: Training diverged (see :meth:`train_on`).
        """
        if self.trained:
            return
        if self.adapter is None:
            raise LensDigitsError("a tuned lens trains by running its model: build it with TunedLens.from_model(model)")
        if self.corpus is not None:
            tok = self.adapter.tokenizer
            bos = self.adapter.bos_id()
            limit = min(self.max_length, self.adapter.n_ctx or self.max_length)
            ids = tok(read_corpus(self.corpus), add_special_tokens=False)["input_ids"]
            sequences = [([] if bos is None else [bos]) + list(x)[: limit - (bos is not None)] for x in ids if len(x) > 0]
            source = f"corpus {self.corpus} ({len(sequences)} documents)"
        else:
            sequences = [list(e.prompt_ids) + list(e.answer_ids) for e in train.encoded]
            source = f"the sweep's train problems ({len(sequences)}, prompt and answer)"
        if not sequences:
            raise LensDigitsError("the tuned lens has no training text: ask for train problems (n_train > 0) or pass a corpus")
        self.train_on(sequences)
        self.info["trained_on"] = source

    def train_on(self, sequences: Sequence[Sequence[int]]) -> None:
        """Fit every layer's translator at once: Adam on the KL divergence from the final layer's distribution.

        Raises:
            NonFiniteError: Training diverged: the translators of some layer column are not finite.
        """
        adapter, readout = self.adapter, self.readout
        assert adapter is not None and readout is not None
        started = time.perf_counter()
        x = all_positions(adapter, sequences, max_positions=self.max_positions, seed=self.seed).clone()  # (P, L+1, d)
        n_layers, d = adapter.n_layers, adapter.d_model
        device = x.device
        W = torch.zeros(n_layers, d, d, device=device, requires_grad=True)
        b = torch.zeros(n_layers, d, device=device, requires_grad=True)
        optimiser = torch.optim.Adam([W, b], lr=self.lr)
        gen = torch.Generator().manual_seed(self.seed)
        frozen = [p for p in adapter.model.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        losses = []
        try:
            with torch.inference_mode(False), torch.enable_grad():
                bar = tqdm(range(self.steps), desc="training tuned lens", unit="step", disable=not self.progress)
                for _ in bar:
                    pick = torch.randint(len(x), (min(self.batch_size, len(x)),), generator=gen).to(device)
                    batch = x[pick].float()  # (B, L+1, d)
                    with torch.no_grad():
                        target = readout.logits(batch[:, -1]).float().log_softmax(-1)  # (B, V): the model's own
                    h = batch[:, :-1].transpose(0, 1)  # (L, B, d)
                    h = h + torch.baddbmm(b[:, None, :], h, W.transpose(1, 2))
                    logp = readout.logits(h.reshape(-1, d)).float().log_softmax(-1).view(n_layers, len(pick), -1)
                    loss = (target.exp()[None] * (target[None] - logp)).sum(-1).mean(-1).sum()  # sum over layers of mean KL
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    losses.append(float(loss.detach()) / n_layers)
                    bar.set_postfix(kl=f"{losses[-1]:.4f}", refresh=False)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        W, b = W.detach(), b.detach()
        finite = torch.isfinite(W).flatten(1).all(1) & torch.isfinite(b).all(1)  # (layer,)
        if not bool(finite.all()):
            first = int((~finite).nonzero()[0])
            raise NonFiniteError(
                f"training the tuned lens diverged: the translators of {int((~finite).sum())} layer column(s), from column {first}, "
                f"are not finite; lower its learning rate (decoder_options={{'tuned_lens': {{'lr': {self.lr / 10:g}}}}})"
            )
        self.W, self.b = W, b
        self.trained = True
        self.info.update(
            steps=self.steps,
            positions=len(x),
            mean_kl_first=round(losses[0], 5) if losses else None,
            mean_kl_last=round(sum(losses[-10:]) / max(1, len(losses[-10:])), 5) if losses else None,
            seconds=round(time.perf_counter() - started, 2),
        )

    # ---- settings, files -------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Recipe and training record, for ``run.json`` (beside the readout every lens records).

        Returns:
            ``steps``, ``lr``, ``batch_size``, ``corpus``, ``seed`` and ``trained``, then what training or loading recorded.
        """
        out = {"steps": self.steps, "lr": self.lr, "batch_size": self.batch_size, "corpus": self.corpus, "seed": self.seed}
        return out | {"trained": self.trained} | self.info

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``tuned_lens.safetensors`` (translators) and ``tuned_lens.json`` into folder ``path``.

        Returns:
            The folder, created if needed.

        Raises:
            LensDigitsError: The lens has no translators yet.
        """
        from safetensors.torch import save_file

        if self.W is None or self.b is None:
            raise LensDigitsError("the tuned lens has no translators yet: fit it (or load one) first")
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"W": self.W.cpu().contiguous(), "b": self.b.cpu().contiguous()}, str(folder / "tuned_lens.safetensors"))
        meta = {"format": FORMAT, "d_model": int(self.W.shape[-1]), "n_layers": int(self.W.shape[0])} | self.settings()
        (folder / "tuned_lens.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: Any, **options: Any) -> "TunedLens":
        """A trained lens from ``path``: one :meth:`save` wrote, or a tuned-lens library folder (``config.json`` + ``params.pt``).

        Returns:
            The lens, trained, with its translators on the model's device.

        Raises:
            LensDigitsError: No lens there, it cannot be read, or its width or layer count differs from the model's.
            NonFiniteError: Its translators hold NaN or infinite values.
        """
        folder = Path(path).expanduser()
        adapter = ModelAdapter.wrap(model)  # an entry point: a user may pass the TransformerLens model
        lens = cls(Readout(adapter), adapter, **options)
        try:
            if (folder / "tuned_lens.safetensors").is_file():
                from safetensors.torch import load_file

                meta = json.loads((folder / "tuned_lens.json").read_text())
                if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                    shown = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
                    raise LensDigitsError(f"{str(folder)!r} holds format {shown!r}, not {FORMAT!r}")
                t = load_file(str(folder / "tuned_lens.safetensors"))
                missing = [k for k in ("W", "b") if k not in t]
                if missing:
                    raise LensDigitsError(f"the tuned lens at {str(folder)!r} lacks tensor(s) {missing}; save it again")
                W, b = t["W"], t["b"]
                lens.info = {"loaded_from": str(folder), "trained_on": meta.get("trained_on")}
            elif (folder / "params.pt").is_file() and (folder / "config.json").is_file():
                config = json.loads((folder / "config.json").read_text())
                state = torch.load(folder / "params.pt", map_location="cpu", weights_only=True)
                if not isinstance(config, dict) or not isinstance(state, dict):
                    raise LensDigitsError(f"the tuned lens at {str(folder)!r} is not a tuned-lens folder (config.json and params.pt)")
                n = int(config.get("num_hidden_layers", adapter.n_layers))
                W = torch.stack([state[f"{i}.weight"] for i in range(n)]).float()
                b = torch.stack([state.get(f"{i}.bias", torch.zeros(W.shape[-1])) for i in range(n)]).float()
                lens.info = {
                    "loaded_from": str(folder),
                    "format": "tuned-lens library",
                    "base_model": config.get("base_model_name_or_path"),
                }
            else:
                raise LensDigitsError(
                    f"no tuned lens at {str(folder)!r}: it needs tuned_lens.safetensors + tuned_lens.json, or config.json + params.pt"
                )
        except LensDigitsError:
            raise
        except Exception as e:  # JSON, safetensors, pickle and torch errors of a damaged file; the user needs one line
            raise LensDigitsError(
                f"the tuned lens at {str(folder)!r} cannot be read ({first_line(e)}); save or download it again"
            ) from None
        if not isinstance(W, Tensor) or W.shape != (adapter.n_layers, adapter.d_model, adapter.d_model):
            raise LensDigitsError(
                f"the lens at {str(folder)!r} has translators of shape {tuple(getattr(W, 'shape', ()))}, but the model has "
                f"{adapter.n_layers} layers of width {adapter.d_model} (shape {(adapter.n_layers, adapter.d_model, adapter.d_model)}): "
                "it was made for another model"
            )
        if not isinstance(b, Tensor) or b.shape != (adapter.n_layers, adapter.d_model):
            raise LensDigitsError(
                f"the lens at {str(folder)!r} has biases of shape {tuple(getattr(b, 'shape', ()))}, not "
                f"{(adapter.n_layers, adapter.d_model)}: the file is damaged or made for another model"
            )
        for name, tensor in (("translator weights", W), ("translator biases", b)):
            check_finite(tensor, f"the tuned lens at {str(folder)!r}: its {name}", "it cannot read anything; train it or download it again")
        lens.W, lens.b = W.to(adapter.device), b.to(adapter.device)
        lens.trained = True
        return lens
