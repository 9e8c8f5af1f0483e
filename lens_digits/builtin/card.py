"""The model card of a trained checkpoint: its greedy accuracy per op and digit scale, as JSON and Markdown.

:func:`write_card` measures the accuracy with plain ``transformers`` (so the
numbers do not depend on TransformerLens) through the package's one greedy
decoder, and writes ``card.json`` and ``README.md`` into the checkpoint folder.
"""

import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lens_digits.model.greedy import greedy_answers
from lens_digits.problems.operations import n_distinct
from lens_digits.problems.tasks import TaskConfig, generate_problems, parse_scales


def greedy_accuracy(
    model: Any,
    scales: Sequence[int] | str = (1, 2, 3, 4),
    ops: Sequence[str] = ("add",),
    n_per_scale: int = 500,
    *,
    tokenizer: Any = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, dict[str, dict[str, float]]]:
    """Greedy exact-match accuracy per op and digit scale, on :mod:`lens_digits.problems.tasks` problems.

    Problems are ``generate_problems(TaskConfig(scales=[s], n_per_scale=n, op=op,
    seed=seed))``, all three splits. Prompts get the tokenizer's BOS, as the
    model was trained with it. An answer counts when the greedy continuation,
    cut at EOS, is exactly the answer. Works on a Hugging Face model (pass its
    ``tokenizer``) or a TransformerLens model.

    Returns:
        ``{op: {str(scale): {"accuracy": float, "n": int}}}``.
    """
    tok = tokenizer if tokenizer is not None else model.tokenizer
    bos = [] if tok.bos_token_id is None else [tok.bos_token_id]
    result: dict[str, dict[str, dict[str, float]]] = {}
    cells = [(op, scale) for op in ops for scale in parse_scales(scales)]
    for op, scale in tqdm(cells, desc="model card", unit="cell", disable=not progress):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            problems = generate_problems(TaskConfig(scales=[scale], n_per_scale=n_per_scale, op=op, seed=seed))
        prompts = [bos + ids for ids in tok([p.prompt for p in problems], add_special_tokens=False)["input_ids"]]
        longest = max(len(p.answer) for p in problems)
        with torch.inference_mode():
            got = greedy_answers(model, prompts, longest + 1, until="eos", tokenizer=tok, batch_size=256)
        ok = sum(g.text == p.answer for g, p in zip(got, problems, strict=True))
        result.setdefault(op, {})[str(scale)] = {"accuracy": round(ok / len(problems), 4), "n": len(problems)}
    return result


CARD_SCALES = (1, 2, 3, 4, 5)
CARD_OPS = ("add", "sub", "mul")


