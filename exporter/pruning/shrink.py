"""Structural shrinking: really remove heads' rows and columns from Q/K/V and the output projection."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

from exporter.pruning.inventory import KEPT_ATTR, AttentionLayer, HeadInventory, build_inventory, get_path, set_path
from exporter.pruning.plan import HeadPlan


class BiasOnly(nn.Module):
    """Stands in for an output projection whose every head is gone: returns its bias.

    That is exactly what the masked model computes (all-zero context times W, plus b).
    """

    def __init__(self, out_features: int, bias: torch.Tensor | None):
        super().__init__()
        self.out_features = out_features
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        shape = (*hidden.shape[:-1], self.out_features)
        if self.bias is None:
            return hidden.new_zeros(shape)
        return self.bias.to(hidden.dtype).expand(shape)


class HeadlessAttention(nn.Module):
    """Replaces an attention module left with zero heads.

    When the family's output projection lives inside the attention module it is
    kept here under the same name (as a BiasOnly); otherwise the hidden states are
    passed on to the (BiasOnly) projection outside, which only reads their shape.
    ``cache_hook`` (the attention type's ``headless_cache``) keeps the model's KV
    cache as the replaced module would have left it, for layer ``layer_idx``.
    """

    def __init__(self, head_size_attr: str, head_size: int, head_count_attr: str,
                 inner_output: str | None = None, output: nn.Module | None = None,
                 layer_idx: int | None = None, cache_hook: Callable[..., None] | None = None):
        super().__init__()
        setattr(self, head_size_attr, head_size)
        setattr(self, head_count_attr, 0)
        setattr(self, KEPT_ATTR, [])
        self.layer_idx = layer_idx
        self._cache_hook = cache_hook
        self._inner_output = inner_output
        if inner_output:
            setattr(self, inner_output, output)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        if self._cache_hook is not None:
            self._cache_hook(self, hidden_states, *args, **kwargs)
        if self._inner_output:
            return getattr(self, self._inner_output)(hidden_states), None
        return hidden_states, None


def _row_index(positions: list[int], head_size: int) -> torch.Tensor:
    return torch.cat([torch.arange(p * head_size, (p + 1) * head_size) for p in positions])


def shrink_layer(layer: AttentionLayer, keep: list[int]) -> None:
    """Shrinks one attention layer so that it computes only the original heads in ``keep``."""
    spec, current = layer.attention_type, layer.kept
    output = layer.module("output")
    if not keep:
        bias_only = BiasOnly(output.out_features, output.bias)
        inner = spec.output[len(spec.attention) + 1:] if spec.output.startswith(spec.attention + ".") else None
        layer_idx = getattr(layer.module("attention"), "layer_idx", None)
        headless = HeadlessAttention(spec.head_size_attr, layer.head_size, spec.head_count_attr, inner, bias_only,
                                     layer_idx, spec.headless_cache)
        set_path(layer.layer, spec.attention, headless)
        if inner is None:
            set_path(layer.layer, spec.output, bias_only)
        return
    index = _row_index([current.index(h) for h in keep], layer.head_size)
    for path in (spec.query, spec.key, spec.value, *layer.present_extras()):
        set_path(layer.layer, path, prune_linear_layer(get_path(layer.layer, path), index, dim=0))
    set_path(layer.layer, spec.output, prune_linear_layer(output, index, dim=1))
    attention = layer.module("attention")
    setattr(attention, spec.head_count_attr, len(keep))
    if spec.width_attr:
        setattr(attention, spec.width_attr, len(keep) * layer.head_size)
    setattr(attention, KEPT_ATTR, list(keep))
    if spec.on_shrink is not None:
        spec.on_shrink(attention, list(keep))


def apply_plan(model: nn.Module, plan: HeadPlan) -> HeadInventory:
    """Removes the plan's heads from ``model`` in place; returns the new inventory.

    Heads the model no longer has are skipped, so applying a plan to an already
    pruned model composes: the result lacks the union of both plans' heads.
    """
    inventory = build_inventory(model)
    plan.validate(inventory)
    for layer in inventory.layers:
        drop = plan.heads(layer.attention_type.name, layer.index)
        if drop & set(layer.kept):
            shrink_layer(layer, [h for h in layer.kept if h not in drop])
    return build_inventory(model)
