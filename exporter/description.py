"""The deployment description: what an exported model version is, written next to its ONNX file.

``<repo>/<name>/<version>/deployment.json`` holds the heads, plan, sizes, labels,
input ranges, FLOP coefficients and validation of that version, so that measuring
and reporting read the repository alone: no PyTorch, no original checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from .atomic import atomic_write_json
from .errors import HeadpruneError
from .inventory import HeadInventory
from .plan import HeadPlan

DESCRIPTION_FILE = "deployment.json"
FORMAT = "headprune-deployment/1"


def flop_coefficients(model: nn.Module, inventory: HeadInventory) -> dict[str, int]:
    """Returns (linear, attention) with forward FLOPs per example = seq * linear + seq**2 * attention.

    Every linear layer counts 2 * in * out per token (the pooler and classifier too, a
    slight overcount); each attention layer adds 2 * 2 * heads * head_size per pair of
    positions, for the scores and the weighted sum. A layer without heads costs nothing there.
    """
    linear = sum(2 * m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    attention = sum(4 * len(layer.kept) * layer.head_size for layer in inventory.layers)
    return {"linear": linear, "attention": attention}


def flops_at(coefficients: dict[str, int], seq_len: int) -> int:
    """Returns the forward FLOPs of one example of ``seq_len`` tokens from ``flop_coefficients``."""
    return seq_len * coefficients["linear"] + seq_len * seq_len * coefficients["attention"]


def describe_model(model, inventory: HeadInventory, *, inputs: list[str], input_ranges: dict[str, list[int]],
                   max_length: int, weights_sha256: str, source: str, validation: dict) -> dict:
    """Returns the JSON-ready description of an exported classifier."""
    summary = inventory.summary(model)
    config = model.config
    return {
        "format": FORMAT,
        "family": summary["family"], "model_type": summary["model_type"],
        "source_checkpoint": source, "weights_sha256": weights_sha256,
        "head_plan": HeadPlan.of_model(inventory).to_dict(),
        "heads": summary["heads"], "original_heads": summary["original_heads"],
        "heads_per_layer": {k: v["heads_per_layer"] for k, v in summary["attention_types"].items()},
        "parameters": summary["parameters"], "attention_parameters": summary["attention_parameters"],
        "flops": flop_coefficients(model, inventory),
        "inputs": inputs, "input_ranges": input_ranges,
        "id2label": {str(k): v for k, v in config.id2label.items()},
        "label2id": {str(k): int(v) for k, v in config.label2id.items()},
        "vocab_size": config.vocab_size, "type_vocab_size": getattr(config, "type_vocab_size", 0) or 0,
        "max_positions": getattr(config, "max_position_embeddings", 0) or 0,
        "max_length": max_length,
        "validation": validation,
    }


def write_description(version_folder: str | Path, description: dict) -> Path:
    """Writes ``deployment.json`` into a version folder atomically; returns its path."""
    return atomic_write_json(Path(version_folder) / DESCRIPTION_FILE, description)


def read_description(version_folder: str | Path) -> dict:
    """Returns the description of an exported version; raises HeadpruneError when it is missing or foreign."""
    path = Path(version_folder) / DESCRIPTION_FILE
    try:
        description = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise HeadpruneError(f"'{path}' does not exist: this version was not exported by this headprune",
                             "re-export the model with 'headprune export'") from error
    except json.JSONDecodeError as error:
        raise HeadpruneError(f"'{path}' is damaged ({error.msg})", "re-export the model with 'headprune export'") from error
    if description.get("format") != FORMAT:
        raise HeadpruneError(f"'{path}' is not a {FORMAT} description", "re-export the model with 'headprune export'")
    return description
