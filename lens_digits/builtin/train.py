"""Train the built-in arithmetic model: a small Llama, one token per character.

The recipe is :class:`TrainConfig`: a ``LlamaForCausalLM`` (RMSNorm, rotary
positions, SwiGLU) trained from scratch with AdamW on problems written exactly
as :mod:`lens_digits.tasks` writes them with the default ``compact`` template:
``<s>12+34=46</s>``. The loss is on the answer and the end-of-sequence token
only; the operands are random and cannot be predicted.

Each training example draws an operation from ``ops`` and a digit scale from
``scales``; both operands have that many digits (scale 1 includes 0), as in
:func:`lens_digits.tasks.generate_problems`. A fraction ``mixed`` of examples
instead draw each operand's length on its own (``7+123=``). ``sub`` keeps
``a >= b``, as the package's problems do by default. Problems are drawn afresh
every step from a generator seeded by ``seed``, so the model sees (almost)
every 1- and 2-digit problem and a fraction of the 3-digit ones.

Training runs on one CPU thread with deterministic kernels by default, so the
same machine and torch give the same weights bit for bit. Another CPU rounds
differently and, over 3000 steps, ends with other weights: the model card lists
how much retrains vary and what any retrain reaches (``promises`` in ``card.json``).

The checkpoint folder is an ordinary Hugging Face one (``config.json``,
``model.safetensors``, tokenizer files) plus ``train.json`` (the recipe and the
loss curve). It loads with :func:`lens_digits.load_model` and with
``transformers.AutoModelForCausalLM.from_pretrained``.
"""

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from lens_digits.errors import LensDigitsError
from lens_digits.rundir import Reservation
from lens_digits.tasks import OPERATIONS, TEMPLATES, TaskConfig, format_answer, generate_problems, operand_range, parse_scales

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = "0123456789+-*= \n"
"""Characters of the vocabulary: digits, the operation symbols, ``=``, space and newline."""

TEMPLATE = TEMPLATES["compact"]


