"""The Lens base class: top-1, gold rank and gold probability per layer and position, and the scores of targets first and answer."""

import math

import pytest
import torch
from conftest import problems_for

from lens_digits.methods import LogitLens
from lens_digits.methods.lenses.base import Lens
from lens_digits.methods.lenses.numbers import numeric_scores
from lens_digits.problems.targets import EncodedProblem
from lens_digits.problems.tasks import Problem
from lens_digits.residuals.collect import ResidualSet, collect_residuals


def test_gold_rank_and_prob_are_consistent(llama_model):
    rs = collect_residuals(llama_model, problems_for(scales=(2,), n=20))
    lens = LogitLens.from_model(llama_model)
    scores = lens.score(rs, "first")
    rank, prob = scores.metrics["gold_rank"], scores.metrics["gold_prob"]
    assert not (scores.correct & (rank > 0)).any()  # a gold read as top-1 has no token above it
    # The documented tie rule: top-1 is the first maximal index, and a gold tied with it has rank 0 without being read.
    for i, layer in (~scores.correct & (rank == 0)).nonzero().tolist():
        logits = lens.layer_logits(rs.resid[i, layer, :1], layer)[0].float()
        gold = int(rs.target_ids[i, 0])
        assert logits[gold] == logits.max() and int(logits.argmax()) < gold
    assert ((prob > 0) & (prob <= 1)).all()


def test_a_gold_tied_with_an_earlier_token_has_rank_0_but_is_not_read():
    table = torch.zeros(1, 1, 1, V)
    table[0, 0, 0, [1, 3]] = 5.0  # tokens 1 and 3 tie at the maximum; the gold is 3
    problem = Problem(1, "add", 1, 2, "1+2=", "3", "test")
    data = ResidualSet(torch.tensor([[[[0.0, 0.0]]]]), torch.tensor([[3]]), [problem], [EncodedProblem((0,), (3,))])
    scores = TableLens(table).score(data, "first")
    assert scores.metrics["gold_rank"].item() == 0 and not scores.correct.item()


# ---- a toy lens with fixed logits, scored by hand ------------------------------------------------

V = 4  # vocabulary size
N_LAYERS = 3  # layer columns
ANSWERS = ["12", "7", "345"]
GOLD = [[1, 2], [3], [0, 2, 1]]  # gold token ids of each answer, one per position
# RANK[i][layer][j]: rank of the gold token of problem i at answer position j (0 = top-1)
RANK = [
    [[1, 1], [0, 1], [0, 0]],
    [[2], [0], [0]],
    [[0, 2, 0], [1, 0, 0], [0, 0, 0]],
]
P_TOP = math.exp(2) / (math.exp(2) + 3)  # gold 2, three others 0
P_SECOND = math.exp(1) / (math.exp(2) + math.exp(1) + 2)  # another token 2, gold 1, two others 0
P_THIRD = math.exp(1) / (math.exp(2) + math.exp(1.5) + math.exp(1) + 1)  # two tokens above the gold (2 and 1.5), one 0
P_GOLD = {0: P_TOP, 1: P_SECOND, 2: P_THIRD}


def fixed_logits(gold, rank):
    """Logits over V tokens that put the gold token at the given rank."""
    logits = torch.zeros(V)
    logits[gold] = 2.0 if rank == 0 else 1.0
    above = [(gold + 1) % V, (gold + 2) % V][:rank]
    for token, value in zip(above, (2.0, 1.5), strict=False):
        logits[token] = value
    return logits


class TableLens(Lens):
    """A lens whose logits are a fixed table: residual channel 0 holds the problem's index, channel 1 the position."""

    name = "test_table_lens"

    def __init__(self, table, max_logits=2**25):
        super().__init__(d_vocab=table.shape[-1], max_logits=max_logits)
        self.table = table  # (problem, layer, pos, vocab)

    def layer_logits(self, resid, layer):
        return self.table[resid[..., 0].long(), layer, resid[..., 1].long()]


