"""The deployment description: what an exported model version is, written next to its ONNX file.

``<repo>/<name>/<version>/deployment.json`` holds the heads, plan, sizes, labels,
input ranges, FLOP coefficients and validation of that version, and the served
version's description is also a parameter of its config.pbtxt, so a client can read
it from a remote server. Measuring and reporting need nothing else: no PyTorch, no
original checkpoint. One dataclass, one writer/parser pair.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from exporter.atomic import atomic_write_json, read_json
from exporter.errors import HeadpruneError

FILE = "deployment.json"
FORMAT = "headprune-deployment/1"
CONFIG_PARAMETER = "deployment"


@dataclass(frozen=True)
class DeploymentDescription:
    """Static facts of one exported version: a text or image classifier, a language model, or a translation model
    (``task``, ``generation``). An image model's ``max_positions`` and ``max_length`` are its fixed token count.

    FLOPs per example at ``seq`` tokens are ``seq * flops_linear + seq**2 * flops_attention``.
    """

    family: str
    model_type: str
    source_checkpoint: str
    weights_sha256: str
    head_plan: dict
    heads: int
    original_heads: int
    heads_per_layer: dict
    parameters: int
    attention_parameters: int
    flops_linear: int
    flops_attention: int
    inputs: list
    input_ranges: dict
    id2label: dict
    label2id: dict
    vocab_size: int
    type_vocab_size: int
    max_positions: int
    max_length: int
    onnx_bytes: int
    validation: dict
    task: str = "classification"
    generation: dict = field(default_factory=dict)
    precision: str = "fp32"
    input_shape: list = field(default_factory=list)  # an image model's pixel input (channels, height, width)
    languages: dict = field(default_factory=dict)  # a translation model's {"source": code, "target": code}, if known

    def flops_at(self, seq_len: int) -> int:
        """Returns the forward FLOPs of one example of ``seq_len`` tokens."""
        return seq_len * self.flops_linear + seq_len * seq_len * self.flops_attention

    def to_dict(self) -> dict:
        """Returns JSON-ready data, with the format tag."""
        return {"format": FORMAT, **asdict(self)}

    def to_json(self) -> str:
        """Returns the description as one line of JSON (for a config parameter)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict, source: str) -> "DeploymentDescription":
        """Returns the description parsed from ``to_dict`` data; raises HeadpruneError naming ``source``."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise HeadpruneError(f"{source} is not a {FORMAT} description", "re-export the model with headprune")
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise HeadpruneError(f"{source} lacks {', '.join(missing)}", "re-export the model with headprune")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def write(self, version_folder: str | Path) -> Path:
        """Writes ``deployment.json`` into a version folder atomically; returns its path."""
        return atomic_write_json(Path(version_folder) / FILE, self.to_dict())

    @classmethod
    def read(cls, version_folder: str | Path) -> "DeploymentDescription":
        """Returns the description of an exported version; raises HeadpruneError when it is missing or foreign."""
        path = Path(version_folder) / FILE
        data = read_json(
            path,
            f"'{path}' does not exist: this version was not exported by this headprune",
            "re-export the model with headprune",
        )
        return cls.from_dict(data, f"'{path}'")

    @classmethod
    def from_config_parameter(cls, text: str, model: str) -> "DeploymentDescription":
        """Returns the description a served config carries as its ``deployment`` parameter."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise HeadpruneError(
                f"the '{CONFIG_PARAMETER}' parameter of '{model}' is not JSON ({error.msg})",
                "re-export the model with headprune",
            ) from error
        return cls.from_dict(data, f"the '{CONFIG_PARAMETER}' parameter of '{model}'")
