"""Fine-tuning a sequence classifier (head and encoder) on CPU, reproducibly."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

from exporter.atomic import atomic_dir, refuse_existing
from exporter.data import batches, encode_batch
from exporter.errors import HeadpruneError
from exporter.evaluation.settings import FinetuneSettings
from exporter.progress import Advance, no_progress
from exporter.pruning.checkpoint import PLAN_FILE, check_model_folder, require_tokenizer


def length_buckets(examples: list[dict], batch_size: int, rng: random.Random, key: str = "text") -> list[list[dict]]:
    """Returns shuffled batches of similar-length examples (little padding), in random order."""
    shuffled = examples[:]
    rng.shuffle(shuffled)
    pool = batch_size * 50
    chunks = []
    for start in range(0, len(shuffled), pool):
        window = sorted(shuffled[start : start + pool], key=lambda e: len(str(e[key])))
        chunks += list(batches(window, batch_size))
    rng.shuffle(chunks)
    return chunks


def train_in_place(
    model,
    examples: list[dict],
    loss_of: Callable[[list[dict]], torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    rng: random.Random,
    freeze_embeddings: bool = True,
    progress: Advance = no_progress,
    key: str = "text",
) -> list[float]:
    """Minimises ``loss_of(batch of examples)`` over batches of similar ``key`` lengths with AdamW, 10 % linear
    warm-up then linear decay; returns the loss of every step. ``model`` ends in eval mode with every parameter
    trainable again."""
    if freeze_embeddings:
        model.base_model.get_input_embeddings().weight.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.01)
    steps = epochs * math.ceil(len(examples) / batch_size)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    model.train()
    losses = []
    for _ in range(epochs):
        for chunk in length_buckets(examples, batch_size, rng, key):
            loss = loss_of(chunk)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            progress(len(chunk))
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return losses


def finetune(
    base_dir: str | Path,
    examples: list[dict],
    out: str | Path,
    *,
    labels: list[str] | None = None,
    epochs: int = FinetuneSettings.epochs,
    batch_size: int = FinetuneSettings.batch_size,
    learning_rate: float = FinetuneSettings.learning_rate,
    max_length: int = FinetuneSettings.max_length,
    seed: int = FinetuneSettings.seed,
    freeze_embeddings: bool = FinetuneSettings.freeze_embeddings,
    overwrite: bool = False,
    progress: Advance = no_progress,
) -> Path:
    """Trains a classification head and the encoder of ``base_dir`` on ``examples``; returns ``out``.

    ``labels`` are the label names (default: sorted names found in the data). The
    word-embedding table is frozen by default: most of a small model's parameters,
    little of its accuracy, and most of the optimizer's time on CPU. An existing
    non-empty ``out`` is refused before training unless ``overwrite``.
    """
    refuse_existing(out, overwrite)
    if not examples:
        raise HeadpruneError("no training examples", "pass a non-empty training file")
    labels = labels or sorted({str(e["label"]) for e in examples})
    if (Path(base_dir) / PLAN_FILE).exists():
        # from_pretrained would re-initialise the shrunk attention weights (their shapes differ from the config).
        raise HeadpruneError(
            f"'{base_dir}' is a pruned checkpoint, which fine-tuning cannot load",
            "fine-tune the unpruned model, then prune the result",
        )
    check_model_folder(base_dir)
    tokenizer = require_tokenizer(base_dir)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        base_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
        use_safetensors=True,
        trust_remote_code=False,
        ignore_mismatched_sizes=True,
    )
    losses = train_in_place(
        model,
        examples,
        lambda chunk: model(**encode_batch(tokenizer, chunk, "classification", model.config, max_length)).loss,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        rng=rng,
        freeze_embeddings=freeze_embeddings,
        progress=progress,
    )
    record = {
        "base": str(base_dir),
        "examples": len(examples),
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "max_length": max_length,
        "seed": seed,
        "freeze_embeddings": freeze_embeddings,
        "final_loss": sum(losses[-20:]) / max(len(losses[-20:]), 1),
    }
    with atomic_dir(out, overwrite=overwrite) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "finetune.json").write_text(json.dumps(record, indent=2) + "\n")
    return Path(out)
