"""Attention fusion with each layer's real head count.

ONNX Runtime's transformer optimizer takes one head count for the whole model:
with the config's count it fuses pruned layers with a wrong count (silently wrong
outputs), with 0 it fuses nothing. Here the count of each layer is read from its
own Q projection's width in the graph, and the fused graph is checked against the
unfused one and against PyTorch before it replaces anything.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import onnx
from onnxruntime.transformers.fusion_attention import FusionAttention
from onnxruntime.transformers.fusion_options import FusionOptions
from onnxruntime.transformers.onnx_model_bert import BertOnnxModel

from exporter.errors import HeadpruneError
from exporter.onnx.export import Validation, require_valid, validate_onnx
from exporter.pruning.inventory import HeadInventory


def _q_projection_width(graph_model, reshape_q) -> int | None:
    """Returns the output width of the MatMul feeding Q's reshape (through its bias Add), if constant."""
    node = graph_model.get_parent(reshape_q, 0)
    for _ in range(2):
        if node is None:
            return None
        if node.op_type == "MatMul":
            weight = graph_model.get_initializer(node.input[1])
            return int(weight.dims[-1]) if weight is not None else None
        parents = [graph_model.get_parent(node, i) for i in range(len(node.input))]
        node = next((p for p in parents if p is not None and p.op_type == "MatMul"), None)
    return None


class PerLayerHeadsAttention(FusionAttention):
    """FusionAttention that takes each layer's head count from its Q weight width."""

    def __init__(self, graph_model, hidden_size: int, head_size: int, attention_mask):
        super().__init__(graph_model, hidden_size, 0, attention_mask)
        self.head_size = head_size

    def get_num_heads_and_hidden_size(self, reshape_q):
        width = _q_projection_width(self.model, reshape_q)
        if not width or width % self.head_size:
            return 0, 0  # unknown: leave this layer unfused rather than guess
        return width // self.head_size, width


def fused_head_counts(path: str | Path) -> list[int]:
    """Returns the num_heads attribute of every fused Attention node in an ONNX file, in graph order."""
    model = onnx.load(str(path))
    return [
        next(a.i for a in node.attribute if a.name == "num_heads")
        for node in model.graph.node
        if node.op_type == "Attention"
    ]


def optimize_attention(
    model, inventory: HeadInventory, path: str | Path, names: list[str], atol: float
) -> tuple[int, Validation]:
    """Fuses attention in the ONNX file at ``path`` in place; returns (fused node count, validation vs PyTorch).

    Raises HeadpruneError (leaving ``path`` as it was) if the fused graph differs from
    the unfused one or from PyTorch by more than ``atol``, or if a fused layer's head
    count is not the layer's real one.
    """
    path = Path(path)
    hidden = model.config.hidden_size
    head_size = inventory.layers[0].head_size
    graph = BertOnnxModel(onnx.load(str(path)), num_heads=0, hidden_size=0)
    graph.attention_fusion = PerLayerHeadsAttention(graph, hidden, head_size, graph.attention_mask)
    # ONNX Runtime warns that pruned Q/K/V widths differ from the input width: expected here.
    logging.disable(logging.WARNING)
    try:
        graph.optimize(FusionOptions("bert"))
    finally:
        logging.disable(logging.NOTSET)
    fused_path = path.with_name("model.fused.onnx")
    graph.save_model_to_file(str(fused_path))
    try:
        expected = [len(layer.kept) for layer in inventory.layers if layer.kept]
        counts = fused_head_counts(fused_path)
        if counts and counts != expected:
            raise HeadpruneError(
                f"attention fusion used head counts {counts}, the layers have {expected}",
                "export without `optimize` and report this model",
            )
        require_valid(
            validate_onnx(model, fused_path, names, atol, reference_path=path), "the fused ONNX graph (vs unfused)"
        )
        validation = validate_onnx(model, fused_path, names, atol)
        require_valid(validation, "the fused ONNX graph (vs PyTorch)")
        shutil.move(fused_path, path)
    finally:
        fused_path.unlink(missing_ok=True)
    return len(counts), validation
