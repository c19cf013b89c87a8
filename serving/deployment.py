"""What a served model is: its static facts, read from the model repository alone.

Facts come from the description that export wrote next to the served version
(``<version>/deployment.json``) and from the model's config: no PyTorch, no
original checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from exporter.description import flops_at, read_description
from exporter.errors import HeadpruneError
from exporter.triton_config import read_config
from exporter.triton_repo import model_versions


@dataclass
class DeploymentFacts:
    """Static facts of one deployment (the version Triton serves): sizes, heads, FLOPs, provenance."""

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
    max_length: int = 0

    @property
    def pruned_share(self) -> float:
        """Returns the share of the original heads that were removed."""
        return 1 - self.heads / self.original_heads if self.original_heads else 0.0

    def to_dict(self) -> dict:
        """Returns JSON-ready data."""
        return {**asdict(self), "pruned_share": self.pruned_share}


def served_version(folder: Path) -> int:
    """Returns the version Triton serves under the default policy (the highest); raises HeadpruneError if none."""
    versions = model_versions(folder)
    if not versions:
        raise HeadpruneError(f"model '{folder.name}' has no version in '{folder.parent}'",
                             f"export it with 'headprune export MODEL_DIR --repo {folder.parent} --name {folder.name}'")
    return max(versions)


def describe_deployment(repo: str | Path, name: str, seq_len: int) -> DeploymentFacts:
    """Returns the static facts of the served version of model ``name`` in ``repo``."""
    folder = Path(repo) / name
    config = read_config(folder / "config.pbtxt")
    version = served_version(folder)
    described = read_description(folder / str(version))
    return DeploymentFacts(
        name=name, version=version, source_checkpoint=described["source_checkpoint"],
        weights_sha256=described["weights_sha256"], head_plan=described["head_plan"], heads=described["heads"],
        original_heads=described["original_heads"], heads_per_layer=described["heads_per_layer"],
        parameters=described["parameters"], attention_parameters=described["attention_parameters"],
        onnx_bytes=(folder / str(version) / (config.default_model_filename or "model.onnx")).stat().st_size,
        flops_per_example=flops_at(described["flops"], seq_len), seq_len=seq_len,
        inputs=described["inputs"], id2label=described["id2label"], label2id=described["label2id"],
        vocab_size=described["vocab_size"], max_batch_size=config.max_batch_size,
        max_positions=described["max_positions"] or 1 << 30, max_length=described["max_length"],
    )
