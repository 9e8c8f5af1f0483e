"""The Jacobian lens (Gurnee et al. 2026), as TransformerLens fits, saves and reads it, on the digit-scale grid.

Layer column ``l`` is read as ``readout(J h)``: the model's own final norm,
unembedding and output transforms after ``J``, the mean Jacobian of the final
residual with respect to the residual at that column over a corpus
(:class:`transformer_lens.tools.analysis.JacobianLens`). With ``J = I`` it is the
logit lens exactly. Everything about ``J`` is TransformerLens' own: the
estimator (:meth:`~transformer_lens.tools.analysis.JacobianLens.fit`), the
transport (``transport``), the file format (``save`` / ``load``, the format of
the published lenses, so one downloaded into a folder loads offline) and the
model checks (a raw ``TransformerBridge``); this module is the glue that puts it
on the package's grid, with the baseline, digit places and numbers every lens gets.

Layer numbering: TransformerLens' lens layer ``k`` is the output of block ``k``
(``blocks.{k}.hook_out``), which is this package's column ``k + 1``. Column 0
(the embeddings, before any block) has no Jacobian in TransformerLens' format:
it is read as the logit lens reads it. The last column is the final residual,
read as it is (TransformerLens does the same), so it is the model's own prediction.

The lens is fitted on the sweep's train problems (prompt and answer, a seeded
sample of at most ``max_prompts``) or on a corpus (a text file, one document
per line, or a ``datasets`` folder). It needs a TransformerLens with ``tools.analysis``
(3.9 and 4.3 have it); without one, building it raises :class:`~lens_digits.errors.TransformerLensVersionError`.
"""

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from lens_digits.errors import LensDigitsError, NonFiniteError, first_line
from lens_digits.methods.base import register_method
from lens_digits.methods.lenses.base import WITHIN, Lens
from lens_digits.methods.lenses.tuned import read_corpus
from lens_digits.model.adapter import ModelAdapter
from lens_digits.model.loading import analysis_tools
from lens_digits.model.readout import Readout
from lens_digits.residuals.collect import ResidualSet
from lens_digits.storage.atomic import write_file

FILENAME = "jacobian_lens.pt"
"""The file :meth:`JacobianLens.save` writes in a folder (TransformerLens' artifact format)."""


def _refusal(e: Exception) -> str:
    """TransformerLens' refusal of a model or a file, as one line naming what to do.

    Returns:
        The message of the error to raise.
    """
    return (
        f"TransformerLens' Jacobian lens refuses this ({first_line(e)}); it needs a TransformerBridge loaded with raw weights "
        "(lens_digits.load_model, no compatibility mode) and a lens fitted for that model"
    )


