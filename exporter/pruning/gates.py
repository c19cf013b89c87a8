"""Per-head gates: a forward pre-hook on each output projection scales every head's context.

Works for eager and SDPA attention alike, because it acts on the projection's
input (..., heads * head_size), after attention has been computed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from exporter.pruning.inventory import HeadInventory
from exporter.pruning.plan import HeadPlan

LayerKey = tuple[str, int]
ContextCallback = Callable[[LayerKey, torch.Tensor, torch.Tensor], None]


class HeadGates:
    """Gates for every kept head of a model, attached while used as a context manager.

    ``values[(attention_type, layer)]`` is a tensor with one entry per kept head (in kept
    order): 1 keeps the head, 0 masks it, anything in between scales it. With
    ``requires_grad`` the gates collect dL/d(gate) on backward.
    ``on_context(key, context, gated)`` sees each layer's (..., heads, head_size)
    context before and after gating; scoring uses it for per-token importance.
    """

    def __init__(
        self, inventory: HeadInventory, requires_grad: bool = False, on_context: ContextCallback | None = None
    ):
        self.inventory = inventory
        self.on_context = on_context
        self.values: dict[LayerKey, torch.Tensor] = {
            (layer.attention_type.name, layer.index): torch.ones(len(layer.kept), requires_grad=requires_grad)
            for layer in inventory.layers
            if layer.kept
        }
        self._handles: list = []

    def mask(self, plan: HeadPlan | dict | None) -> "HeadGates":
        """Sets the gates of the plan's original heads to 0 and all others to 1; returns self."""
        plan = HeadPlan.of(plan)
        with torch.no_grad():
            for layer in self.inventory.layers:
                key = (layer.attention_type.name, layer.index)
                if key not in self.values:
                    continue
                drop = plan.heads(layer.attention_type.name, layer.index)
                self.values[key].copy_(torch.tensor([0.0 if h in drop else 1.0 for h in layer.kept]))
        return self

    def zero_grad(self) -> None:
        """Clears the gradients collected on the gates."""
        for gate in self.values.values():
            gate.grad = None

    def _hook(self, key: LayerKey):
        gate = self.values[key]

        def pre_hook(module, args):
            hidden = args[0]
            context = hidden.reshape(*hidden.shape[:-1], gate.shape[0], -1)
            gated = context * gate.to(hidden.dtype)[:, None]
            if self.on_context is not None:
                self.on_context(key, context, gated)
            return (gated.reshape(hidden.shape), *args[1:])

        return pre_hook

    def __enter__(self) -> "HeadGates":
        for layer in self.inventory.layers:
            key = (layer.attention_type.name, layer.index)
            if key in self.values:
                self._handles.append(layer.module("output").register_forward_pre_hook(self._hook(key)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
