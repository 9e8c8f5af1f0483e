"""Lenses: decoders that turn each layer's residual into logits over the vocabulary.

A lens implements :meth:`Lens.layer_logits` (the logit lens: the model's own
readout; a tuned lens: a per-layer translator, then the readout). This base
class does the rest, the same for every lens: top-1, gold rank and gold
log-probability at every layer and answer position, a bounded chunk of logits
at a time, and the ``Scores`` of targets ``first``, ``answer`` and ``model``
(an answer counts at a layer only if every one of its positions is top-1 there).
"""

import abc
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lens_digits.decoders.base import Decoder, Scores, Target
from lens_digits.decoders.labels import place_name
from lens_digits.errors import NonFiniteError
from lens_digits.finite import weights_note
from lens_digits.reductions import reduce_logits
from lens_digits.residuals import ResidualSet

WITHIN = (1, 10)
"""Default k of the lenses' ``within_k`` scores (Zhou et al. 2024 report +-1 and +-10)."""
_INTEGER = re.compile(r"[-+]?\d+")


def default_max_logits(device: torch.device) -> int:
    """How many logits a lens holds at once on ``device`` unless told otherwise.

    2**25 (128 MiB of float32) on a CPU; 2**27 (512 MiB) on an accelerator, so
    that a chunk of rows is large enough to keep it busy (about 880 rows at a
    vocabulary of 151,936).
    """
    return 2**25 if torch.device(device).type == "cpu" else 2**27


def _number(text: str | None) -> float:
    """The integer ``text`` spells (surrounding spaces allowed), else NaN."""
    if text is None:
        return math.nan
    text = text.strip()
    return float(int(text)) if _INTEGER.fullmatch(text) else math.nan


def check_within(within: Sequence[int] | str) -> tuple[int, ...]:
    """The k of ``within_k`` scores: non-negative integers, sorted, from a list or a string such as ``"1,10"``."""
    from lens_digits.config import _int_list

    return tuple(sorted(_int_list("within", within, 0)))


