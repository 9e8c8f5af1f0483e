"""Greedy answers (target ``model``, the ``solved`` subsets) against the model's own cached ``generate``, in one process.

Model and problems as in ``sweep_floor.py`` (a random Qwen2, hidden 512, 12
layers; scales 1-4, ``--n`` problems a scale). Contenders, each producing the
same number of new tokens for every prompt (``len(answer) + 2``, what a sweep
asks for) in batches of equal prompt length:

- ``generate``: Hugging Face ``generate`` with its key-value cache, greedy;
- ``package``: :func:`lens_digits.model.greedy.greedy_answers` on the TransformerLens model
  (a key-value cache, checked against recomputation on the first rows; near ties
  decided by the whole sequence);
- ``recompute``: the same with the cache turned off: the whole sequence runs
  again for every new token (the package before the cache).

All must give the same tokens (checked). Times are CPU seconds, medians of
interleaved repeats; the ratio is what to read.

    python benchmarks/greedy.py --vocab 151936 --repeats 3
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_floor import SHAPE, build, problems_and_encoding  # noqa: E402

from lens_digits.model.adapter import ModelAdapter  # noqa: E402
from lens_digits.model.batching import length_batches  # noqa: E402
from lens_digits.model.greedy import _decode_in_batches, greedy_answers  # noqa: E402


@torch.inference_mode()
def hf_generate(hf, prompts, steps, batch_size):
    def generate(tokens, n):
        out = hf.generate(
            input_ids=tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1
        )
        return out[:, tokens.shape[1] :]

    return _decode_in_batches(generate, prompts, steps, batch_size=batch_size)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model: checks the script, not a benchmark")
    args = p.parse_args()
    tiny = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    _, hf, model = build(args.vocab, tiny if args.tiny else SHAPE)
    hf.generation_config.pad_token_id = hf.generation_config.eos_token_id
    hf.generation_config.eos_token_id = None  # generate every asked-for token, as the package does
    _, _, encoded = problems_and_encoding(model, args.n)
    prompts = [list(e.prompt_ids) for e in encoded]
    steps = [len(e.answer_ids) + 2 for e in encoded]

    def package(cache: bool = True) -> list[list[int]]:
        adapter = ModelAdapter.wrap(model)  # new each call: the cache check is part of the cost
        if not cache:
            adapter._kv_cache_ok = False  # as if the model had no usable cache
        return [list(o.token_ids) for o in greedy_answers(adapter, prompts, steps, until="eos", batch_size=args.batch_size)]

    contenders = {
        "generate": lambda: hf_generate(hf, prompts, steps, args.batch_size),
        "package": package,
        "recompute": lambda: package(cache=False),
    }

    ref = contenders["generate"]()
    for name in ("package", "recompute"):
        ours = contenders[name]()
        same = sum(a == b for a, b in zip(ref, ours, strict=True))
        if same != len(ref):
            print(f"{name} and generate disagree on {len(ref) - same} of {len(ref)} prompts", file=sys.stderr)
            return 1
    used = ModelAdapter.wrap(model)
    greedy_answers(used, prompts[:4], steps[:4], until="eos")
    print(f"the package's key-value cache was {'used' if used._kv_cache_ok else 'NOT used (it disagreed)'}")
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            start = time.process_time()
            fn()
            times[name].append(time.process_time() - start)
    tokens = sum(steps)
    batches = len(list(length_batches([len(p) for p in prompts], args.batch_size)))
    print(f"vocab {args.vocab}, {len(prompts)} prompts in {batches} batches, {tokens} new tokens, median CPU seconds of {args.repeats}")
    base = statistics.median(times["generate"])
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.2f} | {statistics.median(t) / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
