"""What a served model is: its static facts, from the repository or from the server itself.

Facts come from the description export wrote for the served version
(``<version>/deployment.json``, also carried by the config as its ``deployment``
parameter) and from the model's config: no PyTorch, no original checkpoint. A
repository the client cannot read is described by the server's model config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from exporter.errors import HeadpruneError
from exporter.triton.config import read_config
from exporter.triton.description import CONFIG_PARAMETER, DeploymentDescription
from exporter.triton.layout import ModelRepository


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

    @classmethod
    def of(cls, name: str, version: int, description: DeploymentDescription, max_batch_size: int,
           seq_len: int) -> "DeploymentFacts":
        """Returns the facts of a served version from its description, at ``seq_len`` tokens."""
        d = description
        return cls(name=name, version=version, source_checkpoint=d.source_checkpoint, weights_sha256=d.weights_sha256,
                   head_plan=d.head_plan, heads=d.heads, original_heads=d.original_heads,
                   heads_per_layer=d.heads_per_layer, parameters=d.parameters,
                   attention_parameters=d.attention_parameters, onnx_bytes=d.onnx_bytes,
                   flops_per_example=d.flops_at(seq_len), seq_len=seq_len, inputs=d.inputs, id2label=d.id2label,
                   label2id=d.label2id, vocab_size=d.vocab_size, max_batch_size=max_batch_size,
                   max_positions=d.max_positions or 1 << 30, max_length=d.max_length)

    @property
    def pruned_share(self) -> float:
        """Returns the share of the original heads that were removed."""
        return 1 - self.heads / self.original_heads if self.original_heads else 0.0

    def to_dict(self) -> dict:
        """Returns JSON-ready data."""
        return {**asdict(self), "pruned_share": self.pruned_share}


def describe_deployment(repo: str | Path, name: str, seq_len: int) -> DeploymentFacts:
    """Returns the static facts of the served version of model ``name`` in the repository ``repo``."""
    repository = ModelRepository(Path(repo))
    config = read_config(repository.config_path(name))
    version = repository.served_version(name)
    description = DeploymentDescription.read(repository.version_folder(name, version))
    return DeploymentFacts.of(name, version, description, config.max_batch_size, seq_len)


def describe_remote_deployment(client, name: str, seq_len: int) -> DeploymentFacts:
    """Returns the static facts of model ``name`` as a running server describes it (its config and versions)."""
    config = client.config(name)
    text = config.get("parameters", {}).get(CONFIG_PARAMETER, {}).get("string_value")
    if not text:
        raise HeadpruneError(f"Triton at {client.url} serves '{name}' without a headprune description (its config has "
                             f"no '{CONFIG_PARAMETER}' parameter), so its heads, sizes and FLOPs are unknown",
                             "export the model with this headprune, or compare with a repository folder this "
                             "machine can read")
    version = max((int(v) for v in client.versions(name)), default=0)
    return DeploymentFacts.of(name, version, DeploymentDescription.from_config_parameter(text, name),
                              int(config.get("max_batch_size", 0)), seq_len)
