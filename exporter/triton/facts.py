"""The static facts of an exported model that its deployment.json records: heads, parameters, FLOPs, inputs."""

from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers.pytorch_utils import Conv1D

from exporter.data import task_of
from exporter.digest import checkpoint_hash
from exporter.onnx.export import pixel_shape
from exporter.pruning.families import image_tokens, usable_positions
from exporter.pruning.inventory import HeadInventory
from exporter.pruning.plan import HeadPlan
from exporter.tasks import TASKS
from exporter.triton.description import DeploymentDescription


def input_ranges(config, names: list[str]) -> dict[str, list[int]]:
    """Returns the valid [low, high) range of each integer input, from the model's vocabulary sizes."""
    ranges = {
        "input_ids": [0, getattr(config, "vocab_size", 0)],
        "attention_mask": [0, 2],
        "token_type_ids": [0, getattr(config, "type_vocab_size", 1) or 1],
    }
    return {name: ranges[name] for name in names if name in ranges}  # pixel values are not integers


def flop_coefficients(model: nn.Module, inventory: HeadInventory) -> tuple[int, int]:
    """Returns (linear, attention): forward FLOPs per example = seq * linear + seq**2 * attention.

    Every linear layer counts 2 * in * out per token (the pooler and classifier too, a
    slight overcount); each attention layer adds 2 * 2 * heads * head_size per pair of
    positions, for the scores and the weighted sum. A layer without heads costs nothing there.
    """
    # Linear and Conv1D layers; an image model's patch embedding, applied once per patch, counts like one too.
    linear = sum(2 * m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, Conv1D, nn.Conv2d)))
    attention = sum(4 * len(layer.kept) * layer.head_size for layer in inventory.layers)
    return linear, attention


def describe_model(
    model,
    inventory: HeadInventory,
    *,
    inputs: list[str],
    max_length: int,
    source: Path,
    onnx_bytes: int,
    validation: dict,
) -> DeploymentDescription:
    """Returns the description of an exported classifier or language model."""
    summary = inventory.summary(model)
    config = model.config
    task = task_of(model)
    linear, attention = flop_coefficients(model, inventory)
    labelled = TASKS[task].labels
    return DeploymentDescription(
        family=summary["family"],
        model_type=summary["model_type"],
        source_checkpoint=str(source.resolve()),
        weights_sha256=checkpoint_hash(source),
        head_plan=HeadPlan.of_model(inventory).to_dict(),
        heads=summary["heads"],
        original_heads=summary["original_heads"],
        heads_per_layer={k: v["heads_per_layer"] for k, v in summary["attention_types"].items()},
        parameters=summary["parameters"],
        attention_parameters=summary["attention_parameters"],
        flops_linear=linear,
        flops_attention=attention,
        inputs=inputs,
        input_ranges=input_ranges(config, inputs),
        id2label={str(k): v for k, v in config.id2label.items()} if labelled else {},
        label2id={str(k): int(v) for k, v in config.label2id.items()} if labelled else {},
        vocab_size=getattr(config, "vocab_size", 0) or 0,
        type_vocab_size=getattr(config, "type_vocab_size", 0) or 0,
        max_positions=image_tokens(config) if task == "image-classification" else usable_positions(config),
        max_length=image_tokens(config) if task == "image-classification" else max_length,
        onnx_bytes=onnx_bytes,
        validation=validation,
        task=task if task in ("language-modeling", "image-classification") else "classification",
        input_shape=pixel_shape(config) if task == "image-classification" else [],
    )
