"""A logit-lens sweep against its floor and against the ten-line TransformerLens recipe, in one process.

Model: a randomly initialised Qwen2 (no download) with hidden 512, 12 layers, 8
heads (2 KV), MLP 1,536 and a vocabulary of 151,936 or 32,000 tokens; a
character tokenizer writes the prompts, the logits run over the whole vocabulary.
Problems: digit scales 1-4, ``--n`` test problems per scale, compact template.

Contenders, each giving the same top-1 grid (checked):

- ``floor``: Hugging Face forward (``output_hidden_states``) + final norm +
  unembedding + argmax, at the decoded positions only (the last prompt position
  for target ``first``; every answer position, teacher-forced, for ``answer``);
- ``sweep``: ``run_sweep(methods=["logit_lens"])`` (with gold rank and gold probability);
- ``naive``: ``run_with_cache``, ``accumulated_resid(apply_ln=True)``, ``unembed``, argmax;
- ``tl_helper``: TransformerLens 4.x's ``tools.analysis.logit_lens`` (top-1 only).

Times are CPU seconds (``time.process_time``), medians of interleaved repeats;
the ratios to the floor are what to read. ``--memory NAME`` runs one contender
alone and prints its peak RSS (run each in its own process).

    python benchmarks/sweep_floor.py --vocab 151936 --target answer --repeats 3
    python benchmarks/sweep_floor.py --vocab 151936 --target answer --memory sweep
"""

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
import warnings

import torch
import transformers

import lens_digits as ld
from lens_digits.model.adapter import ModelAdapter
from lens_digits.model.batching import length_batches
from lens_digits.problems.targets import encode_for_model
from lens_digits.problems.tasks import TaskConfig, generate_problems

SHAPE = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=8, num_key_value_heads=2)


def build(vocab: int, shape: dict | None = None, device: str = "cpu", dtype: str = "float32") -> tuple[str, object, object]:
    """A random Qwen2 of ``shape`` saved to a temporary folder, as plain Hugging Face and through lens_digits."""
    tok = ld.testing.char_tokenizer()
    cfg = transformers.Qwen2Config(
        vocab_size=vocab,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **(shape or SHAPE),
    )
    torch.manual_seed(0)
    folder = tempfile.mkdtemp(prefix="lens_digits_floor_")
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype).to(device).eval()
    return folder, hf, ld.load_model(folder, device=device, dtype=dtype, progress=False)