def toy_set():
    """Three problems with answers of 2, 1 and 3 tokens, and the table of their logits.

    Past an answer's end the table makes token 3 top-1 with probability P_TOP: counted, it would
    make answers wrong (the gold there is read as token 0) and change the gold probability.
    """
    n, n_pos = len(ANSWERS), max(len(g) for g in GOLD)
    table = torch.zeros(n, N_LAYERS, n_pos, V)
    table[..., 3] = 2.0
    target_ids = torch.full((n, n_pos), -1)
    resid = torch.zeros(n, N_LAYERS, n_pos, 2)
    for i, gold in enumerate(GOLD):
        target_ids[i, : len(gold)] = torch.tensor(gold)
        for layer in range(N_LAYERS):
            for j in range(n_pos):
                resid[i, layer, j] = torch.tensor([i, j])
                if j < len(gold):
                    table[i, layer, j] = fixed_logits(gold[j], RANK[i][layer][j])
    problems = [Problem(len(a), "add", int(a), 0, f"{a}+0=", a, "test") for a in ANSWERS]
    encoded = [EncodedProblem((1, 2, 3), tuple(range(4, 4 + len(g)))) for g in GOLD]
    return ResidualSet(resid, target_ids, problems, encoded, {}), table


def test_toy_logits_put_the_gold_token_where_the_table_says():
    for gold in range(V):
        for rank, p in P_GOLD.items():
            logits = fixed_logits(gold, rank)
            assert int((logits > logits[gold]).sum()) == rank
            assert logits.softmax(-1)[gold].item() == pytest.approx(p)


@pytest.mark.parametrize("max_logits", [2**25, 1])
def test_first_and_answer_scores_by_hand(max_logits):
    data, table = toy_set()
    lens = TableLens(table, max_logits=max_logits)  # max_logits=1: one problem at a time
    first = lens.score(data, "first")
    assert first.correct.tolist() == [[False, True, True], [False, True, True], [True, False, True]]
    assert first.metrics["gold_rank"].tolist() == [[1, 0, 0], [2, 0, 0], [0, 1, 0]]
    want = [[P_GOLD[RANK[i][layer][0]] for layer in range(N_LAYERS)] for i in range(len(ANSWERS))]
    torch.testing.assert_close(first.metrics["gold_prob"], torch.tensor(want), rtol=1e-5, atol=1e-6)

    # an answer counts at a layer only if every one of its positions is top-1 there; positions past its end do not count
    answer = lens.score(data, "answer")
    assert answer.correct.tolist() == [[False, False, True], [False, True, True], [False, False, True]]
    want_rank = [[1.0, 0.5, 0.0], [2.0, 0.0, 0.0], [2 / 3, 1 / 3, 0.0]]
    torch.testing.assert_close(answer.metrics["gold_rank"], torch.tensor(want_rank))
    want_prob = [[math.prod(P_GOLD[r] for r in RANK[i][layer]) for layer in range(N_LAYERS)] for i in range(len(ANSWERS))]
    assert want_prob[0][2] == pytest.approx(P_TOP**2) and want_prob[2][0] == pytest.approx(P_TOP**2 * P_THIRD)
    torch.testing.assert_close(answer.metrics["gold_prob"], torch.tensor(want_prob), rtol=1e-5, atol=1e-6)
    assert answer.correct.dtype == torch.bool and answer.correct.shape == (len(ANSWERS), N_LAYERS)


class _Texts:
    """A tokenizer whose token ``i`` reads ``TEXTS[i]``."""

    TEXTS = ["1", "2", "$", "x", " 3"]

    def decode(self, ids):
        return "".join(self.TEXTS[i] for i in ids)


