"""ONNX export of a decoder-only language model's generation step with a KV cache, for uneven head counts.

One graph, ``generate.onnx``, serves the prompt and every later step: ``input_ids`` (batch, new),
``attention_mask`` (batch, past + new; 0 on left padding), ``position_ids`` (batch, new), and
``past.{l}.key`` / ``past.{l}.value`` (batch, key/value heads_l, past, head_size) for every layer with
heads -> ``logits`` (batch, vocabulary) of the last position and ``present.{l}.key`` / ``.value`` (past + new
positions). A layer's key/value heads are what its attention computes: grouped-query layers may hold fewer
than their query heads, or copies where pruning left groups uneven; a layer without heads has no cache
tensors. The graph runs the model's own layers over a KV cache rebuilt from the tensors, with positions and
the causal masks (sliding windows included) given explicitly (a headless first layer has no cache to count
positions from).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from exporter.onnx.export import OPSET
from exporter.onnx.masks import step_masks
from exporter.pruning.inventory import build_inventory

GENERATE_FILE = "generate.onnx"


@dataclass(frozen=True)
class CausalCacheLayout:
    """Key/value heads and head size of every layer's cache (0: a layer without heads, no cache)."""

    heads: tuple[int, ...]
    head_size: int

    @classmethod
    def of(cls, model) -> "CausalCacheLayout":
        """Returns the layout of ``model`` as pruned."""
        layers = build_inventory(model).layers
        heads = tuple(
            (len(layer.key_value_heads()) if layer.original_key_value_heads else len(layer.kept)) if layer.kept else 0
            for layer in layers
        )
        return cls(heads, layers[0].head_size)

    def names(self, prefix: str) -> list[str]:
        """Returns ``{prefix}.{l}.key``/``.value`` for each layer with heads."""
        return [
            f"{prefix}.{layer}.{part}" for layer, count in enumerate(self.heads) if count for part in ("key", "value")
        ]

    def to_dict(self) -> dict:
        """Returns JSON-ready data."""
        return {"heads": list(self.heads), "head_size": self.head_size}


class CausalStep(nn.Module):
    """The model's forward over new tokens and a KV cache given as tensors: last logits and the updated cache."""

    def __init__(self, model, layout: CausalCacheLayout):
        super().__init__()
        self.model, self.layout = model, layout

    def forward(self, input_ids, attention_mask, position_ids, *pasts):
        cache = DynamicCache()
        given = iter(pasts)
        for index, heads in enumerate(self.layout.heads):
            if heads:
                cache.update(next(given), next(given), index)
        mask = step_masks(self.model.config, attention_mask, input_ids.shape[1], self.model.dtype)
        logits = self.model(
            input_ids=input_ids, attention_mask=mask, position_ids=position_ids, cache=cache, use_cache=True
        ).logits[:, -1]
        presents = []
        for index, heads in enumerate(self.layout.heads):
            if heads:
                presents += [cache.layers[index].keys, cache.layers[index].values]
        return (logits, *presents)


def step_inputs(model, layout: CausalCacheLayout, batch: int = 2, new: int = 2, past: int = 3, seed: int = 0) -> dict:
    """Returns random step inputs of the given shapes (the first row left-padded by one position), as tensors."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, past + new, dtype=torch.long)
    mask[0, 0] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
    inputs = {
        "input_ids": torch.randint(3, model.config.vocab_size, (batch, new), generator=generator),
        "attention_mask": mask,
        "position_ids": positions,
    }
    for layer, count in enumerate(layout.heads):
        if count:
            for part in ("key", "value"):
                inputs[f"past.{layer}.{part}"] = torch.randn(batch, count, past, layout.head_size, generator=generator)
    return inputs


def export_causal_onnx(model, folder: str | Path) -> CausalCacheLayout:
    """Writes ``generate.onnx`` for the causal language model ``model`` into ``folder``; returns its cache layout."""
    model.eval()
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    layout = CausalCacheLayout.of(model)
    inputs = step_inputs(model, layout)
    axes = {
        "input_ids": {0: "batch", 1: "new"},
        "attention_mask": {0: "batch", 1: "total"},
        "position_ids": {0: "batch", 1: "new"},
        "logits": {0: "batch"},
    }
    axes |= {name: {0: "batch", 2: "past"} for name in layout.names("past")}
    axes |= {name: {0: "batch", 2: "total"} for name in layout.names("present")}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                CausalStep(model, layout).eval(),
                tuple(inputs.values()),
                str(Path(folder) / GENERATE_FILE),
                input_names=list(inputs),
                output_names=["logits", *layout.names("present")],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )
    finally:
        model.set_attn_implementation(previous)
    return layout


def pytorch_greedy_continuations(
    model, prompts: list[list[int]], pad_id: int, eos_ids: int | list[int], max_new_tokens: int
) -> list[list[int]]:
    """Returns transformers' greedy continuations of left-padded prompts, cut after the first end-of-sequence id."""
    from exporter.triton.models.search import left_padded

    eos_ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids)
    ids, mask = left_padded(prompts, pad_id)
    with torch.no_grad():
        generated = model.generate(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad_id,
            eos_token_id=eos_ids,
        )
    continuations = []
    for row in generated:
        tokens = row[ids.shape[1] :].tolist()
        ends = [i for i, token in enumerate(tokens) if token in eos_ids]
        continuations.append(tokens[: ends[0] + 1] if ends else tokens)
    return continuations