class Lens(Decoder):
    """Base class of token-level decoders; subclasses implement :meth:`layer_logits`.

    Metrics per cell: ``gold_rank`` (mean rank of the gold token, 0 = top-1;
    for ``answer`` averaged over the answer's tokens), ``gold_prob`` (mean
    probability of the gold token; for ``answer`` of the whole answer under
    teacher forcing, the product over its tokens) and ``baseline`` (the
    accuracy of always answering the most common gold answer of the scale's
    train problems: what a layer that reads nothing but a constant scores). Target ``model`` is scored
    like ``answer`` on residuals collected with the model's greedy answer as
    the answer tokens.

    With a tokenizer, targets ``answer`` and ``model`` also get numeric scores
    of the number a layer reads: its top-1 tokens at the answer positions
    (teacher-forced), joined and read as an integer. ``numeric`` is the share of
    problems where that is a number at all; ``abs_error`` the mean absolute
    error against the target's number (the answer; for ``model`` the model's own
    answer) over those; ``within_1``, ``within_10`` (``within`` sets the k) the
    share of all problems whose number is within ±k of it. And they get
    ``place`` rows: for tokenizers with at most one digit per token, one per
    digit place (``units``, ``tens``, ...: the answer token holding that digit);
    otherwise one per answer token (``token 1``, ``token 2``, ...).
    """

    targets = ("first", "answer", "model")
    fits = False  # a lens's fit reads the train problems' tokens only (for its baseline)
    needs_model = True  # it reads through the model's unembedding

    def __init__(self, d_vocab: int, max_logits: int | None = None, *, tokenizer: Any = None, within: Sequence[int] = WITHIN) -> None:
        """``max_logits`` caps how many logits are held at once (memory knob; default :func:`default_max_logits`).

        ``tokenizer`` (the model's) turns top-1 tokens into numbers and answer
        tokens into digit places; without one, no numeric scores and no place rows.
        ``within`` are the k of the ``within_k`` scores.
        """
        self.d_vocab = int(d_vocab)
        self.max_logits = None if max_logits is None else int(max_logits)
        self.tokenizer = tokenizer
        self.within = check_within(within)
        self._texts: dict[int, str] = {}
        self._last: tuple[ResidualSet, Tensor, Tensor, Tensor] | None = None
        self._common: dict[str, dict[int, tuple[int, ...]]] = {}

    def fit(self, train: ResidualSet, val: ResidualSet) -> None:
        """Note the most common gold answer of each scale's train problems: the ``baseline`` guess.

        Only tokens are read (a lens learns nothing from residuals), so the model
        need not run on train problems.
        """
        first: dict[int, Counter[tuple[int, ...]]] = {}
        whole: dict[int, Counter[tuple[int, ...]]] = {}
        for p, e in zip(train.problems, train.encoded, strict=True):
            first.setdefault(p.scale, Counter())[tuple(e.answer_ids[:1])] += 1
            whole.setdefault(p.scale, Counter())[tuple(e.answer_ids)] += 1
        self._common = {
            "first": {s: c.most_common(1)[0][0] for s, c in first.items()},
            "answer": {s: c.most_common(1)[0][0] for s, c in whole.items()},
        }

    @abc.abstractmethod
    def layer_logits(self, resid: Float[Tensor, "row d_model"], layer: int) -> Float[Tensor, "row d_vocab"]:
        """Logits of residuals taken at layer column ``layer`` (in the model's dtype, or float32)."""

    def reduce_layer(
        self, resid: Float[Tensor, "row d_model"], layer: int, gold: Int[Tensor, " row"]
    ) -> tuple[Int[Tensor, " row"], Float[Tensor, " row"], Float[Tensor, " row"]]:
        """Top-1, gold rank and gold log-probability of residuals at layer column ``layer``.

        By default :func:`~lens_digits.reductions.reduce_logits` of :meth:`layer_logits`;
        lenses that end in the model's readout override this with the readout's
        tiled reduction, which never holds a row's whole logits at once.
        """
        return reduce_logits(self.layer_logits(resid, layer), gold)

    @torch.inference_mode()
    def decode(
        self, data: ResidualSet, n_pos: int | None = None
    ) -> tuple[Int[Tensor, "problem layer pos"], Float[Tensor, "problem layer pos"], Float[Tensor, "problem layer pos"]]:
        """Top-1 token id, rank of the gold token (0 = top-1) and its log-probability.

        Computed at every layer for the real answer positions only (the first
        ``n_pos``; all by default): positions past an answer's end are never
        decoded (they hold top-1 ``-1``, rank and log-probability 0). Logits are
        made a bounded chunk of rows at a time (at most ``max_logits`` of them),
        and each chunk is reduced in place: one pass for the maximum and top-1,
        a comparison with the gold logit only on rows whose top-1 is wrong (the
        rank is 0 where it is right), and one pass for the log-sum-exp.
        """
        n, n_columns, all_pos, _ = data.resid.shape
        n_pos = all_pos if n_pos is None else n_pos
        target_ids = data.target_ids.cpu()  # the outputs and their indices live on the CPU; residuals stay where they are
        real = target_ids[:, :n_pos] >= 0  # (N, pos)
        problem, position = real.nonzero(as_tuple=True)  # the rows to decode
        gold = target_ids[problem, position]  # (R,)
        top1 = torch.full((n, n_columns, n_pos), -1, dtype=torch.long)
        rank = torch.zeros(n, n_columns, n_pos)
        logp = torch.zeros(n, n_columns, n_pos)
        budget = self.max_logits or default_max_logits(data.resid.device)
        chunk = max(1, budget // max(1, self.d_vocab))
        where = problem.to(data.resid.device), position.to(data.resid.device)
        for layer in range(n_columns):
            parts = []
            for s in range(0, len(gold), chunk):
                rows = slice(s, s + chunk)
                resid = data.resid[where[0][rows], layer, where[1][rows]]  # (r, d)
                parts.append(self.reduce_layer(resid, layer, gold[rows]))
            if parts:  # one copy to the CPU per layer, so a device is never kept waiting between chunks
                top1[problem, layer, position] = torch.cat([p[0] for p in parts]).cpu()
                rank[problem, layer, position] = torch.cat([p[1] for p in parts]).cpu().float()
                gold_logp = torch.cat([p[2] for p in parts]).cpu().float()
                if not bool(torch.isfinite(gold_logp).all()):  # named, never scored as a wrong answer
                    bad = int((~torch.isfinite(gold_logp)).sum())
                    raise NonFiniteError(
                        f"the {self.name}'s logits are not finite (NaN or infinite) at layer column {layer} for {bad} of "
                        f"{len(gold_logp)} answer positions; {self.nonfinite_note()}"
                    )
                logp[problem, layer, position] = gold_logp
        return top1, rank, logp

    def nonfinite_note(self) -> str:
        """Why this lens's logits may not be finite, for the error message (the readout's weights, by default)."""
        readout = getattr(self, "readout", None)
        if readout is None:
            return "check the lens's own weights"
        return weights_note([("ln_final", readout.ln_final), ("unembed", readout.unembed)])

    def score(self, data: ResidualSet, target: Target) -> Scores:
        """Correctness, gold rank and gold probability per problem and layer.

        All positions of ``data`` are decoded once and kept until another set
        comes, so scoring ``first`` and then ``answer`` on the same set costs one
        decode.
        """
        n_pos = 1 if target == "first" else data.target_ids.shape[1]
        if self._last is None or self._last[0] is not data:
            self._last = (data, *self.decode(data))
        top1, rank, logp = (t[:, :, :n_pos] for t in self._last[1:])
        gold = data.target_ids[:, :n_pos].cpu()
        m = (gold >= 0)[:, None, :]  # (N, 1, pos)
        correct = ((top1 == gold[:, None, :]) | ~m).all(-1)
        mean_rank = (rank * m).sum(-1) / m.sum(-1).clamp(min=1)
        prob = (logp * m).sum(-1).exp()
        metrics = {"gold_rank": mean_rank, "gold_prob": prob}
        common = self._common.get("first" if target == "first" else "answer")
        if common:  # always answering the train problems' most common answer (for model: the gold one, against its own)
            hit = [float(common.get(p.scale) == tuple(g[g >= 0].tolist())) for p, g in zip(data.problems, gold, strict=True)]
            metrics["baseline"] = torch.tensor(hit)[:, None].expand_as(prob).clone()
        scores = Scores(correct, metrics)
        if target != "first" and self.tokenizer is not None:
            metrics |= self.numeric_scores(data, top1, target)
            scores.breakdown["place"] = self.place_scores(data, top1, rank, logp)
        return scores

    # ---- numbers and digit places ------------------------------------------------------------------

    def token_text(self, token_id: int) -> str:
        """The text of one token (cached)."""
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = self.tokenizer.decode([token_id])
        return text

    def numeric_scores(self, data: ResidualSet, top1: Int[Tensor, "problem layer pos"], target: str) -> dict[str, Tensor]:
        """``numeric``, ``abs_error`` (NaN where the read is not a number) and ``within_k`` per problem and layer.

        A read is the top-1 tokens at a problem's answer positions; the same
        reads recur across problems and layers, so each distinct one (with its
        problem's answer prefix) is turned into text and parsed once.
        """
        n, n_columns, n_pos = top1.shape
        gold = torch.tensor([_number(p.model_output if target == "model" else p.answer) for p in data.problems], dtype=torch.float64)
        prefixes = [p.answer_prefix.strip() for p in data.problems]
        kinds = sorted(set(prefixes))
        kind = torch.tensor([kinds.index(x) for x in prefixes], dtype=torch.long)
        real = (data.target_ids[:, :n_pos] >= 0).cpu()[:, None, :]  # a read is the answer positions only
        ids = torch.where(real, top1, -1).reshape(n * n_columns, n_pos)
        keys = torch.cat([ids, kind.repeat_interleave(n_columns)[:, None]], dim=1)
        unique, inverse = torch.unique(keys, dim=0, return_inverse=True) if n else (keys, torch.zeros(0, dtype=torch.long))
        values = []
        for *tokens, k in unique.tolist():
            text = "".join(self.token_text(t) for t in tokens if t >= 0).strip()
            prefix = kinds[k]
            values.append(_number(text[len(prefix) :] if prefix and text.startswith(prefix) else text))
        read = torch.tensor(values, dtype=torch.float64)[inverse].reshape(n, n_columns)
        error = (read - gold[:, None]).abs()
        out = {"numeric": (~read.isnan()).double(), "abs_error": error}
        for k in self.within:
            out[f"within_{k}"] = (error <= k).double()  # NaN compares False: a non-number is never within
        return out

    def place_scores(self, data: ResidualSet, top1: Int[Tensor, "problem layer pos"], rank: Tensor, logp: Tensor) -> dict[str, Scores]:
        """Correctness of each digit place (one-digit tokens) or each answer token (other tokenizers)."""
        gold = data.target_ids.cpu()
        n, n_pos = gold.shape
        digits = [[sum(c.isdigit() for c in self.token_text(t)) for t in row if t >= 0] for row in gold.tolist()]
        by_place = all(d <= 1 for row in digits for d in row)
        index = torch.full((n, n_pos), -1, dtype=torch.long)  # index[i, r]: position of row r's token in problem i
        for i, row in enumerate(digits):
            if by_place:
                places = [sum(row[j + 1 :]) for j in range(len(row))]
                for j, (d, place) in enumerate(zip(row, places, strict=True)):
                    if d:
                        index[i, place] = j
            else:
                index[i, : len(row)] = torch.arange(len(row))
        width = int((index >= 0).any(0).nonzero().max()) + 1 if (index >= 0).any() else 0
        labels = [place_name(r) if by_place else f"token {r + 1}" for r in range(width)]
        out = {}
        for r, label in enumerate(labels):
            has = index[:, r] >= 0
            pos = index[:, r].clamp(min=0)
            pick = pos[:, None, None].expand(n, top1.shape[1], 1)
            ok = top1.gather(2, pick)[..., 0] == gold.gather(1, pos[:, None])
            metrics = {"gold_rank": rank.gather(2, pick)[..., 0], "gold_prob": logp.gather(2, pick)[..., 0].exp()}
            out[label] = Scores(ok & has[:, None], metrics, applies=has)
        return out

    def settings(self) -> dict[str, Any]:
        """Nothing beyond the name (subclasses add theirs)."""
        return {}
