"""Structural shrinking: really remove heads' rows and columns from Q/K/V and the output projection."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D, prune_linear_layer

from exporter.pruning.inventory import (
    KEPT_ATTR,
    KEY_VALUE_ATTR,
    AttentionLayer,
    HeadInventory,
    build_inventory,
    get_path,
    set_path,
)
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

    def __init__(
        self,
        head_size_attr: str,
        head_size: int,
        head_count_attr: str | None,
        inner_output: str | None = None,
        output: nn.Module | None = None,
        layer_idx: int | None = None,
        cache_hook: Callable[..., None] | None = None,
    ):
        super().__init__()
        setattr(self, head_size_attr, head_size)
        if head_count_attr:
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
    if not positions:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.arange(p * head_size, (p + 1) * head_size) for p in positions])


def select_outputs(module: nn.Module, index: torch.Tensor) -> nn.Module:
    """Returns a copy of a linear projection (nn.Linear or GPT-2's transposed Conv1D) computing only output features ``index``."""
    if isinstance(module, Conv1D):  # weight is (in, out)
        selected = Conv1D(len(index), module.weight.shape[0]).to(module.weight.device, module.weight.dtype)
        selected.weight.data.copy_(module.weight.data[:, index])
        selected.bias.data.copy_(module.bias.data[index])
        return selected
    return prune_linear_layer(module, index, dim=0)


def select_inputs(module: nn.Module, index: torch.Tensor) -> nn.Module:
    """Returns a copy of a linear projection (nn.Linear or Conv1D) reading only input features ``index``."""
    if isinstance(module, Conv1D):
        selected = Conv1D(module.nf, len(index)).to(module.weight.device, module.weight.dtype)
        selected.weight.data.copy_(module.weight.data[index])
        selected.bias.data.copy_(module.bias.data)
        return selected
    return prune_linear_layer(module, index, dim=1)


def key_value_layout(layer: AttentionLayer, keep: list[int]) -> tuple[list[int], int]:
    """Returns (original key/value head of each key/value head to compute, query heads per key/value head) for a
    grouped-query layer keeping the original query heads ``keep`` (in kept order, grouped by key/value head).

    Attention modules repeat each key/value head for an equal number of query heads, so groups left with
    unequal numbers of query heads are split into sub-groups of their greatest common size, each with its own
    copy of the key/value head: exact, at the cost of those copies.
    """
    counts = Counter(head // layer.group_size for head in keep)
    size = math.gcd(*counts.values())
    return [group for group in sorted(counts) for _ in range(counts[group] // size)], size


def _projection_rows(layer: AttentionLayer, keep: list[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[int]]:
    """Returns the output rows of the current Q/K/V (and extra) projections to keep, per module path; the kept
    query features (the output projection's inputs); and the new key/value layout."""
    current, size = layer.kept, layer.head_size
    query = _row_index([current.index(h) for h in keep], size)
    rows, widths, key_values = {"query": query}, {"query": len(current) * size}, []
    if layer.original_key_value_heads:
        key_values, _ = key_value_layout(layer, keep)
        present = layer.key_value_heads()
        rows["key"] = rows["value"] = _row_index([present.index(g) for g in key_values], size)
        widths["key"] = widths["value"] = len(present) * size
    else:
        rows["key"] = rows["value"] = query
        widths["key"] = widths["value"] = widths["query"]
    by_path: dict[str, list[torch.Tensor]] = {}
    offsets: dict[str, int] = {}
    spec = layer.attention_type
    for role in ("query", "key", "value"):
        path = getattr(spec, role)
        # A module computing several roles (fused QKV) holds their blocks one after the other.
        by_path.setdefault(path, []).append(rows[role] + offsets.get(path, 0))
        offsets[path] = offsets.get(path, 0) + widths[role]
    for path in layer.present_extras():
        by_path[path] = [query]
    return {path: torch.cat(parts) for path, parts in by_path.items()}, query, key_values


def shrink_layer(layer: AttentionLayer, keep: list[int]) -> None:
    """Shrinks one attention layer so that it computes only the original heads in ``keep``."""
    spec = layer.attention_type
    output = layer.module("output")
    if not keep:
        bias_only = BiasOnly(output.nf if isinstance(output, Conv1D) else output.out_features, output.bias)
        inner = spec.output[len(spec.attention) + 1 :] if spec.output.startswith(spec.attention + ".") else None
        layer_idx = getattr(layer.module("attention"), "layer_idx", None)
        headless = HeadlessAttention(
            spec.head_size_attr, layer.head_size, spec.head_count_attr, inner, bias_only, layer_idx, spec.headless_cache
        )
        set_path(layer.layer, spec.attention, headless)
        if inner is None:
            set_path(layer.layer, spec.output, bias_only)
        return
    rows, query_rows, key_values = _projection_rows(layer, keep)
    for path, index in rows.items():
        set_path(layer.layer, path, select_outputs(get_path(layer.layer, path), index))
    set_path(layer.layer, spec.output, select_inputs(output, query_rows))
    attention = layer.module("attention")
    if spec.head_count_attr:
        setattr(attention, spec.head_count_attr, len(keep))
    if spec.width_attr:
        setattr(attention, spec.width_attr, len(keep) * layer.head_size)
    if key_values:
        setattr(attention, spec.groups_attr, len(keep) // len(key_values))
        setattr(attention, KEY_VALUE_ATTR, key_values)
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
