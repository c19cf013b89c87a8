"""What a served model is: its static facts, from the repository or from the server itself.

Facts come from the description export wrote for the served version
(``<version>/deployment.json``, also carried by the config as its ``deployment``
parameter) and from the model's config: no PyTorch, no original checkpoint. A
repository the client cannot read is described by the server's model config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from exporter.errors import HeadpruneError
from exporter.triton.config import read_config
from exporter.triton.description import CONFIG_PARAMETER, DeploymentDescription
from exporter.triton.layout import ModelRepository, image_model_name, text_model_name, translate_model_name


@dataclass(frozen=True)
class DeploymentFacts:
    """Static facts of one deployment: the served version's description, where and how it is measured."""

    name: str
    version: int
    description: DeploymentDescription
    max_batch_size: int
    seq_len: int

    @property
    def flops_per_example(self) -> int:
        """Returns the forward FLOPs of one example at the measured sequence length (an image's own token count)."""
        return self.description.flops_at(self.description.max_length if self.description.input_shape else self.seq_len)

    @property
    def latency_model(self) -> str:
        """Returns the served model that latency is measured on: the tensor model, or the translation model."""
        return translate_model_name(self.name) if self.description.task == "translation" else self.name

    @property
    def quality_model(self) -> str:
        """Returns the served model that quality is measured through: the text or image front end, or the translation
        model."""
        if self.description.task == "image-classification":
            return image_model_name(self.name)
        return translate_model_name(self.name) if self.description.task == "translation" else text_model_name(self.name)

    @property
    def max_positions(self) -> int:
        """Returns the longest sequence the model takes (unbounded when its config does not say)."""
        return self.description.max_positions or 1 << 30

    @property
    def pruned_share(self) -> float:
        """Returns the share of the original heads that were removed."""
        d = self.description
        return 1 - d.heads / d.original_heads if d.original_heads else 0.0

    def __getattr__(self, name: str):
        # Every other fact is the description's own field.
        if name == "description":
            raise AttributeError(name)
        return getattr(self.description, name)

    def to_dict(self) -> dict:
        """Returns JSON-ready data: the description's facts, flat, with where and how it was measured."""
        d = self.description
        return {
            "name": self.name,
            "version": self.version,
            "source_checkpoint": d.source_checkpoint,
            "weights_sha256": d.weights_sha256,
            "head_plan": d.head_plan,
            "heads": d.heads,
            "original_heads": d.original_heads,
            "heads_per_layer": d.heads_per_layer,
            "parameters": d.parameters,
            "attention_parameters": d.attention_parameters,
            "onnx_bytes": d.onnx_bytes,
            "flops_per_example": self.flops_per_example,
            "seq_len": self.seq_len,
            "inputs": d.inputs,
            "id2label": d.id2label,
            "label2id": d.label2id,
            "vocab_size": d.vocab_size,
            "max_batch_size": self.max_batch_size,
            "max_positions": self.max_positions,
            "max_length": d.max_length,
            "pruned_share": self.pruned_share,
            "task": d.task,
            "precision": d.precision,
            "input_shape": d.input_shape,
        }


def exported_model(repository: ModelRepository, name: str) -> str | None:
    """Returns the model the repository holds for deployment ``name`` (the classifier ``name`` or the
    translation model ``<name>_translate``), or None when it holds neither."""
    for candidate in (name, translate_model_name(name)):
        if repository.config_path(candidate).exists():
            return candidate
    return None


def describe_deployment(repo: str | Path, name: str, seq_len: int) -> DeploymentFacts:
    """Returns the static facts of the served version of deployment ``name`` in the repository ``repo``:
    the classifier ``name``, or the translation model ``<name>_translate``."""
    repository = ModelRepository(Path(repo))
    served = exported_model(repository, name) or name
    config = read_config(repository.config_path(served))
    version = repository.served_version(served)
    description = DeploymentDescription.read(repository.version_folder(served, version))
    return DeploymentFacts(name, version, description, config.max_batch_size, seq_len)


def describe_remote_deployment(client, name: str, seq_len: int) -> DeploymentFacts:
    """Returns the static facts of model ``name`` as a running server describes it (its config and versions)."""
    config = client.config(name)
    text = config.get("parameters", {}).get(CONFIG_PARAMETER, {}).get("string_value")
    if not text:
        raise HeadpruneError(
            f"Triton at {client.url} serves '{name}' without a headprune description (its config has "
            f"no '{CONFIG_PARAMETER}' parameter), so its heads, sizes and FLOPs are unknown",
            "export the model with this headprune, or compare with a repository folder this machine can read",
        )
    version = max((int(v) for v in client.versions(name)), default=0)
    return DeploymentFacts(
        name,
        version,
        DeploymentDescription.from_config_parameter(text, name),
        int(config.get("max_batch_size", 0)),
        seq_len,
    )
