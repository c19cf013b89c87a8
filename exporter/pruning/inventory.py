"""The head inventory: attention type -> layers -> heads, with the modules that hold them.

Computed once from a model and its family description, then read by gating,
scoring, shrinking, export and reports.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from exporter.errors import HeadpruneError
from exporter.pruning.families import AttentionType, ModelFamily, family_for

# Attribute on each attention module naming the original heads it still holds;
# absent on an unpruned module (then it holds all of them).
KEPT_ATTR = "headprune_kept"
# With grouped-query attention: the original key/value head behind each key/value head the module computes.
KEY_VALUE_ATTR = "headprune_key_value_heads"


def get_path(root: nn.Module, path: str) -> nn.Module:
    """Returns the submodule at dotted ``path`` below ``root``."""
    module = root
    for part in path.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def set_path(root: nn.Module, path: str, value: nn.Module) -> None:
    """Replaces the submodule at dotted ``path`` below ``root`` with ``value``."""
    parent_path, _, name = path.rpartition(".")
    parent = get_path(root, parent_path) if parent_path else root
    setattr(parent, name, value)


@dataclass
class AttentionLayer:
    """One layer of one attention type: its modules and which original heads remain."""

    attention_type: AttentionType
    index: int
    layer: nn.Module
    original_heads: int
    head_size: int
    original_key_value_heads: int | None = None

    def module(self, role: str) -> nn.Module:
        """Returns the module playing ``role`` (query, key, value, output, attention) in this layer."""
        return get_path(self.layer, getattr(self.attention_type, role))

    @property
    def group_size(self) -> int:
        """Returns the number of original query heads sharing one key/value head (1 without grouped-query attention)."""
        if not self.original_key_value_heads:
            return 1
        return self.original_heads // self.original_key_value_heads

    def key_value_heads(self) -> list[int]:
        """Returns the original key/value head behind each key/value head the layer computes now (with grouped-query
        attention; a head appears more than once when uneven groups made its copies necessary), [] otherwise."""
        if not self.original_key_value_heads:
            return []
        return list(getattr(self.module("attention"), KEY_VALUE_ATTR, range(self.original_key_value_heads)))

    def present_extras(self) -> list[str]:
        """Returns the paths of the family's per-head extra projections that this layer has."""
        present = []
        for path in self.attention_type.per_head_extras:
            try:
                get_path(self.layer, path)
            except AttributeError:
                continue
            present.append(path)
        return present

    @property
    def kept(self) -> list[int]:
        """Returns the original indices of the heads this layer still computes."""
        attention = self.module("attention")
        return list(getattr(attention, KEPT_ATTR, range(self.original_heads)))

    def parameter_count(self) -> int:
        """Returns the number of parameters in this layer's Q/K/V and output projections."""
        spec = self.attention_type
        paths = [spec.query, spec.key, spec.value, spec.output, *self.present_extras()] if self.kept else [spec.output]
        # A fused projection (GPT-2's c_attn) plays three roles: count it once.
        return sum(p.numel() for path in dict.fromkeys(paths) for p in get_path(self.layer, path).parameters())


@dataclass
class HeadInventory:
    """Every attention layer of a model, grouped by attention type."""

    family: ModelFamily
    layers: list[AttentionLayer]

    @property
    def attention_types(self) -> list[str]:
        """Returns the attention type names in family order."""
        return [attention_type.name for attention_type in self.family.attention_types]

    def of_type(self, attention_type: str) -> list[AttentionLayer]:
        """Returns the layers of one attention type, by index."""
        return [layer for layer in self.layers if layer.attention_type.name == attention_type]

    def get(self, attention_type: str, index: int) -> AttentionLayer:
        """Returns one layer; raises a HeadpruneError naming the valid range if it does not exist."""
        if attention_type not in self.attention_types:
            raise HeadpruneError(
                f"attention type '{attention_type}' does not exist in this {self.family.name} model",
                f"use one of: {', '.join(self.attention_types)}",
            )
        layers = self.of_type(attention_type)
        if not 0 <= index < len(layers):
            raise HeadpruneError(
                f"layer {index} of attention type '{attention_type}' does not exist",
                f"layers of '{attention_type}' are numbered 0..{len(layers) - 1}",
            )
        return layers[index]

    def removed_key_value_heads(self) -> dict[str, dict[str, list[int]]]:
        """Returns, for grouped-query layers, the original key/value heads gone with every query head of their
        group: {attention type: {layer: [heads]}} (layers that lost none are left out)."""
        removed: dict[str, dict[str, list[int]]] = {}
        for layer in self.layers:
            if not layer.original_key_value_heads:
                continue
            present = set(layer.key_value_heads()) if layer.kept else set()
            gone = [g for g in range(layer.original_key_value_heads) if g not in present]
            if gone:
                removed.setdefault(layer.attention_type.name, {})[str(layer.index)] = gone
        return removed

    def original_head_count(self) -> int:
        """Returns the number of heads the unpruned model had."""
        return sum(layer.original_heads for layer in self.layers)

    def kept_head_count(self) -> int:
        """Returns the number of heads the model computes now."""
        return sum(len(layer.kept) for layer in self.layers)

    def summary(self, model: nn.Module) -> dict:
        """Returns a JSON-ready description: types, heads kept per layer, head size, parameter shares."""
        total = sum(p.numel() for p in model.parameters())
        attention = sum(layer.parameter_count() for layer in self.layers)
        types = {}
        for name in self.attention_types:
            layers = self.of_type(name)
            types[name] = {
                "layers": len(layers),
                "heads_per_layer": [len(layer.kept) for layer in layers],
                **(
                    {
                        "key_value_heads_per_layer": [
                            len(set(layer.key_value_heads())) if layer.kept else 0 for layer in layers
                        ]
                    }
                    if layers and layers[0].original_key_value_heads
                    else {}
                ),
                "original_heads_per_layer": [layer.original_heads for layer in layers],
                "kept_heads": {str(layer.index): layer.kept for layer in layers},
                "head_size": layers[0].head_size if layers else 0,
            }
        return {
            "family": self.family.name,
            "model_type": model.config.model_type,
            "attention_types": types,
            "heads": self.kept_head_count(),
            "original_heads": self.original_head_count(),
            "parameters": total,
            "attention_parameters": attention,
            "attention_share": attention / total if total else 0.0,
        }


def _layer_stack(base: nn.Module, attention_type: AttentionType) -> nn.ModuleList:
    try:
        return get_path(base, attention_type.layers)
    except AttributeError as error:
        raise HeadpruneError(
            f"this model has no '{attention_type.layers}' layer stack for attention type '{attention_type.name}'",
            "the model's modules do not match its family description; use an unmodified Hugging Face model",
        ) from error


def build_inventory(model: nn.Module) -> HeadInventory:
    """Returns the head inventory of a Hugging Face model (raises HeadpruneError for unsupported ones)."""
    config = model.config
    family = family_for(config.model_type)
    base = model.base_model
    layers = []
    for attention_type in family.attention_types:
        original_heads = getattr(config, attention_type.config_heads)
        key_value_heads = getattr(config, attention_type.key_value_heads) if attention_type.key_value_heads else None
        for index, layer in enumerate(_layer_stack(base, attention_type)):
            attention = get_path(layer, attention_type.attention)
            head_size = getattr(attention, attention_type.head_size_attr)
            layers.append(
                AttentionLayer(attention_type, index, layer, original_heads, head_size, key_value_heads or None)
            )
    return HeadInventory(family, layers)
