"""Head importance scores as a value object, and the scores file (no PyTorch needed to read one)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from exporter.atomic import atomic_write_json
from exporter.errors import HeadpruneError

METHODS = ("token", "batch")
DEFAULT_METHOD = "token"
DEFAULT_BATCH_SIZE = 16


@dataclass
class HeadScores:
    """Importance of every original head: attention type -> layer -> list over original heads (None = removed).

    ``signature`` records how the scores were made (model folder, weights hash, data file, seed), so a
    plan built from them can be traced; ``save`` and ``load`` are the only writer and reader of the file.
    """

    scores: dict[str, dict[int, list[float | None]]]
    method: str
    normalized: bool
    examples: int
    signature: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Returns JSON-ready data."""
        return {
            "method": self.method,
            "normalized": self.normalized,
            "examples": self.examples,
            "scores": {k: {str(i): v for i, v in sorted(layers.items())} for k, layers in self.scores.items()},
            "signature": self.signature,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "HeadScores":
        """Returns scores parsed from ``to_dict`` output."""
        scores = {k: {int(i): v for i, v in layers.items()} for k, layers in data["scores"].items()}
        return cls(
            scores,
            data.get("method", "token"),
            data.get("normalized", True),
            data.get("examples", 0),
            data.get("signature", {}),
        )

    def save(self, path: str | Path) -> Path:
        """Writes the scores as JSON atomically; returns the path."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "HeadScores":
        """Returns scores read from a JSON file written by ``save``; raises HeadpruneError if unreadable."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError as error:
            raise HeadpruneError(f"scores file '{path}' does not exist", "create it with 'headprune score'") from error
        except (json.JSONDecodeError, KeyError, AttributeError, ValueError) as error:
            raise HeadpruneError(
                f"scores file '{path}' is not a headprune scores file", "create it with 'headprune score'"
            ) from error
