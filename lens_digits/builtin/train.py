"""Train the built-in arithmetic model: a small Llama, one token per character.

The recipe is :class:`TrainConfig`: a ``LlamaForCausalLM`` (RMSNorm, rotary
positions, SwiGLU) trained from scratch with AdamW on problems written exactly
as :mod:`lens_digits.problems.tasks` writes them with the default ``compact`` template:
``<s>12+34=46</s>``. The loss is on the answer and the end-of-sequence token
only; the operands are random and cannot be predicted.

Each training example draws an operation from ``ops`` and a digit scale from
``scales``; both operands have that many digits (scale 1 includes 0), as in
:func:`lens_digits.problems.tasks.generate_problems`. A fraction ``mixed`` of examples
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

import json
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

from lens_digits.builtin.recipe import TEMPLATE, TrainConfig, builtin_tokenizer, char_ids, sample_problems
from lens_digits.errors import LensDigitsError, wrapped_os_error
from lens_digits.storage.reservation import Reservation


def encode_batch(problems: Sequence[tuple[str, str]], ids: dict[str, int]) -> tuple[Tensor, Tensor]:
    """Tokens ``<s> prompt answer </s>`` right-padded, and labels (``-100`` except answer and EOS).

    Right padding needs no attention mask under a causal model: no real token
    attends to a later pad.

    Returns:
        The tokens and the labels, both ``(problem, position)`` and as wide as the longest sequence.
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


def build_llama(config: TrainConfig, tokenizer: Any) -> Any:
    """A freshly initialised ``LlamaForCausalLM`` of the recipe's shape (seeded).

    Returns:
        The untrained model, its weights drawn after seeding torch with the recipe's seed.
    """
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

    Returns:
        The trained model (eval mode), its tokenizer and a record of the recipe, size, wall time and losses.

    Raises:
        LensDigitsError: ``threads`` is neither None nor a positive integer.
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
    ids = char_ids()
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
    """Whether ``folder`` is a checkpoint folder this package trained (so ``overwrite`` may replace it).

    Returns:
        True when its ``train.json`` holds a recipe and it has no files but a checkpoint's; False when it cannot be read.
    """
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

    Written whole or not at all (:mod:`lens_digits.storage.reservation`); ``overwrite``
    replaces only a folder this function wrote earlier.

    Returns:
        The checkpoint folder.

    Raises:
        OutputError: ``out_dir`` cannot be written: it is not empty (and not, with ``overwrite``, a checkpoint of
            this package), another process is writing it, or it was filled meanwhile.
    """

    def fill(tmp: Path) -> None:
        write_checkpoint(result, tmp)

    if reservation is not None:
        return reservation.write(fill)
    with Reservation(out_dir, overwrite, is_ours=is_checkpoint_dir) as r:
        return r.write(fill)


def write_checkpoint(result: TrainResult, folder: Path) -> None:
    """Write the checkpoint files into an existing, empty ``folder``."""
    try:
        result.model.save_pretrained(folder)
    except Exception as e:  # safetensors reports a full disk as its own error type
        os_error = wrapped_os_error(e, folder / "model.safetensors")
        if os_error is None:
            raise
        raise os_error from None
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

    Raises:
        LensDigitsError: The recipe is invalid (see :class:`TrainConfig`), or ``threads`` is neither None nor a
            positive integer.
        OutputError: ``out_dir`` cannot be written (see :func:`save_trained`).

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
