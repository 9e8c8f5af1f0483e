"""A lens's example readings: at every layer column, its top tokens with their probabilities and the gold token's rank."""

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from lens_digits.methods.examples import TOP_K, Example, probability
from lens_digits.methods.scores import Target
from lens_digits.residuals.collect import ResidualSet

if TYPE_CHECKING:
    from lens_digits.methods.lenses.base import Lens


@torch.inference_mode()
def lens_examples(lens: "Lens", data: ResidualSet, target: Target, rows: Sequence[int], max_logits: int, k: int = TOP_K) -> list[Example]:
    """What ``lens`` reads for the problems ``rows`` of ``data`` at every layer column.

    Each answer position (the first alone for target ``first``) gets its top ``k`` tokens with their probabilities
    and the gold token's rank; the top-1 and the rank come from the same reduction that scores the cells, so a
    reading's ``ok`` is what its cell counted. At most ``max_logits`` logits are held at once.

    Returns:
        One :class:`~lens_digits.methods.examples.Example` per row, in order.
    """
    sub = data.select(list(rows))
    n_pos = 1 if target == "first" else sub.target_ids.shape[1]
    gold_ids = sub.target_ids[:, :n_pos].cpu()
    problem, position = (gold_ids >= 0).nonzero(as_tuple=True)  # the real answer positions
    gold = gold_ids[problem, position]
    text = lens.token_text if lens.tokenizer is not None else str
    device = sub.resid.device
    chunk = max(1, max_logits // max(1, lens.d_vocab))
    layers: list[list[dict[str, Any]]] = [[] for _ in rows]
    for layer in range(sub.n_columns):
        top1, rank, top_p, top_i = [], [], [], []
        for s in range(0, len(gold), chunk):
            part = slice(s, s + chunk)
            resid = sub.resid[problem[part].to(device), layer, position[part].to(device)]  # (r, d)
            best, r, _ = lens.reduce_layer(resid, layer, gold[part])
            probs = lens.layer_logits(resid, layer).float().softmax(-1)  # (r, vocab)
            p, i = probs.topk(min(k, probs.shape[-1]), dim=-1)
            top1.append(best.cpu())
            rank.append(r.cpu())
            top_p.append(p.cpu())
            top_i.append(i.cpu())
        best_all, rank_all, p_all, i_all = (torch.cat(t) if t else torch.zeros(0) for t in (top1, rank, top_p, top_i))
        readings: list[dict[str, Any]] = [{"read": "", "ok": True, "tokens": []} for _ in rows]
        for j, row in enumerate(problem.tolist()):
            reading = readings[row]
            reading["read"] += text(int(best_all[j]))
            reading["ok"] = reading["ok"] and int(best_all[j]) == int(gold[j])
            top = [[text(int(t)), probability(float(q))] for t, q in zip(i_all[j].tolist(), p_all[j].tolist(), strict=True)]
            reading["tokens"].append({"gold": text(int(gold[j])), "rank": int(rank_all[j]), "top": top})
        for row, reading in enumerate(readings):
            layers[row].append(reading)
    out = []
    for row, item in enumerate(sub.problems):
        wanted = gold_ids[row][gold_ids[row] >= 0].tolist()
        out.append(Example(item, "".join(text(int(t)) for t in wanted), layers[row]))
    return out