def test_numeric_scores_read_each_layers_number_by_hand_prefixes_and_ends_included():
    problems = [
        Problem(1, "add", 6, 6, "6+6=", "12", "test"),
        Problem(1, "add", 1, 2, "1+2=", "3", "test", answer_prefix="$"),
        Problem(1, "add", 0, 1, "0+1=", "1", "test"),
    ]
    target_ids = torch.tensor([[0, 1], [2, 4], [0, -1]])
    encoded = [EncodedProblem((9,), tuple(t for t in row if t >= 0)) for row in target_ids.tolist()]
    data = ResidualSet(torch.zeros(3, 3, 2, 0), target_ids, problems, encoded, {})
    top1 = torch.tensor(
        [
            [[0, 1], [3, 1], [1, 0]],  # "12" (12), "x2" (no number), "21" (21)
            [[2, 4], [0, 1], [2, 2]],  # "$ 3" (3 after its prefix), "12" (no prefix: 12), "$$" (no number)
            [[0, 1], [1, 1], [1, 0]],  # one answer token: "1", "2", "2"; what lies past its end is not read
        ]
    )
    lens = TableLens(torch.zeros(1, 3, 2, 5))
    lens.tokenizer = _Texts()
    out = numeric_scores(data, top1, "answer", lens.token_text, lens.within)
    nan = math.nan
    want = torch.tensor([[0, nan, 9], [0, 9, nan], [0, 1, 1]], dtype=torch.float64)
    torch.testing.assert_close(out["abs_error"], want, equal_nan=True)
    assert out["numeric"].tolist() == [[1, 0, 1], [1, 1, 0], [1, 1, 1]]
    assert out["within_1"].tolist() == [[1, 0, 0], [1, 0, 0], [1, 1, 1]]
    assert out["within_10"].tolist() == [[1, 0, 1], [1, 1, 0], [1, 1, 1]]


def test_decode_gives_top1_rank_and_log_probability_per_position():
    data, table = toy_set()
    top1, rank, logp = TableLens(table).decode(data)
    assert top1.shape == rank.shape == logp.shape == (len(ANSWERS), N_LAYERS, 3)
    for i, gold in enumerate(GOLD):
        for layer in range(N_LAYERS):
            for j, g in enumerate(gold):
                r = RANK[i][layer][j]
                assert rank[i, layer, j] == r
                assert (top1[i, layer, j] == g) == (r == 0)
                assert logp[i, layer, j].item() == pytest.approx(math.log(P_GOLD[r]), abs=1e-5)
            # past the end nothing is decoded (the table's token 3 there is never read)
            assert (top1[i, layer, len(gold) :] == -1).all() and (rank[i, layer, len(gold) :] == 0).all()


def test_fused_reduction_equals_the_straightforward_one_ties_included():
    from lens_digits.methods.lenses.base import reduce_logits

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 1000, generator=gen)
    logits[:50, :10] = 3.0  # ties at the maximum
    logits[50:100] = torch.randint(0, 4, (50, 1000), generator=gen).float()  # many ties everywhere
    gold = torch.randint(0, 1000, (300,), generator=gen)
    gold[:25] = torch.randint(0, 10, (25,), generator=gen)  # gold tied with the maximum
    kept = logits.clone()
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        x = logits.to(dtype)
        top1, rank, logp = reduce_logits(x.clone(), gold)
        assert torch.equal(top1, x.argmax(-1))
        assert torch.equal(rank, (x > x.gather(-1, gold[:, None])).sum(-1).float())
        want = x.float().log_softmax(-1).gather(-1, gold[:, None])[:, 0]
        torch.testing.assert_close(logp, want, rtol=1e-5, atol=1e-5)
    reduce_logits(logits, gold)
    assert torch.equal(logits, kept), "the caller's logits are left as they were"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias,cap", [(False, None), (True, None), (True, 5.0)])
