"""Pruning plans: attention type -> layer index -> original head indices to remove."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.errors import HeadpruneError
from exporter.pruning.scores import HeadScores

if TYPE_CHECKING:  # plans are light: reading and writing them needs no PyTorch
    from exporter.pruning.inventory import HeadInventory


@dataclass
class HeadPlan:
    """Which original heads to remove; indices always refer to the unpruned model."""

    removed: dict[str, dict[int, list[int]]] = field(default_factory=dict)

    def __post_init__(self):
        # Layer keys from JSON are strings: normalise once here so that "0" and 0 name the same layer.
        self.removed = {
            kind: {int(layer): sorted(set(heads)) for layer, heads in layers.items() if heads}
            for kind, layers in self.removed.items()
        }
        self.removed = {kind: layers for kind, layers in self.removed.items() if layers}

    @classmethod
    def from_dict(cls, data: object, source: str = "plan") -> "HeadPlan":
        """Returns a plan parsed from JSON-shaped data; raises HeadpruneError naming what is malformed."""
        example = '{"encoder": {"0": [1, 3]}}'
        if not isinstance(data, dict):
            raise HeadpruneError(f"{source} must be a JSON object of attention types", f"write it like {example}")
        removed: dict[str, dict[int, list[int]]] = {}
        for kind, layers in data.items():
            if not isinstance(layers, dict):
                raise HeadpruneError(
                    f"{source}: '{kind}' must map layer indices to head lists", f"write it like {example}"
                )
            for layer, heads in layers.items():
                if not str(layer).lstrip("-").isdigit():
                    raise HeadpruneError(
                        f"{source}: layer '{layer}' of '{kind}' is not an integer", f"write it like {example}"
                    )
                if not isinstance(heads, list) or not all(
                    isinstance(h, int) and not isinstance(h, bool) for h in heads
                ):
                    raise HeadpruneError(
                        f"{source}: heads of layer {layer} of '{kind}' must be a list of integers",
                        f"write it like {example}",
                    )
                twice = sorted({h for h in heads if heads.count(h) > 1})
                if twice:
                    raise HeadpruneError(
                        f"{source}: layer {layer} of '{kind}' lists head(s) {twice} more than once",
                        "list each head to remove once",
                    )
                if heads:
                    removed.setdefault(kind, {})[int(layer)] = sorted(heads)
        return cls(removed)

    @classmethod
    def of(cls, value: "HeadPlan | dict | None") -> "HeadPlan":
        """Returns ``value`` as a plan: a plan itself, a type -> layer -> heads mapping (string or integer
        layer keys), or None for the empty plan."""
        return value if isinstance(value, HeadPlan) else cls(dict(value or {}))

    @classmethod
    def load(cls, path: str | Path) -> "HeadPlan":
        """Returns the plan stored in a JSON file; raises HeadpruneError for a missing or malformed file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as error:
            raise HeadpruneError(f"plan file '{path}' does not exist", "pass the path of a JSON head plan") from error
        except json.JSONDecodeError as error:
            raise HeadpruneError(
                f"plan file '{path}' is not valid JSON ({error.msg} at line {error.lineno})",
                'write it like {"encoder": {"0": [1, 3]}}',
            ) from error
        return cls.from_dict(data.get("plan", data) if isinstance(data, dict) else data, source=f"plan file '{path}'")

    def to_dict(self) -> dict[str, dict[str, list[int]]]:
        """Returns the plan as JSON-ready data (layer keys as strings)."""
        return {kind: {str(i): heads for i, heads in sorted(layers.items())} for kind, layers in self.removed.items()}

    def heads(self, attention_type: str, layer: int) -> set[int]:
        """Returns the original heads of one layer that this plan removes."""
        return set(self.removed.get(attention_type, {}).get(layer, ()))

    def count(self) -> int:
        """Returns how many heads the plan removes."""
        return sum(len(heads) for layers in self.removed.values() for heads in layers.values())

    def remove(self, attention_type: str, layer: int, heads) -> "HeadPlan":
        """Adds original ``heads`` of one layer to the heads this plan removes; returns self."""
        merged = sorted(self.heads(attention_type, layer) | set(heads))
        if merged:
            self.removed.setdefault(attention_type, {})[int(layer)] = merged
        return self

    def copy(self) -> "HeadPlan":
        """Returns an independent copy of this plan."""
        return HeadPlan({kind: dict(layers) for kind, layers in self.removed.items()})

    def merged(self, other: "HeadPlan") -> "HeadPlan":
        """Returns the plan removing the heads of both plans (pruning a pruned model)."""
        result = self.copy()
        for kind, layers in other.removed.items():
            for layer, heads in layers.items():
                result.remove(kind, layer, heads)
        return result

    def common(self, other: "HeadPlan") -> "HeadPlan":
        """Returns the plan of the heads that both this plan and ``other`` remove."""
        return HeadPlan(
            {
                kind: {layer: sorted(set(heads) & other.heads(kind, layer)) for layer, heads in layers.items()}
                for kind, layers in self.removed.items()
            }
        )

    def validate(self, inventory: HeadInventory) -> None:
        """Raises HeadpruneError if the plan names a type, layer or head the model never had."""
        for kind, layers in self.removed.items():
            for index, heads in layers.items():
                layer = inventory.get(kind, index)
                bad = [h for h in heads if not 0 <= h < layer.original_heads]
                if bad:
                    raise HeadpruneError(
                        f"plan names head(s) {bad} in layer {index} of '{kind}', which has heads 0..{layer.original_heads - 1}",
                        "use original head indices within that range",
                    )

    @classmethod
    def of_model(cls, inventory: HeadInventory) -> "HeadPlan":
        """Returns the plan that turns the original model into this (possibly pruned) one."""
        removed = {}
        for layer in inventory.layers:
            gone = sorted(set(range(layer.original_heads)) - set(layer.kept))
            if gone:
                removed.setdefault(layer.attention_type.name, {})[layer.index] = gone
        return cls(removed)


