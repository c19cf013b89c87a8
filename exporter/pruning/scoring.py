"""Head importance I_h = E_x |dL(x)/d xi_h| (Michel et al. 2019), from one forward+backward pass.

Two estimators, both over the same pass:
- "token" (default; the authors' code): |sum_d context_h,t,d * dL/dcontext_h,t,d| per
  query token t, summed over non-padding tokens and divided by their count;
- "batch" (the Hugging Face bertology script): |dL/d xi_h| per batch, summed and
  divided by the token count.
Scores are then divided by each layer's L2 norm unless ``normalize`` is off.

When heads are masked (re-scoring during iterative pruning), a masked head is gone:
its importance is 0 and it does not enter its layer's norm. The bertology script
instead keeps the (non-zero) score the gate's gradient gives a masked head and
normalises over all heads; ``masked_in_norm=True`` reproduces that.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from exporter.data import batches, encode_batch, examples_for, task_of
from exporter.digest import checkpoint_hash
from exporter.errors import HeadpruneError
from exporter.progress import Advance, Phases, no_phases, no_progress
from exporter.pruning.checkpoint import load_model, require_tokenizer
from exporter.pruning.families import image_tokens
from exporter.pruning.gates import HeadGates
from exporter.pruning.inventory import HeadInventory, build_inventory
from exporter.pruning.plan import HeadPlan
from exporter.pruning.scores import DEFAULT_BATCH_SIZE, DEFAULT_METHOD, METHODS, HeadScores


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Returns a language model's next-token cross-entropy per position (batch, seq - 1); 0 where the label is -100."""
    predicted, targets = logits[:, :-1], labels[:, 1:]
    losses = F.cross_entropy(
        predicted.reshape(-1, predicted.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none"
    )
    return losses.reshape(targets.shape)


def _class_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, reduction="sum")


def _token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum")


# Per task: its summed loss from a batch's logits and labels, whose gradient importance is.
LOSSES = {
    "classification": _class_cross_entropy,
    "image-classification": _class_cross_entropy,
    "regression": lambda logits, labels: F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype), reduction="sum"),
    "translation": _token_cross_entropy,  # teacher forcing: the model shifts the labels into its decoder inputs
    "language-modeling": lambda logits, labels: token_losses(logits, labels).sum(),
}