def test_tiled_reduction_equals_the_straightforward_one_ties_included(dtype, bias, cap):
    """Small integers make every logit exact in any summation order, so ties are real ties across tiles."""
    from lens_digits.model.reductions import reduce_tiled

    gen = torch.Generator().manual_seed(1)
    x = torch.randint(-2, 3, (200, 16), generator=gen).to(dtype)
    W = torch.randint(-2, 3, (16, 1000), generator=gen).to(dtype)
    W[:, 500:600] = W[:, 0:100]  # the same columns again, in later tiles
    b = torch.randint(-1, 2, (1000,), generator=gen).to(dtype) if bias else None
    transform = (lambda z: cap * torch.tanh(z / cap)) if cap else None
    logits = x @ W + (b if b is not None else 0)
    logits = transform(logits) if transform else logits
    gold = torch.randint(0, 1000, (200,), generator=gen)
    tied = logits[:40] == logits[:40].max(-1, keepdim=True).values
    gold[:40] = tied.long().cumsum(-1).argmax(-1)  # the last of the maximal tokens: tied with the top-1, not it
    assert (gold[:40] != logits[:40].argmax(-1)).sum() >= 10
    top1, rank, logp = reduce_tiled(x, W, b, gold, transform, tile=64)
    assert torch.equal(top1, logits.argmax(-1)), "ties at the maximum: the first index, across tiles"
    assert torch.equal(rank, (logits > logits.gather(-1, gold[:, None])).sum(-1).float())
    assert (rank[:40] == 0).all()
    want = logits.float().log_softmax(-1).gather(-1, gold[:, None])[:, 0]
    torch.testing.assert_close(logp, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_tiled_reduction_ranks_against_the_logits_its_tiles_make_each_made_once(dtype):
    """Random real-valued logits: in 16-bit many round to the gold logit's value; each tile is made once."""
    from lens_digits.model.reductions import reduce_tiled

    gen = torch.Generator().manual_seed(2)
    d, vocab, tile = 64, 3000, 256
    x = torch.nn.functional.layer_norm(torch.randn(150, d, generator=gen), (d,)).to(dtype)
    W = (torch.randn(d, vocab, generator=gen) * 0.05).to(dtype)
    W[:, 2900:] = W[:, 10:110]  # the same columns again, in a later tile
    gold = torch.cat([torch.randint(0, 20, (50,), generator=gen), torch.randint(0, vocab, (100,), generator=gen)])
    made = []

    def transform(z):
        made.append(z.shape[1])
        return z

    top1, rank, logp = reduce_tiled(x, W, None, gold, transform, tile=tile)
    assert sum(made) == vocab and len(made) == -(-vocab // tile), "every logit is made exactly once"
    logits = torch.cat([(x @ W[:, s : s + tile]).float() for s in range(0, vocab, tile)], dim=1)  # what the tiles hold
    assert torch.equal(top1, logits.argmax(-1))
    gold_logit = logits.gather(-1, gold[:, None])
    assert torch.equal(rank, torch.where(top1 == gold, 0, (logits > gold_logit).sum(-1)).float())
    if dtype != torch.float32:
        assert ((logits == gold_logit).sum(-1) > 1).any(), "the test holds ties that rounding made"
    torch.testing.assert_close(logp, logits.log_softmax(-1).gather(-1, gold[:, None])[:, 0], rtol=1e-5, atol=1e-5)


def test_readout_reduces_in_tiles_where_the_unembedding_is_a_matrix(llama_model):
    from lens_digits.model.readout import Readout
    from lens_digits.model.reductions import reduce_logits

    readout = Readout(llama_model)
    resid = torch.randn(30, llama_model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    gold = torch.randint(0, readout.d_vocab, (30,), generator=torch.Generator().manual_seed(1))
    tiled = readout.reduce(resid, gold, tile=16)
    assert readout._tiles() is not None
    whole = reduce_logits(readout(resid, upcast=False), gold)
    assert torch.equal(tiled[0], whole[0]) and torch.equal(tiled[1], whole[1])
    torch.testing.assert_close(tiled[2], whole[2], rtol=1e-5, atol=1e-5)
    readout._weights = False  # an unembedding that is not a plain matrix: the whole logits, the same numbers
    again = readout.reduce(resid, gold)
    assert torch.equal(again[0], whole[0]) and torch.equal(again[1], whole[1])
