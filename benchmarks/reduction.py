"""The readout's reduction alone: top-1, gold rank and gold log-probability of rows of residuals.

One process, the same rows, each contender giving the same top-1 and rank
(checked before timing). Rows of a final-normed random residual (``--d``) and a
random unembedding of ``--vocab`` tokens, in float32 and bfloat16; golds among
the first 20 tokens (where digit tokens sit), or anywhere with ``--spread``. Contenders:

- **floor**: ``x @ W_U`` and ``argmax``: the matrix product and top-1 only;
- **plain**: ``x @ W_U``, then argmax, the rank by counting and ``log_softmax``
  on the whole logits (float32);
- **fused**: :func:`lens_digits.model.reductions.reduce_logits` on the whole logits;
- **tiled**: :func:`lens_digits.model.reductions.reduce_tiled` (what the lenses run).

Prints seconds (median of ``--repeats``, interleaved) and the ratio to the
floor, as Markdown rows:

    python benchmarks/reduction.py --device cpu
    python benchmarks/reduction.py --device cuda --rows 880   # an accelerator's chunk
"""

import argparse
import statistics
import sys
import time

import torch

from lens_digits.model.reductions import reduce_logits, reduce_tiled


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def contenders(x: torch.Tensor, W: torch.Tensor, gold: torch.Tensor, tile: int) -> dict:
    """The four ways to reduce the rows ``x`` through ``W``, each a function of nothing."""

    def floor():
        return (x @ W).argmax(-1)

    def plain():
        z = (x @ W).float()
        g = z.gather(-1, gold[:, None])
        return z.argmax(-1), (z > g).sum(-1), z.log_softmax(-1).gather(-1, gold[:, None])[:, 0]

    def fused():
        return reduce_logits(x @ W, gold)

    def tiled():
        return reduce_tiled(x, W, None, gold, tile=tile)

    # Each is checked against the logits it makes: the whole product, or the tiles' products side by side.
    by_tile = torch.cat([(x @ W[:, s : s + tile]).float() for s in range(0, W.shape[1], tile)], dim=1)
    for fn, logits in ((fused, (x @ W).float()), (tiled, by_tile)):
        got, top1 = fn(), logits.argmax(-1)
        rank = torch.where(top1 == gold, 0, (logits > logits.gather(-1, gold[:, None])).sum(-1))
        assert torch.equal(got[0], top1) and torch.equal(got[1].long(), rank), f"{fn.__name__}: top-1 or rank differs"
    return {"floor": floor, "plain": plain, "fused": fused, "tiled": tiled}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rows", type=int, default=220, help="rows per call (a CPU chunk at vocab 151,936 is 220)")
    p.add_argument("--d", type=int, default=1536)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--calls", type=int, default=5, help="calls per timing")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--spread", action="store_true", help="golds anywhere in the vocabulary (GPT-2, Llama-3 numbers), not the first 20")
    args = p.parse_args()

    from lens_digits.model.readout import default_tile

    tile = default_tile(torch.device(args.device))
    gen = torch.Generator().manual_seed(0)
    print(f"rows {args.rows}, d {args.d}, vocab {args.vocab:,}, tile {tile}, device {args.device}, torch threads {torch.get_num_threads()}")
    print("| dtype | floor (matmul + argmax) | plain | fused | tiled |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        x = torch.nn.functional.layer_norm(torch.randn(args.rows, args.d, generator=gen), (args.d,)).to(args.device, dtype)
        W = (torch.randn(args.d, args.vocab, generator=gen) * 0.02).to(args.device, dtype)
        gold = torch.randint(0, args.vocab if args.spread else 20, (args.rows,), generator=gen).to(args.device)
        fns = contenders(x, W, gold, tile)
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.repeats):
            for key, fn in fns.items():
                sync(args.device)
                start = time.perf_counter()
                for _ in range(args.calls):
                    fn()
                sync(args.device)
                times[key].append(time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in times.items()}
        cells = " | ".join(f"{med[k]:.3f} s ({med[k] / med['floor']:.2f})" for k in fns)
        print(f"| {name} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