def batch_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Returns the summed loss of a batch: classification cross-entropy, squared error for a regression
    head, token cross-entropy (teacher forcing) for translation, next-token cross-entropy for a language model."""
    labels = batch["labels"]
    task = task_of(model)
    logits = model(
        **{k: v for k, v in batch.items() if k != "labels"}, labels=labels if task == "translation" else None
    ).logits
    return LOSSES[task](logits, labels)


def query_masks(batch: dict[str, torch.Tensor], task: str, config=None) -> dict[str, torch.Tensor]:
    """Returns the 0/1 masks of real (non-padding) query tokens on each side of the model (``config`` is needed for
    images, whose every patch token is real)."""
    if task == "language-modeling":
        return {"decoder": batch["attention_mask"]}
    if task == "image-classification":
        return {"encoder": torch.ones(batch["pixel_values"].shape[0], image_tokens(config), dtype=torch.long)}
    masks = {"encoder": batch["attention_mask"]}
    if task == "translation":
        masks["decoder"] = (batch["labels"] != -100).long()
    return masks


@contextmanager
def _frozen_parameters(model):
    # Only gradients w.r.t. the gates are needed: skipping weight gradients keeps
    # scoring at about the cost of one forward+backward pass.
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def compute_importance(
    model,
    tokenizer,
    examples: list[dict],
    *,
    method: str = DEFAULT_METHOD,
    normalize: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    removed: HeadPlan | dict | None = None,
    max_length: int = 128,
    masked_in_norm: bool = False,
    progress: Advance = no_progress,
) -> HeadScores:
    """Returns the importance of every head, scored over ``examples`` (never the evaluation split).

    ``removed`` masks those original heads first (for re-scoring during iterative
    pruning): they score 0 and stay out of their layer's norm, unless
    ``masked_in_norm`` (the bertology script's behaviour); ``progress`` is called with
    the number of examples done per batch.
    """
    if method not in METHODS:
        raise HeadpruneError(f"unknown importance method '{method}'", f"use one of: {', '.join(METHODS)}")
    inventory = build_inventory(model)
    task = task_of(model)
    side = {layer.attention_type.name: layer.attention_type.query_side for layer in inventory.layers}
    totals = {
        (layer.attention_type.name, layer.index): torch.zeros(len(layer.kept))
        for layer in inventory.layers
        if layer.kept
    }
    tokens = {"encoder": 0, "decoder": 0}
    masks: dict[str, torch.Tensor] = {}

    def per_token(key, context, gated):
        mask = masks[side[key[0]]].to(context.dtype)
        context = context.detach()

        def accumulate(grad):
            contribution = (context * grad).sum(-1).abs() * mask[..., None]
            totals[key].add_(contribution.sum(dim=tuple(range(contribution.dim() - 1))))

        gated.register_hook(accumulate)

    masked = HeadPlan.of(removed)
    gates = HeadGates(inventory, requires_grad=True, on_context=per_token if method == "token" else None).mask(masked)
    model.eval()
    with _frozen_parameters(model), gates:
        for chunk in batches(examples, batch_size):
            batch = encode_batch(tokenizer, chunk, task, model.config, max_length)
            masks.update(query_masks(batch, task, model.config))
            for name, mask in masks.items():
                tokens[name] += int(mask.sum())
            batch_loss(model, batch).backward()
            if method == "batch":
                for key, gate in gates.values.items():
                    totals[key].add_(gate.grad.abs())
            gates.zero_grad()
            progress(len(chunk))
    if not masked_in_norm:
        _zero_masked(inventory, totals, masked)
    return _as_scores(inventory, totals, tokens, side, method, normalize, len(examples))


def _zero_masked(inventory: HeadInventory, totals: dict, masked: HeadPlan) -> None:
    for layer in inventory.layers:
        drop = masked.heads(layer.attention_type.name, layer.index)
        for position, head in enumerate(layer.kept):
            if head in drop:
                totals[(layer.attention_type.name, layer.index)][position] = 0.0


def _as_scores(inventory: HeadInventory, totals, tokens, side, method, normalize, count) -> HeadScores:
    scores: dict[str, dict[int, list[float | None]]] = {}
    for layer in inventory.layers:
        key = (layer.attention_type.name, layer.index)
        row: list[float | None] = [None] * layer.original_heads
        if layer.kept:
            values = totals[key] / max(tokens[side[key[0]]], 1)
            if normalize:
                # Zeroed (masked) heads add nothing to the norm.
                values = values / values.norm(p=2).clamp_min(1e-20)
            for head, value in zip(layer.kept, values.tolist()):
                row[head] = value
        scores.setdefault(layer.attention_type.name, {})[layer.index] = row
    return HeadScores(scores, method, normalize, count)


def score_checkpoint(
    model_dir: str | Path,
    data: str | Path,
    *,
    method: str = DEFAULT_METHOD,
    normalize: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_examples: int | None = None,
    seed: int = 0,
    columns: dict[str, str] | None = None,
    encoding: str = "utf-8",
    phases: Phases = no_phases,
) -> HeadScores:
    """Returns the importance of every head of the checkpoint in ``model_dir``, scored on the data file ``data``,
    signed with the checkpoint's weights hash, the data file and the seed."""
    model, tokenizer = load_model(model_dir), require_tokenizer(model_dir)
    examples = examples_for(model, data, columns=columns, max_examples=max_examples, seed=seed, encoding=encoding)
    scores = compute_importance(
        model,
        tokenizer,
        examples,
        method=method,
        normalize=normalize,
        batch_size=batch_size,
        progress=phases("scoring heads", len(examples)),
    )
    scores.signature = {
        "model": str(model_dir),
        "weights": checkpoint_hash(model_dir),
        "data": str(data),
        "seed": seed,
        "max_examples": max_examples,
    }
    return scores
