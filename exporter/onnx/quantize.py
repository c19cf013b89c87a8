"""INT8 quantization of an exported classifier (ONNX Runtime dynamic quantization), checked against FP32.

Weights of every MatMul and embedding become 8-bit with one scale per output channel (one
scale per tensor lost more accuracy on the demo classifier); activations are quantized on
the fly, per batch. Quantization changes the logits by design, so the
graph is checked against the FP32 graph it came from with a tolerance of its own, and
the accuracy that matters is measured through Triton like any other deployment.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from exporter.onnx.export import Validation, validate_onnx

PRECISIONS = ("fp32", "int8")  # of classifiers: translation graphs are exported in FP32
# The INT8 logits may differ from FP32's by this share of the FP32 logits' range on the check's
# random inputs. Measured: 0.06 for the demo's MiniLM, 0.24 for the tiny test BERT (its weights are
# random, so 8 bits fit them worse); a graph quantized wrongly is off by the whole range.
INT8_RELATIVE_TOLERANCE = 0.35


class _DropPreprocessingHint(logging.Filter):
    # The quantizer advises, on the root logger, a pre-processing step meant for static quantization of CNNs.
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_int8(model, path: str | Path, names: list[str],
                  relative_tolerance: float = INT8_RELATIVE_TOLERANCE) -> Validation:
    """Replaces the FP32 graph at ``path`` by its dynamic INT8 version; returns how far its logits are from FP32's
    (the tolerance is ``relative_tolerance`` of the FP32 logits' range).

    The FP32 graph is kept until the check is done, so a failed check leaves it in place.
    """
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = Path(path)
    quantized = path.with_name(f"{path.stem}.int8{path.suffix}")
    hint = _DropPreprocessingHint()
    logging.getLogger().addFilter(hint)
    try:
        # A fused graph's Attention outputs have no inferred type (a contrib op): they are FP32.
        quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": TensorProto.FLOAT})
    finally:
        logging.getLogger().removeFilter(hint)
    validation = validate_onnx(model, quantized, names, relative_tolerance, reference_path=path, relative=True)
    if validation.passed:
        os.replace(quantized, path)
    else:
        quantized.unlink()
    return validation