def write_card(
    folder: str | os.PathLike[str],
    *,
    scales: Sequence[int] | str = CARD_SCALES,
    ops: Sequence[str] = CARD_OPS,
    n_per_scale: int = 500,
    seed: int = 0,
    name: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Measure a trained checkpoint's greedy accuracy and write ``card.json`` and ``README.md`` beside it.

    The model is loaded with plain ``transformers`` in float32 on the CPU, so the
    numbers do not depend on TransformerLens.

    Args:
        folder: A folder written by :func:`train_model`.
        scales: Digit scales to measure.
        ops: Operations to measure (untrained ones show what the model does not know).
        n_per_scale: Problems per scale and op (all splits of ``generate_problems``).
        seed: Seed of the problems.
        name: Model name in the card (default: the folder's name).
        progress: Show a progress bar over (op, scale) cells.

    Returns:
        The card as a dict (what ``card.json`` holds).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    info = json.loads((folder / "train.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    started = time.perf_counter()
    accuracy = greedy_accuracy(model, scales, ops, n_per_scale, tokenizer=tokenizer, seed=seed, progress=progress)
    card = {
        "name": name or folder.name,
        "architecture": info["architecture"],
        "n_parameters": info["n_parameters"],
        "checkpoint_dtype": str(next(iter(model.parameters())).dtype).replace("torch.", ""),
        "recipe": info["recipe"],
        "train_seconds": info["train_seconds"],
        "torch_threads": info["torch_threads"],
        "final_loss": info["losses"][-1][1] if info["losses"] else None,
        "evaluation": {
            "metric": "greedy exact match (continuation cut at EOS equals the answer)",
            "problems": "lens_digits.problems.tasks.generate_problems(TaskConfig(scales=[s], n_per_scale=n, op=op, seed=seed)), all splits",
            "n_per_scale": n_per_scale,
            "seed": seed,
            "seconds": round(time.perf_counter() - started, 1),
        },
        "accuracy": accuracy,
    }
    (folder / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    (folder / "README.md").write_text(render_card(card))
    return card


def card_table(card: dict[str, Any]) -> str:
    """Greedy accuracy per digit scale (rows) and op (columns), as a Markdown table.

    Returns:
        The table's lines joined by newlines; trained scales and untrained ops are marked.
    """
    r = card["recipe"]
    ops = list(card["accuracy"])
    scales = list(card["accuracy"][ops[0]])
    trained = set(r["ops"])
    head = "| scale | " + " | ".join(f"{op}{'' if op in trained else ' (not trained)'}" for op in ops) + " |"
    rows = [head, "| --- |" + " --- |" * len(ops)]
    for s in scales:
        cells = [f"{card['accuracy'][op][s]['accuracy']:.3f} (n={card['accuracy'][op][s]['n']})" for op in ops]
        mark = " (trained)" if int(s) in r["scales"] else ""
        rows.append(f"| {s}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _coverage(recipe: dict[str, Any]) -> str:
    """How much of each trained scale's problem space training drew (expected, same-length draws).

    Returns:
        One clause per trained op and scale, joined by semicolons.
    """
    draws = recipe["steps"] * recipe["batch_size"] * (1 - recipe["mixed"]) / len(recipe["scales"]) / len(recipe["ops"])
    parts = []
    for op in recipe["ops"]:
        for s in recipe["scales"]:
            pairs = n_distinct(s, op)
            seen = 1 - math.exp(-draws / pairs)
            parts.append(f"scale {s} {op}: {pairs:,} distinct problems, ~{draws:,.0f} draws, ~{seen:.0%} of them seen")
    return "; ".join(parts)


def _retraining(card: dict[str, Any]) -> str:
    """The card's Retraining section, where the spread of retrains has been measured.

    Returns:
        The section as Markdown, or an empty string when the card has no ``retrain_spread``.
    """
    spread = card.get("retrain_spread")
    if not spread:
        return ""
    scales = sorted(spread["runs"][0]["accuracy"], key=int)
    rows = ["| retrain | " + " | ".join(f"add, scale {s}" for s in scales) + " |", "| --- |" + " --- |" * len(scales)]
    for run in spread["runs"]:
        rows.append(f"| {run['variant']} | " + " | ".join(f"{run['accuracy'][s]:.3f}" for s in scales) + " |")
    promised = card.get("promises", {})
    p_scales = sorted({s for by_scale in promised.values() for s in by_scale}, key=int)
    p_rows = ["| op | " + " | ".join(f"scale {s}" for s in p_scales) + " |", "| --- |" + " --- |" * len(p_scales)]
    for op, by_scale in promised.items():
        p_rows.append(f"| {op} | " + " | ".join("{:g} to {:g}".format(*by_scale[s]) if s in by_scale else "" for s in p_scales) + " |")
    promises = chr(10).join(p_rows)
    return f"""
## Retraining

Another machine gives other weights: a different rounding early in training sends the run down
another path, as another seed or thread count does. Retrained with other seeds and thread counts
(`{spread["command"]}`), the recipe gave:

{chr(10).join(rows)}

The spread comes from seeds (on this CPU, 2 threads gave the same numbers as 1). What any retrain
of the default recipe is expected to reach, with a margin below the lowest retrain (the slow test
checks it on whatever machine runs the test suite; `promises` in `card.json`):

{promises}
"""


def _stored(card: dict[str, Any]) -> str:
    """What storing the weights in 16 bits cost, where the card measured it.

    Returns:
        A clause for the Architecture section (empty for float32).
    """
    check = card.get("storage_check")
    if not check:
        return ""
    return f"; {check}"


def _reproduce(card: dict[str, Any]) -> str:
    """The command that retrains a card's model: the shipped recipe it equals, or its settings as flags.

    Returns:
        A ``lens-digits train-model`` command line.
    """
    from lens_digits.builtin.recipe import RECIPES, TrainConfig, recipe

    trained = TrainConfig.from_dict(card["recipe"])
    for name in RECIPES:
        if recipe(name) == trained:
            return "lens-digits train-model --out DIR" + ("" if name == "arith-llama" else f" --recipe {name}")
    return "lens-digits train-model --out DIR with the recipe of train.json"


def render_card(card: dict[str, Any]) -> str:
    """The model card (Markdown) for a ``card.json`` dict.

    Returns:
        The text of ``README.md``.
    """
    r = card["recipe"]
    minutes = card["train_seconds"] / 60
    return f"""# {card["name"]}

A small decoder-only transformer trained from scratch by `lens_digits.train_model` on
arithmetic written exactly as `lens_digits.problems.tasks` writes it with the default template
(`{{a}}{{op}}{{b}}=`): `<s>12+34=46</s>`. It is an ordinary Hugging Face checkpoint folder:
`lens_digits.load_model(folder)` and `transformers.AutoModelForCausalLM.from_pretrained(folder)`
load it. The package ships two trained this way: `arith-llama-28` (28 layers, the default
model of `lens-digits run`, `lens_digits.load_builtin_model()`) and `arith-llama` (4 layers,
`builtin:arith-llama`); `lens-digits models` lists them.

## Architecture

- `{card["architecture"]}`: RMSNorm, rotary positions, SwiGLU MLPs, untied embedding and unembedding.
- n_layers {r["n_layers"]}, d_model {r["d_model"]}, n_heads {r["n_heads"]} (d_head {r["d_model"] // r["n_heads"]}), \
d_mlp {r["d_mlp"]}, n_ctx {r["n_ctx"]}.
- {card["n_parameters"]:,} parameters, stored in {card["checkpoint_dtype"]} (`model.safetensors`){_stored(card)}.
- Tokenizer: one token per character (`0-9 + - * =`, space, newline; `<s>` BOS, `</s>` EOS,
  `<pad>`, `<unk>` for anything else), so numbers are read and written digit by digit, most
  significant first, as Llama-2, Qwen or Mistral do. BOS is prepended, as TransformerLens does
  by default.

## Training

- Data: problems drawn afresh each step: op from {", ".join(r["ops"])}, digit scale from
  {", ".join(map(str, r["scales"]))} (both operands have exactly that many digits; scale 1 includes 0);
  a fraction {r["mixed"]} of problems draw each operand's length on its own (`7+123=`).
  Subtraction keeps `a >= b`. The loss is on the answer digits and EOS only.
- Coverage: {_coverage(r)}. Small scales are memorisable; at scale 3 most evaluation
  problems were never seen verbatim.
- {r["steps"]} AdamW steps, batch {r["batch_size"]}, peak learning rate {r["lr"]} (linear warm-up {r["warmup"]} steps,
  cosine decay to a tenth), weight decay {r["weight_decay"]} on matrices, betas (0.9, 0.98), gradient clipping 1.0,
  seed {r["seed"]}.
- Final training loss {card["final_loss"]}. Wall time {card["train_seconds"]:.0f} s ({minutes:.1f} min) on a shared
  2-core CPU with {card["torch_threads"]} torch thread(s).
- Reproduce: `{_reproduce(card)}` (the same recipe and seed). Training runs on one
  thread with deterministic kernels, so on the same machine and torch it gives the same weights bit
  for bit; another CPU rounds differently and ends with other weights (see Retraining below).

## Accuracy

Greedy decoding, exact match of the whole answer (cut at EOS), on
`generate_problems(TaskConfig(scales=[s], n_per_scale={card["evaluation"]["n_per_scale"]}, op=op, \
seed={card["evaluation"]["seed"]}))`, all splits (scale 1 has only 100 distinct additions and 55
subtractions with `a >= b`). The same numbers are in `card.json`.

{card_table(card)}

Scales beyond the trained ones are longer than any training sequence: they test length
generalisation. Operations the model was not trained on are listed for comparison.
{_retraining(card)}
## Intended use

A fixed, small, fully known model for trying `lens_digits` offline: the layer axis of its
accuracy grid shows where the answer becomes readable. It is not a calculator.
"""
