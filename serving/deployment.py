"""What a served model is: its static facts, read from the repository and its source checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from exporter.checkpoint import load_model
from exporter.errors import HeadpruneError
from exporter.flops import flops_per_example
from exporter.inventory import build_inventory
from exporter.triton_config import read_config
from exporter.triton_repo import model_versions


@dataclass
class DeploymentFacts:
    """Static facts of one deployment: sizes, heads, FLOPs, provenance."""

    name: str
    version: int
    source_checkpoint: str
    weights_sha256: str
    head_plan: dict
    heads: int
    original_heads: int
    heads_per_layer: dict[str, list[int]]
    parameters: int
    attention_parameters: int
    onnx_bytes: int
    flops_per_example: int
    seq_len: int
    inputs: list[str]
    id2label: dict[str, str]
    label2id: dict[str, int]
    vocab_size: int
    max_batch_size: int
    max_positions: int

    @property
    def pruned_share(self) -> float:
        """Returns the share of the original heads that were removed."""
        return 1 - self.heads / self.original_heads if self.original_heads else 0.0

    def to_dict(self) -> dict:
        """Returns JSON-ready data."""
        return {**asdict(self), "pruned_share": self.pruned_share}


def latest_version(folder: Path) -> int:
    """Returns the highest numbered version folder of a model; raises HeadpruneError if none."""
    versions = model_versions(folder)
    if not versions:
        raise HeadpruneError(f"model '{folder.name}' has no version in '{folder.parent}'",
                             f"export it with 'headprune export MODEL_DIR --repo {folder.parent} --name {folder.name}'")
    return max(versions)


def describe_deployment(repo: str | Path, name: str, seq_len: int) -> DeploymentFacts:
    """Returns the static facts of model ``name`` in ``repo`` (reads its config and source checkpoint)."""
    folder = Path(repo) / name
    config = read_config(folder / "config.pbtxt")
    parameters = {k: v.string_value for k, v in config.parameters.items()}
    source = parameters.get("source_checkpoint")
    if not source or not Path(source).is_dir():
        raise HeadpruneError(f"the source checkpoint of '{name}' ({source}) is not available",
                             "compare models exported by 'headprune export' on this machine")
    version = latest_version(folder)
    model = load_model(source)
    inventory = build_inventory(model)
    summary = inventory.summary(model)
    return DeploymentFacts(
        name=name, version=version, source_checkpoint=source, weights_sha256=parameters.get("weights_sha256", ""),
        head_plan=json.loads(parameters.get("head_plan", "{}")), heads=summary["heads"],
        original_heads=summary["original_heads"],
        heads_per_layer={k: v["heads_per_layer"] for k, v in summary["attention_types"].items()},
        parameters=summary["parameters"], attention_parameters=summary["attention_parameters"],
        onnx_bytes=(folder / str(version) / (config.default_model_filename or "model.onnx")).stat().st_size,
        flops_per_example=flops_per_example(model, inventory, seq_len), seq_len=seq_len,
        inputs=[i.name for i in config.input],
        id2label={str(k): v for k, v in model.config.id2label.items()},
        label2id={str(k): int(v) for k, v in model.config.label2id.items()},
        vocab_size=model.config.vocab_size, max_batch_size=config.max_batch_size,
        max_positions=getattr(model.config, "max_position_embeddings", 0) or 1 << 30,
    )