@register_method
class JacobianLens(Lens):
    """A Jacobian lens through TransformerLens' ``JacobianLens``: fitted on the train problems or a corpus, or loaded.

    Args:
        readout: The model's readout (final norm, unembedding, output transforms).
        model: The model (or adapter): fitting runs it.
        corpus: Fit on this text (a file or a datasets folder) instead of the train problems.
        max_prompts: Most texts fitted on (a seeded sample); TransformerLens' authors find about 100 enough.
        max_length: Longest text, in tokens (longer ones are cut).
        dim_batch: Output dimensions per backward pass of the fit (memory, not results).
        skip_first: Leading positions of each text left out of the fit's average (1: the BOS).
        identity: Use the identity in place of every Jacobian (the logit lens through the same code); nothing is fitted.
        seed: Seeds the sample of texts.
        progress: Show the fit's progress.
        within: The k of the ``within_k`` numeric scores (see :class:`~lens_digits.methods.lenses.base.Lens`).

    >>> import lens_digits as ld
    >>> model = ld.testing.tiny_model()
    >>> lens = JacobianLens.from_model(model, max_prompts=20)
    >>> grid = ld.run_sweep(model, scales=[1], n_per_scale=5, methods=[lens, "logit_lens"], target="first", n_boot=10)
    >>> lens.settings()["n_prompts"], lens.settings()["columns"]
    (15, [1])
    """

    name = "jacobian_lens"
    uses = {"seed": "seed", "progress": "progress", "within": "within"}

    def __init__(
        self,
        readout: Readout,
        model: "ModelAdapter | None" = None,
        *,
        corpus: str | None = None,
        max_prompts: int = 200,
        max_length: int = 128,
        dim_batch: int = 32,
        skip_first: int = 1,
        identity: bool = False,
        seed: int = 0,
        progress: bool = False,
        within: Sequence[int] = WITHIN,
    ) -> None:
        """An unfitted lens (or, with ``identity``, one with ``J = I``); :meth:`fit` fits it unless it was loaded.

        Raises:
            TransformerLensVersionError: The installed TransformerLens has no ``tools.analysis`` (before 3.9).
            LensDigitsError: ``max_prompts``, ``max_length`` or ``dim_batch`` is not a positive integer, or ``skip_first`` is negative.
        """
        analysis_tools(self.name)
        super().__init__(readout, within=within)
        for key, value, least in (("max_prompts", max_prompts, 1), ("max_length", max_length, 2), ("dim_batch", dim_batch, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise LensDigitsError(f"{key} must be an integer of at least {least}, got {value!r}")
        if isinstance(skip_first, bool) or not isinstance(skip_first, int) or skip_first < 0:
            raise LensDigitsError(f"skip_first must be a non-negative integer, got {skip_first!r}")
        self.adapter = model
        self.corpus, self.max_prompts, self.max_length, self.dim_batch = corpus, max_prompts, max_length, dim_batch
        self.skip_first, self.identity, self.seed, self.progress = skip_first, bool(identity), seed, progress
        self.lens: Any = None  # TransformerLens' JacobianLens once fitted, loaded or made the identity
        self.info: dict[str, Any] = {}
        if self.identity:
            if model is None:
                raise LensDigitsError("an identity Jacobian lens needs its model (its width and depth): JacobianLens.from_model(model)")
            tl = analysis_tools(self.name).JacobianLens
            eye = torch.eye(model.d_model)
            self.lens = tl({k: eye for k in range(model.n_layers - 1)}, n_prompts=1, d_model=model.d_model, metadata={"identity": True})
            self.info = {"identity": True}

    @classmethod
    def from_model(cls, model: Any, path: str | None = None, **options: Any) -> "JacobianLens":  # type: ignore[override]
        """A Jacobian lens for ``model``: fitted in :meth:`fit`, or loaded from ``path`` (a ``.pt`` file or a folder holding one).

        Returns:
            The lens.

        Raises:
            TransformerLensVersionError: The installed TransformerLens has no ``tools.analysis`` (before 3.9).
            LensDigitsError: ``model`` is None, or :meth:`load` cannot use the lens at ``path``.
        """
        analysis_tools(cls.name)
        if model is None:
            raise LensDigitsError("the Jacobian lens reads through the model's unembedding and fits by running it: give the model")
        if path is not None:
            return cls.load(path, model, **options)
        adapter = ModelAdapter.wrap(model)
        return cls(Readout(adapter), adapter, **options)

    # ---- reading ---------------------------------------------------------------------------------

    def tl_layer(self, column: int) -> int | None:
        """TransformerLens' lens layer of layer column ``column`` (None: read as it is, the first and last columns).

        Returns:
            ``column - 1`` where the lens has a Jacobian for it, else None.
        """
        if self.lens is None or column < 1 or (column - 1) not in self.lens.jacobians:
            return None
        return column - 1

    def transform_hidden(self, resid: Float[Tensor, "*batch d_model"], layer: int) -> Float[Tensor, "*batch d_model"]:
        """``J h`` by TransformerLens' ``transport`` (float32) at columns with a Jacobian; other columns as they are.

        Returns:
            The transported residuals.
        """
        k = self.tl_layer(layer)
        return resid if k is None else self.lens.transport(resid, k)

    # ---- fitting ---------------------------------------------------------------------------------

    def fit(self, train: ResidualSet, val: ResidualSet) -> None:
        """Fit with TransformerLens' estimator, unless the lens was loaded or is the identity.

        Raises:
            LensDigitsError: No model, no text to fit on, the corpus cannot be read, or TransformerLens refuses the model.
            NonFiniteError: The fitted Jacobians are not finite.
        """
        if self.lens is not None:
            return
        if self.adapter is None:
            raise LensDigitsError("a Jacobian lens fits by running its model: build it with JacobianLens.from_model(model)")
        if self.corpus is not None:
            texts = read_corpus(self.corpus)
            source = f"corpus {self.corpus}"
        else:
            texts = [p.prompt + p.answer_prefix + p.answer for p in train.problems]
            source = "lens_digits train problems (prompt and answer)"
        if not texts:
            raise LensDigitsError("the Jacobian lens has nothing to fit on: ask for train problems (n_train > 0) or pass a corpus")
        if len(texts) > self.max_prompts:
            pick = torch.randperm(len(texts), generator=torch.Generator().manual_seed(self.seed))[: self.max_prompts]
            texts = [texts[i] for i in sorted(pick.tolist())]
        self.fit_on(texts, source)

    def fit_on(self, texts: Sequence[str], corpus: str) -> None:
        """Fit on ``texts`` (TransformerLens' ``JacobianLens.fit``); ``corpus`` names them in the lens's provenance.

        Raises:
            LensDigitsError: TransformerLens refuses the model, or every text is too short.
            NonFiniteError: The fitted Jacobians are not finite.
        """
        assert self.adapter is not None
        tl = analysis_tools(self.name).JacobianLens
        model = self.adapter.model
        try:
            lens = tl.fit(
                model,
                list(texts),
                corpus=corpus,
                dim_batch=min(self.dim_batch, self.adapter.d_model),
                max_seq_len=self.max_length,
                skip_first_positions=self.skip_first,
                show_progress=self.progress,
            )
        except (TypeError, ValueError) as e:
            raise LensDigitsError(_refusal(e)) from None
        self._check(lens, "fitting")
        self.lens = lens
        self.info = {"fitted_on": corpus, "n_prompts": lens.n_prompts}

    def _check(self, lens: Any, what: str) -> None:
        """Refuse a lens with a NaN or infinite Jacobian.

        Raises:
            NonFiniteError: Some layer's Jacobian is not finite; the message names the first such column.
        """
        bad = [k for k, m in sorted(lens.jacobians.items()) if not bool(torch.isfinite(m).all())]
        if bad:
            raise NonFiniteError(
                f"{what} the Jacobian lens gave non-finite Jacobians at {len(bad)} layer column(s), from column {bad[0] + 1}; "
                "fit it again on a float32 model, or download it again"
            )

    # ---- settings, files -------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """How the lens was made, for ``run.json``: the recipe, then what fitting or loading recorded (TransformerLens' metadata).

        Returns:
            ``corpus``, ``max_prompts``, ``skip_first``, ``identity``, ``source_layers`` (as columns), the record, and ``metadata``.
        """
        out: dict[str, Any] = {"corpus": self.corpus, "max_prompts": self.max_prompts, "skip_first": self.skip_first}
        out |= {"identity": self.identity, "seed": self.seed} | self.info
        if self.lens is not None:
            out["columns"] = [k + 1 for k in self.lens.source_layers]
            out["metadata"] = {k: v for k, v in self.lens.metadata.items() if isinstance(v, (str, int, float, bool, type(None)))}
        return out

    def save(self, path: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> Path:
        """Write the lens in TransformerLens' artifact format: ``path`` itself if it ends in ``.pt``, else ``path/jacobian_lens.pt``.

        ``dtype``: the Jacobians' storage dtype (TransformerLens' own default is float16).

        Returns:
            The file written (atomically).

        Raises:
            LensDigitsError: The lens has no Jacobians yet.
        """
        if self.lens is None:
            raise LensDigitsError("the Jacobian lens has no Jacobians yet: fit it (or load one) first")
        target = Path(path)
        if target.suffix != ".pt":
            target.mkdir(parents=True, exist_ok=True)
            target = target / FILENAME
        buffer = io.BytesIO()
        self.lens.save(buffer, dtype=dtype)  # torch.save takes a file object as well as a path
        write_file(target, buffer.getvalue())
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: Any, **options: Any) -> "JacobianLens":
        """A lens from a ``.pt`` file in TransformerLens' format, or a folder holding ``jacobian_lens.pt`` (or one ``.pt`` file).

        A published lens, downloaded by the user, loads offline this way; TransformerLens checks it against the model.

        Returns:
            The lens, fitted.

        Raises:
            LensDigitsError: Nothing to load at ``path``, the file cannot be read, or it was made for another model.
            NonFiniteError: Its Jacobians are not finite.
        """
        adapter = ModelAdapter.wrap(model)
        lens = cls(Readout(adapter), adapter, **options)
        where = Path(path).expanduser()
        if where.is_dir():
            found = [where / FILENAME] if (where / FILENAME).is_file() else sorted(where.glob("*.pt"))
            if len(found) != 1:
                raise LensDigitsError(f"{str(where)!r} holds {len(found)} .pt files and no {FILENAME}: pass the lens's file itself")
            where = found[0]
        if not where.is_file():
            raise LensDigitsError(f"no Jacobian lens at {str(where)!r}: pass a .pt file in TransformerLens' format or a folder with one")
        tl = analysis_tools(cls.name).JacobianLens
        try:
            loaded = tl.from_pretrained(str(where), model=adapter.model)
        except (TypeError, ValueError) as e:
            if "does not look like" in str(e) or "fitted for" in str(e) or "belongs to" in str(e):
                raise LensDigitsError(f"the Jacobian lens at {str(where)!r} cannot be used: {first_line(e)}") from None
            raise LensDigitsError(_refusal(e)) from None
        except Exception as e:  # pickle, zip and torch errors of a damaged file: one line
            raise LensDigitsError(f"the Jacobian lens at {str(where)!r} cannot be read ({first_line(e)}); save or download it again") from e
        lens._check(loaded, "loading")
        lens.lens = loaded
        lens.info = {"loaded_from": str(where), "n_prompts": loaded.n_prompts}
        return lens