@dataclass
class TrainConfig:
    """Recipe of the built-in model. The defaults are the shipped model's.

    Args:
        n_layers: Transformer blocks.
        d_model: Width of the residual stream.
        n_heads: Attention heads (``d_model`` must be a multiple).
        d_mlp: Hidden width of each SwiGLU MLP (default ``4 * d_model``).
        n_ctx: Longest input, in tokens (rotary positions; nothing is learned per position).
        scales: Digit scales of training problems (``[1, 2, 3]`` or ``"1-3"``).
        ops: Operations trained on (``add``, ``sub``, ``mul``), a list or comma-separated.
        mixed: Fraction of examples whose two operands draw their lengths independently.
        steps: Optimiser steps.
        batch_size: Problems per step.
        lr: Peak learning rate (AdamW); linear warm-up, then cosine decay to ``lr / 10``
            (transformers' ``get_cosine_with_min_lr_schedule_with_warmup``).
        warmup: Warm-up steps (default ``min(200, steps // 10)``).
        weight_decay: AdamW weight decay (matrices only).
        seed: Seeds the weights and the training problems.
    """

    n_layers: int = 4
    d_model: int = 96
    n_heads: int = 4
    d_mlp: int | None = None
    n_ctx: int = 128
    scales: Sequence[int] | str = (1, 2, 3)
    ops: Sequence[str] | str = ("add",)
    mixed: float = 0.2
    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int | None = None
    weight_decay: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        """Validate every field."""
        if self.d_mlp is None and isinstance(self.d_model, int):
            self.d_mlp = 4 * self.d_model
        for name in ("n_layers", "d_model", "n_heads", "d_mlp", "n_ctx", "steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LensDigitsError(f"{name} must be a positive integer, got {value!r}")
        if self.warmup is None:
            self.warmup = min(200, self.steps // 10)
        if self.d_model % self.n_heads:
            raise LensDigitsError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise LensDigitsError(f"the head width d_model/n_heads = {self.d_model // self.n_heads} must be even (rotary positions)")
        self.scales = tuple(parse_scales(self.scales))  # type: ignore[arg-type]
        ops = [o.strip() for o in self.ops.split(",") if o.strip()] if isinstance(self.ops, str) else list(self.ops)
        if not ops:
            raise LensDigitsError("no operations given; train on at least one, e.g. add")
        for op in ops:
            if op not in OPERATIONS or op not in ("add", "sub", "mul"):
                raise LensDigitsError(f"unknown op {op!r}; the built-in model trains on add, sub and mul")
        self.ops = tuple(dict.fromkeys(ops))
        longest = max(self.scales)
        need = 1 + 2 * longest + 2 + 2 * longest + 1
        if need > self.n_ctx:
            raise LensDigitsError(f"scale {longest} problems need {need} tokens but n_ctx is {self.n_ctx}; raise n_ctx")
        if not 0.0 <= self.mixed <= 1.0:
            raise LensDigitsError(f"mixed must be a fraction from 0 to 1, got {self.mixed!r}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise LensDigitsError(f"lr must be a positive number, got {self.lr!r}")
        if self.warmup < 0 or self.weight_decay < 0:
            raise LensDigitsError("warmup and weight_decay must not be negative")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise LensDigitsError(f"seed must be an integer, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready recipe."""
        d = dataclasses.asdict(self)
        d["scales"] = list(self.scales)
        d["ops"] = list(self.ops)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ---- tokenizer -------------------------------------------------------------


def builtin_tokenizer() -> Any:
    """The built-in model's tokenizer: one token per character of ``CHARS``.

    ``<s>`` is BOS, ``</s>`` EOS, ``<pad>`` padding and ``<unk>`` any other
    character. Like Llama's tokenizers it puts BOS before a text (the model was
    trained with it), so plain ``transformers`` code (``tok(prompt)``, then
    ``generate``) feeds what the model expects; ``add_special_tokens=False``
    gives the bare characters, as :mod:`lens_digits` uses them.

    >>> tok = builtin_tokenizer()
    >>> tok("12+3=")["input_ids"], tok("12+3=", add_special_tokens=False)["input_ids"]
    ([1, 5, 6, 14, 7, 17], [5, 6, 14, 7, 17])
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + list(CHARS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=128,
        add_bos_token=True,
        add_eos_token=False,
    )


def _char_ids() -> dict[str, int]:
    return {t: i for i, t in enumerate(SPECIALS + list(CHARS))}


# ---- training data ---------------------------------------------------------


def sample_problems(rng: np.random.Generator, n: int, config: TrainConfig) -> list[tuple[str, str]]:
    """Draw ``n`` training problems as ``(prompt, answer)`` strings.

    >>> c = TrainConfig(scales=[2], mixed=0.0)
    >>> prompt, answer = sample_problems(np.random.default_rng(0), 1, c)[0]
    >>> len(prompt), int(prompt[:2]) + int(prompt[3:5]) == int(answer)
    (6, True)
    """
    ops = rng.choice(len(config.ops), size=n)
    scale_a = rng.choice(np.asarray(config.scales), size=n)
    scale_b = np.where(rng.random(n) < config.mixed, rng.choice(np.asarray(config.scales), size=n), scale_a)
    out = []
    for i in range(n):
        op = OPERATIONS[config.ops[ops[i]]]
        lo_a, hi_a = operand_range(int(scale_a[i]))
        lo_b, hi_b = operand_range(int(scale_b[i]))
        a = int(rng.integers(lo_a, hi_a + 1))
        b = int(rng.integers(lo_b, hi_b + 1))
        if op.name == "sub" and a < b:
            a, b = b, a
        out.append((TEMPLATE.format(a=a, b=b, op=op.symbol), format_answer(op.fn(a, b))))
    return out


def encode_batch(problems: Sequence[tuple[str, str]], ids: dict[str, int]) -> tuple[Tensor, Tensor]:
    """Tokens ``<s> prompt answer </s>`` right-padded, and labels (``-100`` except answer and EOS).

    Right padding needs no attention mask under a causal model: no real token
    attends to a later pad.
    """
    seqs, labels = [], []
    for prompt, answer in problems:
        p = [ids["<s>"]] + [ids[c] for c in prompt]
        a = [ids[c] for c in answer] + [ids["</s>"]]
        seqs.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), width), ids["<pad>"], dtype=torch.long)
    target = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, (s, lab) in enumerate(zip(seqs, labels, strict=True)):
        tokens[i, : len(s)] = torch.tensor(s)
        target[i, : len(lab)] = torch.tensor(lab)
    return tokens, target


# ---- model ------------------------------------------------------------------


def build_llama(config: TrainConfig, tokenizer: Any) -> Any:
    """A freshly initialised ``LlamaForCausalLM`` of the recipe's shape (seeded)."""
    import transformers

    hf_config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.d_model,
        intermediate_size=int(config.d_mlp or 4 * config.d_model),
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_heads,
        max_position_embeddings=config.n_ctx,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(config.seed)
    return transformers.LlamaForCausalLM(hf_config)


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained model (eval mode), its tokenizer and a record."""

    model: Any
    tokenizer: Any
    info: dict[str, Any]


def train(
    config: TrainConfig,
    *,
    threads: int | None = 1,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train a fresh model on the recipe, in memory. :func:`train_model` also saves it.

    Args:
        config: The recipe.
        threads: Torch CPU threads while training (restored afterwards); None keeps
            torch's setting. One thread is about as fast as more for a model this
            small, much faster on a busy machine, and gives the same bits on any
            number of cores.
        progress: Show a tqdm bar with the running loss.
        callback: Called as ``callback(step, loss)`` after every step.
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise LensDigitsError(f"threads must be a positive integer or None, got {threads!r}")
    before = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    if threads is not None:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)  # no run-to-run noise from kernels that have a deterministic variant
    try:
        return _train(config, progress, callback)
    finally:
        torch.set_num_threads(before)
        torch.use_deterministic_algorithms(deterministic)


def _train(config: TrainConfig, progress: bool, callback: Callable[[int, float], None] | None) -> TrainResult:
    tokenizer = builtin_tokenizer()
    model = build_llama(config, tokenizer)
    model.train()
    ids = _char_ids()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimiser = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
    )
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    schedule = get_cosine_with_min_lr_schedule_with_warmup(optimiser, int(config.warmup or 0), config.steps, min_lr_rate=0.1)
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 2024]))
    losses: list[list[float]] = []
    running: float | None = None
    started = time.perf_counter()
    bar = tqdm(range(config.steps), desc="training", unit="step", disable=not progress)
    for step in bar:
        tokens, labels = encode_batch(sample_problems(rng, config.batch_size, config), ids)  # (B, T), (B, T)
        logits = model(input_ids=tokens).logits  # (B, T, vocab)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        value = float(loss.detach())
        running = value if running is None else 0.95 * running + 0.05 * value
        if step % 50 == 0 or step == config.steps - 1:
            losses.append([step, round(value, 5)])
            bar.set_postfix(loss=f"{running:.4f}")
        if callback is not None:
            callback(step, value)
    bar.close()
    model.eval()
    info = {
        "recipe": config.to_dict(),
        "architecture": "LlamaForCausalLM",
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
        "template": TEMPLATE,
        "losses": losses,
    }
    return TrainResult(model, tokenizer, info)


CHECKPOINT_MARKER = "train.json"
"""The file that marks a checkpoint folder written by :func:`save_trained`."""


def is_checkpoint_dir(folder: Path) -> bool:
    """Whether ``folder`` is a checkpoint folder this package trained (so ``overwrite`` may replace it)."""
    try:
        names = {p.name for p in folder.iterdir()}
        info = json.loads((folder / CHECKPOINT_MARKER).read_text())
    except (OSError, ValueError):
        return False
    known = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    known |= {"special_tokens_map.json", "chat_template.jinja", CHECKPOINT_MARKER, "card.json", "README.md"}
    return isinstance(info, dict) and "recipe" in info and names <= known


def save_trained(
    result: TrainResult, out_dir: str | os.PathLike[str], overwrite: bool = False, *, reservation: Reservation | None = None
) -> Path:
    """Write a trained model as a Hugging Face checkpoint folder, with ``train.json``.

    Written whole or not at all (:mod:`lens_digits.rundir`); ``overwrite``
    replaces only a folder this function wrote earlier.
    """

    def fill(tmp: Path) -> None:
        write_checkpoint(result, tmp)

    if reservation is not None:
        return reservation.write(fill)
    with Reservation(out_dir, overwrite, is_ours=is_checkpoint_dir) as r:
        return r.write(fill)


def write_checkpoint(result: TrainResult, folder: Path) -> None:
    """Write the checkpoint files into an existing, empty ``folder``."""
    result.model.save_pretrained(folder)
    result.tokenizer.save_pretrained(folder)
    # Name a tokenizer class that transformers 4.x knows too (5.x writes "TokenizersBackend").
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (folder / CHECKPOINT_MARKER).write_text(json.dumps(result.info, indent=1) + "\n")
    mode = 0o666 & ~_umask()
    for file in folder.iterdir():
        if file.is_file():
            file.chmod(mode)  # safetensors writes 0600; the checkpoint gets the permissions of any file the user makes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def train_model(
    out_dir: str | os.PathLike[str],
    *,
    n_layers: int = TrainConfig.n_layers,
    d_model: int = TrainConfig.d_model,
    n_heads: int = TrainConfig.n_heads,
    d_mlp: int | None = None,
    scales: Sequence[int] | str = TrainConfig.scales,
    ops: Sequence[str] | str = TrainConfig.ops,
    mixed: float = TrainConfig.mixed,
    steps: int = TrainConfig.steps,
    batch_size: int = TrainConfig.batch_size,
    lr: float = TrainConfig.lr,
    warmup: int | None = None,
    seed: int = TrainConfig.seed,
    threads: int | None = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Train a small Llama on arithmetic and save it as a Hugging Face checkpoint folder.

    With the defaults this is the recipe of the shipped built-in model
    (:func:`lens_digits.load_builtin_model`). The folder gets ``config.json``,
    ``model.safetensors``, ``generation_config.json``, the tokenizer files and
    ``train.json`` (the recipe, the loss every 50 steps, the wall time).
    :func:`write_card` adds the measured accuracies.

    Args:
        out_dir: Folder to write; must not exist or be empty unless ``overwrite``.
        n_layers: Transformer blocks.
        d_model: Residual stream width.
        n_heads: Attention heads.
        d_mlp: MLP hidden width (default ``4 * d_model``).
        scales: Digit scales of the training problems, e.g. ``"1-3"``.
        ops: Operations, e.g. ``["add"]`` or ``"add,sub"``.
        mixed: Fraction of problems whose operands differ in length.
        steps: Optimiser steps.
        batch_size: Problems per step.
        lr: Peak learning rate.
        warmup: Warm-up steps (default ``min(200, steps // 10)``).
        seed: Seed of the weights and of the problem stream.
        threads: Torch CPU threads while training (None: torch's setting).
        overwrite: Replace the contents of a non-empty ``out_dir``.
        progress: Show a tqdm bar with the running loss.

    Returns:
        The checkpoint folder.

    >>> import tempfile, lens_digits as ld
    >>> folder = ld.train_model(tempfile.mkdtemp() + "/m", n_layers=1, d_model=16, n_heads=2, steps=2, progress=False)
    >>> ld.load_model(folder, device="cpu").cfg.n_layers
    1
    """
    config = TrainConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_mlp=d_mlp,
        scales=scales,
        ops=ops,
        mixed=mixed,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup=warmup,
        seed=seed,
    )
    with Reservation(out_dir, overwrite, is_ours=is_checkpoint_dir) as reservation:
        return save_trained(train(config, threads=threads, progress=progress), out_dir, overwrite=overwrite, reservation=reservation)


# ---- evaluation -------------------------------------------------------------


def _forward_fn(model: Any) -> Callable[[Tensor], Tensor]:
    """``tokens -> logits`` for a Hugging Face model or a TransformerLens model."""
    if hasattr(model, "cfg"):
        return lambda tokens: model(tokens, return_type="logits")
    return lambda tokens: model(input_ids=tokens).logits


def _tokenizer_and_bos(model: Any, tokenizer: Any) -> tuple[Any, int | None]:
    if hasattr(model, "cfg"):
        from lens_digits.models import model_bos_token_id, model_tokenizer

        return model_tokenizer(model), model_bos_token_id(model)
    if tokenizer is None:
        raise LensDigitsError("pass the tokenizer with a Hugging Face model")
    return tokenizer, tokenizer.bos_token_id


@torch.inference_mode()
def greedy_answers(
    model: Any, prompts: Sequence[str], *, tokenizer: Any = None, max_new_tokens: int = 8, batch_size: int = 256
) -> list[str]:
    """Greedy continuation of each prompt, up to EOS or ``max_new_tokens`` tokens.

    Works on a TransformerLens model (its tokenizer and BOS policy) or a Hugging
    Face ``LlamaForCausalLM`` (pass ``tokenizer``; BOS is prepended). Prompts
    are batched by equal token length, so no padding is involved.
    """
    tok, bos = _tokenizer_and_bos(model, tokenizer)
    from lens_digits.generate import greedy_decode
    from lens_digits.models import model_device

    encoded = [([] if bos is None else [bos]) + list(x) for x in tok(list(prompts), add_special_tokens=False)["input_ids"]]
    generated = greedy_decode(
        _forward_fn(model), encoded, [max_new_tokens] * len(encoded), device=model_device(model), batch_size=batch_size
    )
    eos = tok.eos_token_id
    return [tok.decode(g[: g.index(eos)] if eos in g else g) for g in generated]


def greedy_accuracy(
    model: Any,
    scales: Sequence[int] | str = (1, 2, 3, 4),
    ops: Sequence[str] = ("add",),
    n_per_scale: int = 500,
    *,
    tokenizer: Any = None,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, float]]]:
    """Greedy exact-match accuracy per op and digit scale, on :mod:`lens_digits.tasks` problems.

    Problems are ``generate_problems(TaskConfig(scales=[s], n_per_scale=n, op=op,
    seed=seed))``, all three splits. An answer counts when the greedy
    continuation, cut at EOS, is exactly the answer.

    Returns:
        ``{op: {str(scale): {"accuracy": float, "n": int}}}``.
    """
    import warnings

    result: dict[str, dict[str, dict[str, float]]] = {}
    for op in ops:
        result[op] = {}
        for scale in parse_scales(scales):  # type: ignore[arg-type]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                problems = generate_problems(TaskConfig(scales=[scale], n_per_scale=n_per_scale, op=op, seed=seed))
            longest = max(len(p.answer) for p in problems)
            got = greedy_answers(model, [p.prompt for p in problems], tokenizer=tokenizer, max_new_tokens=longest + 1)
            ok = sum(g == p.answer for g, p in zip(got, problems, strict=True))
            result[op][str(scale)] = {"accuracy": round(ok / len(problems), 4), "n": len(problems)}
    return result


# ---- model card ---------------------------------------------------------------

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

    Returns:
        The card as a dict (what ``card.json`` holds).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    info = json.loads((folder / "train.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    started = time.perf_counter()
    accuracy = greedy_accuracy(model, scales, ops, n_per_scale, tokenizer=tokenizer, seed=seed)
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
            "problems": "lens_digits.tasks.generate_problems(TaskConfig(scales=[s], n_per_scale=n, op=op, seed=seed)), all splits",
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
    """Greedy accuracy per digit scale (rows) and op (columns), as a Markdown table."""
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
    """How much of each trained scale's problem space training drew (expected, same-length draws)."""
    from lens_digits.operations import n_distinct

    draws = recipe["steps"] * recipe["batch_size"] * (1 - recipe["mixed"]) / len(recipe["scales"]) / len(recipe["ops"])
    parts = []
    for op in recipe["ops"]:
        for s in recipe["scales"]:
            pairs = n_distinct(s, op)
            seen = 1 - math.exp(-draws / pairs)
            parts.append(f"scale {s} {op}: {pairs:,} distinct problems, ~{draws:,.0f} draws, ~{seen:.0%} of them seen")
    return "; ".join(parts)


def _retraining(card: dict[str, Any]) -> str:
    """The card's Retraining section, where the spread of retrains has been measured."""
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


def render_card(card: dict[str, Any]) -> str:
    """The model card (Markdown) for a ``card.json`` dict."""
    r = card["recipe"]
    minutes = card["train_seconds"] / 60
    return f"""# {card["name"]}

A small decoder-only transformer trained from scratch by `lens_digits.train_model` on
arithmetic written exactly as `lens_digits.tasks` writes it with the default template
(`{{a}}{{op}}{{b}}=`): `<s>12+34=46</s>`. It is an ordinary Hugging Face checkpoint folder:
`lens_digits.load_model(folder)` and `transformers.AutoModelForCausalLM.from_pretrained(folder)`
load it. The package ships one trained with the default recipe as its built-in model,
`arith-llama` (`lens_digits.load_builtin_model()`, the default model of `lens-digits run`).

## Architecture

- `{card["architecture"]}`: RMSNorm, rotary positions, SwiGLU MLPs, untied embedding and unembedding.
- n_layers {r["n_layers"]}, d_model {r["d_model"]}, n_heads {r["n_heads"]} (d_head {r["d_model"] // r["n_heads"]}), \
d_mlp {r["d_mlp"]}, n_ctx {r["n_ctx"]}.
- {card["n_parameters"]:,} parameters, stored in {card["checkpoint_dtype"]} (`model.safetensors`).
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
- Reproduce: `lens-digits train-model --out DIR` (the same recipe and seed). Training runs on one
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


__all__ = [
    "CHARS",
    "TrainConfig",
    "TrainResult",
    "builtin_tokenizer",
    "card_table",
    "greedy_accuracy",
    "greedy_answers",
    "render_card",
    "sample_problems",
    "save_trained",
    "train",
    "train_model",
    "write_card",
]
