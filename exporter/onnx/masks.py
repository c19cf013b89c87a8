"""Causal attention masks built in the graph, for exports that must not bake a sequence length into them.

transformers builds its masks (sliding windows included) in ways that tracing can fix to the example's
length; these are plain tensor operations on the attention mask, so every length works.
"""

from __future__ import annotations

import torch


def causal_mask(attention_mask: torch.Tensor, new: int, dtype: torch.dtype, window: int | None = None) -> torch.Tensor:
    """Returns the additive (batch, 1, new, past + new) mask: a query sees real keys at its position or before (and,
    with a sliding ``window``, fewer than ``window`` positions back, as transformers' sliding-window layers do)."""
    total = attention_mask.shape[1]
    keys = torch.arange(total, device=attention_mask.device)
    queries = torch.arange(new, device=attention_mask.device) + (total - new)
    allowed = keys[None, :] <= queries[:, None]
    if window:
        allowed = allowed & (keys[None, :] > queries[:, None] - window)
    allowed = allowed[None, None] & attention_mask[:, None, None, :].bool()
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


def step_masks(config, attention_mask: torch.Tensor, new: int, dtype: torch.dtype):
    """Returns what the model's forward takes as a prepared mask: one 4D mask (a sliding window on every layer
    when the config sets one, Mistral's way), or one per attention type where the config lists layer types
    (Qwen2's way, sliding layers among full ones)."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:
        return causal_mask(attention_mask, new, dtype, window)
    return {
        kind: causal_mask(attention_mask, new, dtype, window if kind == "sliding_attention" else None)
        for kind in set(layer_types)
    }
