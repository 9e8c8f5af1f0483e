"""Collect the residual stream of every layer at the answer positions.

Layer ``l < n_layers`` is ``blocks.{l}.hook_resid_pre`` (the residual entering
block ``l``); layer ``n_layers`` is ``blocks.{n_layers-1}.hook_resid_post``, the
final residual. Hooks copy out only the positions the decoders read, so what is
kept is ``problem x (n_layers+1) x positions x d_model`` and nothing else; the
rest of each batch's activations is freed with the batch.

Position ``j`` of a problem is the one that predicts answer token ``j``:
position 0 is the last prompt token (target ``first``, and what probes read),
positions ``1..`` exist only under teacher forcing (target ``answer``).

Problems are batched by equal token length, so no padding is ever needed and
every batch gives exactly what the same problems would give one at a time. The
forward pass stops at the final residual: the model's final norm and its
unembedding over every position (the largest matrix product of a big
vocabulary) are never run, since nothing reads them.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from lens_digits.errors import LensDigitsError
from lens_digits.model.adapter import ModelAdapter
from lens_digits.model.batching import length_batches
from lens_digits.model.finite import raise_nonfinite_residuals
from lens_digits.problems.targets import EncodedProblem, encode_for_model
from lens_digits.problems.tasks import Problem


@dataclass
class ResidualSet:
    """Residuals at the answer positions of a set of problems, for every layer.

    Attributes:
        resid: ``resid[i, l, j]`` is the residual at layer ``l`` at the position
            that predicts answer token ``j`` of problem ``i`` (zeros past the
            answer's end).
        target_ids: Gold token each position should predict; ``-1`` past the end.
        problems: The problems, in the same order.
        encoded: Their token ids.
    """

    resid: Float[Tensor, "problem layer pos d_model"]
    target_ids: Int[Tensor, "problem pos"]
    problems: list[Problem]
    encoded: list[EncodedProblem]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Check that the parts agree.

        Raises:
            ValueError: ``resid``, ``target_ids``, ``problems`` and ``encoded`` do not have one entry per problem.
        """
        if not (self.resid.shape[0] == self.target_ids.shape[0] == len(self.problems) == len(self.encoded)):
            raise ValueError("resid, target_ids, problems and encoded must have one entry per problem")

    def __len__(self) -> int:
        """Number of problems.

        Returns:
            The number of problems.
        """
        return len(self.problems)

    @property
    def has_residuals(self) -> bool:
        """False for a set of tokens only (see :func:`tokens_only`)."""
        return self.resid.shape[-1] > 0

    @property
    def n_columns(self) -> int:
        """Number of layer columns: the model's ``n_layers + 1`` (block inputs, then the final residual)."""
        return self.resid.shape[1]

    @property
    def answer_mask(self) -> Bool[Tensor, "problem pos"]:
        """True at positions that predict an answer token."""
        return self.target_ids >= 0

    @property
    def first_token_digits(self) -> list[int] | None:
        """Digits of each answer that its first token holds (None if unknown for some problem)."""
        digits = [e.first_token_digits for e in self.encoded]
        return None if any(d is None for d in digits) else digits  # type: ignore[return-value]

    @property
    def scales(self) -> Int[Tensor, " problem"]:
        """Digit scale of each problem."""
        return torch.tensor([p.scale for p in self.problems], dtype=torch.long)

    def select(self, index: Sequence[int] | Tensor) -> "ResidualSet":
        """A subset of the problems, in the given order.

        A run of consecutive problems is a view of these residuals (no copy: a
        memory-mapped set stays mapped); any other subset is a copy.

        Returns:
            A new set of the problems at ``index``, with a copy of ``info``.
        """
        idx = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        keep = idx.tolist()
        if keep and keep == list(range(keep[0], keep[0] + len(keep))):
            rows: slice | Tensor = slice(keep[0], keep[0] + len(keep))
            resid, target_ids = self.resid[rows], self.target_ids[rows]
        else:
            resid, target_ids = self.resid[idx.to(self.resid.device)], self.target_ids[idx.to(self.target_ids.device)]
        return ResidualSet(
            resid,
            target_ids,
            [self.problems[i] for i in keep],
            [self.encoded[i] for i in keep],
            dict(self.info),
        )

    def split(self, name: str) -> "ResidualSet":
        """The problems of one split (``train``, ``val`` or ``test``).

        Returns:
            The subset of the problems whose split is ``name``, in their order.
        """
        return self.select([i for i, p in enumerate(self.problems) if p.split == name])


def gold_ids(encoded: Sequence[EncodedProblem], teacher_forcing: bool = True) -> Int[Tensor, "problem pos"]:
    """The gold token of each answer position (every answer token, or only the first); ``-1`` past the end.

    Returns:
        A (problem, position) tensor of token ids, as many positions as the longest answer has tokens (one without
        ``teacher_forcing``), ``-1`` past each answer's end.
    """
    n_pos = max((len(e.answer_ids) for e in encoded), default=1) if teacher_forcing else 1
    target_ids = torch.full((len(encoded), n_pos), -1, dtype=torch.long)
    for i, e in enumerate(encoded):
        answer = e.answer_ids if teacher_forcing else e.answer_ids[:1]
        target_ids[i, : len(answer)] = torch.tensor(answer)
    return target_ids


def tokens_only(problems: Sequence[Problem], encoded: Sequence[EncodedProblem], n_columns: int) -> "ResidualSet":
    """A residual set with the problems' tokens and gold ids but no residuals (``d_model`` 0).

    What decoders that do not fit get as train and validation sets, so that the model
    runs only on the test problems they are scored on.

    Returns:
        A set whose residuals have shape (problem, ``n_columns``, position, 0), with ``{"residuals": False}`` as ``info``.
    """
    target_ids = gold_ids(encoded)
    resid = torch.zeros(len(problems), n_columns, target_ids.shape[1], 0)
    return ResidualSet(resid, target_ids, list(problems), list(encoded), {"residuals": False})


@torch.inference_mode()
def collect_residuals(
    model: Any,
    problems: Sequence[Problem],
    *,
    teacher_forcing: bool = True,
    batch_size: int = 64,
    store_device: str | torch.device | None = None,
    progress: bool = False,
    encoded: Sequence[EncodedProblem] | None = None,
    prepend_bos: bool | None = None,
    chat: bool = False,
) -> ResidualSet:
    """Run the model once per batch and keep every layer's residual at the answer positions.

    Args:
        model: A ``HookedTransformer`` or ``TransformerBridge`` with a tokenizer (or its :class:`~lens_digits.model.adapter.ModelAdapter`).
        problems: Problems to run.
        teacher_forcing: Feed ``prompt + answer`` and keep one position per answer
            token (needed for target ``answer``); if False feed only the prompt and
            keep its last position (enough for target ``first`` and probes).
        batch_size: Problems per forward pass.
        store_device: Where the kept residuals live (default: the model's device).
            They are stored in float32 whatever the model's dtype.
        progress: Show a progress bar.
        encoded: Token ids to use instead of encoding the problems (for example
            the model's own greedy answers as the answer tokens).
        prepend_bos: Put the tokenizer's BOS before each prompt; None follows the
            model (``cfg.default_prepend_bos``).
        chat: Wrap each prompt in the tokenizer's chat template (instruct models).

    Returns:
        The residuals of ``problems``, in their order, in float32 on ``store_device``, with the model's ``n_layers``,
        ``d_model`` and dtype in ``info``.

    Raises:
        LensDigitsError: A batch runs out of memory; the message says how to make it fit.
        NonFiniteError: A kept residual is NaN or infinite; the message names the first such layer.

    >>> from lens_digits.testing import tiny_model
    >>> from lens_digits.problems.tasks import TaskConfig, generate_problems
    >>> rs = collect_residuals(tiny_model(), generate_problems(TaskConfig(scales=[1], n_per_scale=5, n_train=0, n_val=0)))
    >>> tuple(rs.resid.shape[:2]), rs.target_ids.shape[1]
    ((5, 3), 2)
    """
    adapter = ModelAdapter.wrap(model)
    problems = list(problems)
    encoded = list(encoded) if encoded is not None else encode_for_model(adapter, problems, prepend_bos=prepend_bos, chat=chat)
    n_layers, d_model, device = adapter.n_layers, adapter.d_model, adapter.device
    store = torch.device(store_device) if store_device is not None else device
    target_ids = gold_ids(encoded, teacher_forcing)
    n_pos = target_ids.shape[1]
    resid = torch.zeros(len(problems), n_layers + 1, n_pos, d_model, dtype=torch.float32, device=store)

    names = adapter.resid_hook_names
    seqs = [list(e.prompt_ids) + (list(e.answer_ids) if teacher_forcing else []) for e in encoded]  # what is fed
    bar = tqdm(total=len(problems), desc="residuals", unit="problem", disable=not progress)
    for rows in length_batches([len(s) for s in seqs], batch_size):
        tokens = torch.tensor([seqs[i] for i in rows], dtype=torch.long, device=device)  # (B, T)
        # position predicting answer token j is len(prompt) - 1 + j
        starts = torch.tensor([len(encoded[i].prompt_ids) - 1 for i in rows], device=device)
        gather = (starts[:, None] + torch.arange(n_pos, device=device)).clamp(max=tokens.shape[1] - 1)  # (B, pos)
        valid = (target_ids[rows] >= 0).to(store)  # (B, pos)
        row_idx = torch.tensor(rows, device=store)
        finite = torch.ones(len(rows), n_layers + 1, dtype=torch.bool, device=store)  # (B, column): filled by the hooks
        hooks: list[tuple[str, Any]] = [
            (name, partial(_keep, out=resid, rows=row_idx, layer=layer, gather=gather, valid=valid, finite=finite))
            for layer, name in enumerate(names)
        ]
        hooks.append((names[-1], _stop))  # nothing after the final residual is read: skip the final norm and unembedding
        try:
            adapter.run_with_hooks(tokens, hooks)
        except _Collected:
            pass
        except torch.OutOfMemoryError:
            raise LensDigitsError(
                f"out of memory on {device} with a batch of {len(rows)} problems of {tokens.shape[1]} tokens; lower the batch "
                f"size (--batch-size {max(1, batch_size // 2)}), use --dtype bfloat16, or keep residuals on the CPU (device='cpu')"
            ) from None
        if not bool(finite.all()):  # a NaN or infinite residual is named here, never scored as a wrong answer
            raise_nonfinite_residuals(adapter.model, finite.cpu(), names, [problems[i].prompt for i in rows])
        bar.update(len(rows))
    bar.close()
    info = {"n_layers": n_layers, "d_model": d_model, "model_dtype": str(adapter.dtype).replace("torch.", "")}
    return ResidualSet(resid, target_ids.to(store), problems, encoded, info)


class _Collected(Exception):
    """Raised by the last hook: every kept position is copied, the rest of the forward pass is not needed."""


def _stop(x: Tensor, hook: Any) -> None:
    """Forward hook on the final residual, after :func:`_keep`: end the forward pass there.

    Raises:
        _Collected: Always: every kept position has been copied.
    """
    raise _Collected


def _keep(
    x: Float[Tensor, "batch seq d_model"],
    hook: Any,
    *,
    out: Float[Tensor, "problem layer pos d_model"],
    rows: Int[Tensor, " batch"],
    layer: int,
    gather: Int[Tensor, "batch pos"],
    valid: Bool[Tensor, "batch pos"],
    finite: Bool[Tensor, "batch column"],
) -> None:
    """Forward hook: copy the kept positions of one layer into ``out``; change nothing.

    The activation may live on any device (a model split over GPUs runs later
    layers elsewhere): the index follows the activation, the copy goes to ``out``.
    ``finite[:, layer]`` notes which problems' kept positions are all finite.
    """
    index = gather.to(x.device)[:, :, None].expand(-1, -1, x.shape[-1])  # (B, pos, d)
    picked = x.gather(1, index).to(out.device, torch.float32)  # (B, pos, d)
    finite[:, layer] = torch.isfinite(picked).flatten(1).all(1).to(finite.device)
    out[rows.to(out.device), layer] = torch.where(valid.to(out.device)[:, :, None], picked, 0.0)
