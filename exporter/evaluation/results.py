"""The paper's experiment results as small typed objects that format themselves.

Light to import (no PyTorch): the report side reads them back from JSON with
``from_dict``. Layer keys are strings, as in the JSON files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from exporter.evaluation.metrics import gain, in_points


class _Stored:
    """JSON round trip of a result dataclass: ``to_dict`` and ``from_dict``."""

    def to_dict(self) -> dict:
        """Returns JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        """Returns the result stored by ``to_dict``."""
        return cls(**data)


@dataclass
class Ablation(_Stored):
    """Each head removed alone: the metric's change per head and its paired test's p-value."""

    metric: str
    baseline: float
    examples: int
    alpha: float
    delta: dict[str, dict[str, list[float]]]
    p_value: dict[str, dict[str, list[float]]]

    def significant(self) -> tuple[int, int]:
        """Returns (heads whose removal alone changes the metric significantly, all heads)."""
        p_values = [p for layers in self.p_value.values() for row in layers.values() for p in row]
        return sum(p < self.alpha for p in p_values), len(p_values)

    def format(self) -> str:
        """Returns a one-line summary."""
        moved, total = self.significant()
        return (
            f"baseline {self.metric} {in_points(self.metric, self.baseline):.2f} on {self.examples} examples; heads "
            f"whose removal changes it significantly (p < {self.alpha}): {moved} of {total}"
        )


@dataclass
class BestHeads(_Stored):
    """Each layer reduced to its best single head: per layer the head, the metric, its change and p-value."""

    metric: str
    baseline: float
    examples: int
    alpha: float
    layers: dict[str, dict[str, dict]]

    def significant(self) -> tuple[int, int]:
        """Returns (layers whose reduction to one head changes the metric significantly, all layers)."""
        rows = [row for layers in self.layers.values() for row in layers.values()]
        return sum(row["p_value"] < self.alpha for row in rows), len(rows)

    def format(self) -> str:
        """Returns one line per layer, significant changes marked with *."""
        lines = []
        for kind, layers in self.layers.items():
            for layer, row in layers.items():
                mark = "*" if row["p_value"] < self.alpha else " "
                lines.append(
                    f"{kind} layer {layer}: best head {row['best_head']}, {self.metric} "
                    f"{in_points(self.metric, row['metric']):.2f} ({in_points(self.metric, row['delta']):+.2f}"
                    f"{mark} p={row['p_value']:.3g})"
                )
        lines.append(f"* significant at p < {self.alpha} (paired test on {self.examples} examples)")
        return "\n".join(lines)


@dataclass
class PruningCurve(_Stored):
    """The metric at growing shares of heads pruned, each point with its plan."""

    metric: str
    rescore: bool
    per_type: bool
    step: float
    points: list[dict]
    label: str = field(default="")
    only_type: str | None = None  # set when only this attention type's heads were pruned

    def tolerated_share(self, points: float = 1.0) -> float:
        """Returns the largest share pruned, scanning in order, while the metric stays within ``points`` of the start."""
        base = self.points[0]["metric"]
        share = 0.0
        for point in self.points:
            if -gain(self.metric, base, point["metric"]) > points:
                break
            share = point["fraction"]
        return share

    def format(self) -> str:
        """Returns one line per point."""
        return "\n".join(
            f"{100 * p['fraction']:5.1f} % pruned ({p['pruned_heads']:3d} heads): {self.metric} "
            f"{in_points(self.metric, p['metric']):.2f}"
            for p in self.points
        )