def plan_from_scores(
    scores: HeadScores | dict,
    fraction: float,
    *,
    per_type: bool = False,
    min_heads_per_layer: int = 0,
    already: HeadPlan | None = None,
) -> HeadPlan:
    """Returns the plan removing the lowest-scored heads until ``fraction`` of all heads are gone.

    ``scores`` lists every original head per layer (None for heads already
    removed, which count towards the fraction). Ranking is global, or within
    each attention type with ``per_type``. A layer never drops below
    ``min_heads_per_layer`` heads. The plan extends ``already`` (a pruned model's plan).
    """
    rows = scores.scores if isinstance(scores, HeadScores) else scores
    if not 0 <= fraction < 1:
        raise HeadpruneError(
            f"fraction {fraction} is outside [0, 1)", "give a share of heads to prune as `fraction`, e.g. 0.3"
        )
    if min_heads_per_layer < 0:
        raise HeadpruneError(f"`min_heads_per_layer` {min_heads_per_layer} is negative", "give 0 or more")
    for layers in rows.values():
        for row in layers.values():
            if min_heads_per_layer > len(row):
                raise HeadpruneError(
                    f"`min_heads_per_layer` {min_heads_per_layer} exceeds the {len(row)} heads of a layer",
                    f"give at most {len(row)}",
                )
    plan = (already or HeadPlan()).copy()
    groups = [{k: rows[k]} for k in rows] if per_type else [rows]
    for group in groups:
        total = sum(len(row) for layers in group.values() for row in layers.values())
        target = round(fraction * total)
        candidates = []
        for kind, layers in group.items():
            for layer, row in layers.items():
                plan.remove(kind, layer, [head for head, value in enumerate(row) if value is None])
                candidates += [
                    (value, kind, layer, head)
                    for head, value in enumerate(row)
                    if value is not None and head not in plan.heads(kind, layer)
                ]
        done = sum(len(plan.heads(k, i)) for k, layers in group.items() for i in layers)
        for _, kind, layer, head in sorted(candidates):
            if done >= target:
                break
            if len(group[kind][layer]) - len(plan.heads(kind, layer)) <= min_heads_per_layer:
                continue
            plan.remove(kind, layer, [head])
            done += 1
    return plan