def problems_and_encoding(model, n: int):
    task = TaskConfig(scales="1-4", n_per_scale=n, n_train=0, n_val=0, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problems = generate_problems(task)
    return task, problems, encode_for_model(ModelAdapter.wrap(model), problems)


def rows_of(encoded, target: str):
    """Per problem: the fed tokens and the positions decoded (with their gold ids)."""
    out = []
    for e in encoded:
        fed = list(e.prompt_ids) + (list(e.answer_ids) if target == "answer" else [])
        k = len(e.answer_ids) if target == "answer" else 1
        out.append((fed, [len(e.prompt_ids) - 1 + j for j in range(k)], list(e.answer_ids[:k])))
    return out


@torch.inference_mode()
def floor(hf, encoded, target: str, batch_size: int) -> torch.Tensor:
    """Top-1 of every decoded (problem, layer, position) from plain HF: hidden states, final norm, lm_head, argmax."""
    rows = rows_of(encoded, target)
    norm, head = hf.model.norm, hf.lm_head
    tops = []
    device = next(hf.parameters()).device
    for batch in length_batches([len(r[0]) for r in rows], batch_size):
        tokens = torch.tensor([rows[i][0] for i in batch], device=device)
        out = hf.model(tokens, output_hidden_states=True)
        hidden = out.hidden_states  # embeddings, block outputs; the last is already normed
        pos = torch.tensor([rows[i][1] for i in batch], device=device)  # (B, k): equal length -> equal k
        gold = torch.tensor([rows[i][2] for i in batch])
        top1 = torch.zeros(len(batch), len(hidden), pos.shape[1], dtype=torch.long, device=device)
        for layer, h in enumerate(hidden):
            x = h.gather(1, pos[:, :, None].expand(-1, -1, h.shape[-1]))  # (B, k, d)
            if layer < len(hidden) - 1:
                x = norm(x)
            top1[:, layer] = head(x).argmax(-1)
        tops += [t.cpu() for t, i in sorted(zip(top1, batch, strict=True), key=lambda x: x[1])]
        del gold
    return _flat(tops, batch_order(rows, batch_size))


def batch_order(rows, batch_size: int) -> list[int]:
    return [i for batch in length_batches([len(r[0]) for r in rows], batch_size) for i in sorted(batch)]


def _flat(tops: list[torch.Tensor], order: list[int]) -> torch.Tensor:
    """Top-1 rows (problem, layer, pos) in problem order, flattened to one vector."""
    by_problem = dict(zip(order, tops, strict=True))
    return torch.cat([by_problem[i].reshape(-1) for i in sorted(by_problem)])


def sweep_top1(model, encoded, target: str, batch_size: int) -> torch.Tensor:
    """The sweep's own top-1 (untimed): its residuals through its logit lens."""
    from lens_digits.methods import LogitLens
    from lens_digits.residuals.collect import collect_residuals

    problems = [None] * len(encoded)
    rs = collect_residuals(model, problems, encoded=encoded, teacher_forcing=target == "answer", batch_size=batch_size)
    top1, _, _ = LogitLens.from_model(model).decode(rs)
    real = (rs.target_ids >= 0).cpu()  # the outputs are on the CPU, the gold ids where the residuals are
    return torch.cat([top1[i][:, real[i]].reshape(-1) for i in range(len(encoded))])


def sweep(model, task, target: str, batch_size: int) -> int:
    grid = ld.run_sweep(
        model,
        scales=task.scales,
        n_per_scale=task.n_per_scale,
        n_train=0,
        n_val=0,
        seed=task.seed,
        target=target,
        batch_size=batch_size,
    )
    df = grid.main()
    return int(round((df["accuracy"] * df["n"]).sum()))


@torch.inference_mode()
def naive(model, encoded, target: str, batch_size: int) -> torch.Tensor:
    rows = rows_of(encoded, target)
    tops = []
    for batch in length_batches([len(r[0]) for r in rows], batch_size):
        tokens = torch.tensor([rows[i][0] for i in batch])
        _, cache = model.run_with_cache(tokens)
        acc = cache.accumulated_resid(apply_ln=True)  # (layer+1, B, T, d)
        pos = torch.tensor([rows[i][1] for i in batch])
        idx = pos[None, :, :, None].expand(acc.shape[0], -1, -1, acc.shape[-1])
        top1 = model.unembed(acc.gather(2, idx)).argmax(-1).transpose(0, 1)  # (B, layer+1, k)
        tops += [t for t, i in sorted(zip(top1, batch, strict=True), key=lambda x: x[1])]
    return _flat(tops, batch_order(rows, batch_size))


@torch.inference_mode()
def tl_helper(model, encoded, target: str, batch_size: int) -> torch.Tensor:
    from transformer_lens.tools.analysis.logit_lens import logit_lens

    rows = rows_of(encoded, target)
    tops = []
    for batch in length_batches([len(r[0]) for r in rows], batch_size):
        tokens = torch.tensor([rows[i][0] for i in batch])
        pos = rows[batch[0]][1]
        result = logit_lens(model, tokens, positions=slice(pos[0], pos[-1] + 1), top_k=1)
        top1 = result.readout.top_ids[..., 0]  # (layer+1, B, k)
        tops += [t for t, i in sorted(zip(top1.transpose(0, 1), batch, strict=True), key=lambda x: x[1])]
    return _flat(tops, batch_order(rows, batch_size))


def cpu_seconds(fn, *args) -> tuple[float, int]:
    start = time.process_time()
    value = fn(*args)
    return time.process_time() - start, value


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--target", choices=["first", "answer"], default="answer")
    p.add_argument("--n", type=int, default=100, help="test problems per scale (scales 1-4)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--memory", choices=["floor", "sweep", "naive", "tl_helper"], help="run one contender alone; print peak RSS")
    p.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model: checks the script (and the agreement), not a benchmark")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tiny = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    _, hf, model = build(args.vocab, tiny if args.tiny else SHAPE)
    task, _, encoded = problems_and_encoding(model, args.n)
    contenders = {
        "floor": lambda: floor(hf, encoded, args.target, args.batch_size),
        "sweep": lambda: sweep(model, task, args.target, args.batch_size),
        "naive": lambda: naive(model, encoded, args.target, args.batch_size),
        "tl_helper": lambda: tl_helper(model, encoded, args.target, args.batch_size),
    }
    if args.memory:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        contenders[args.memory]()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps({"contender": args.memory, "peak_rss_gib": round(peak, 3), "before_gib": round(base, 3)}))
        return 0
    times: dict[str, list[float]] = {k: [] for k in contenders}
    reference = contenders["floor"]()  # warm-up; every contender's top-1 must equal the floor's
    assert torch.equal(sweep_top1(model, encoded, args.target, args.batch_size), reference), "the sweep's top-1 differs"
    for name in ("naive", "tl_helper"):
        try:
            top1 = contenders[name]()
        except Exception as e:  # the TransformerLens helper exists in 4.x only
            print(f"{name}: skipped ({type(e).__name__}: {str(e)[:160]})", file=sys.stderr)
            times.pop(name)
            continue
        agree = float((top1 == reference).float().mean())
        assert agree > 0.999, f"{name} agrees with the floor on {agree:.4f} of its top-1"
    contenders["sweep"]()
    for _ in range(args.repeats):
        for name in times:
            seconds, _ = cpu_seconds(contenders[name])
            times[name].append(seconds)
    base = statistics.median(times["floor"])
    print(
        f"vocab {args.vocab}, target {args.target}, {len(encoded)} problems, {torch.get_num_threads()} threads, "
        f"median CPU seconds of {args.repeats} interleaved repeats (the same top-1 everywhere)"
    )
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.2f} | {statistics.median(ts) / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
