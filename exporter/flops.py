"""Forward FLOPs per example of an encoder at a given sequence length, counted from the real modules.

Every linear layer counts 2 * in * out per token (the pooler and classifier too,
a slight overcount); each attention layer adds 2 * 2 * seq^2 * (heads * head_size)
for the scores and the weighted sum. A layer without heads costs nothing there.
"""

from __future__ import annotations

from torch import nn

from .inventory import HeadInventory


def flops_per_example(model: nn.Module, inventory: HeadInventory, seq_len: int) -> int:
    """Returns the forward FLOPs of one example of ``seq_len`` tokens."""
    linear = sum(2 * m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    attention = sum(4 * seq_len * len(layer.kept) * layer.head_size for layer in inventory.layers)
    return seq_len * (linear + attention)
