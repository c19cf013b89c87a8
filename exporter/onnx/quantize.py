"""INT8 quantization of exported models (ONNX Runtime dynamic quantization), checked against FP32: a classifier's
logits and classes, a translation model's greedy translations (``quantize_seq2seq``), a language model's perplexity
(``quantize_language_model``) and greedy continuations.

Weights of every MatMul and embedding become 8-bit with one scale per output channel (one
scale per tensor lost more accuracy on the demo classifier); activations are quantized on
the fly, per batch. Quantization changes the logits by design, so the
graph is checked against the FP32 graph it came from with a tolerance of its own, and
the accuracy that matters is measured through Triton like any other deployment. Given real
texts, the check also demands that INT8 and FP32 pick the same class on nearly all of them
(random inputs say little about decisions). On a CPU without 8-bit dot products (VNNI, AMX)
ONNX Runtime's U8S8 kernels can saturate, so weights are quantized to 7 bits there
(``reduce_range``), as ONNX Runtime advises.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from exporter.onnx.export import Validation, validate_onnx

PRECISIONS = ("fp32", "int8")  # of text classifiers, translation models and language models
# The INT8 logits may differ from FP32's by this share of the FP32 logits' range on the check's
# random inputs. Measured: 0.06 for the demo's MiniLM, 0.24 for the tiny test BERT (its weights are
# random, so 8 bits fit them worse); a graph quantized wrongly is off by the whole range.
INT8_RELATIVE_TOLERANCE = 0.35
# Share of real texts whose predicted class INT8 must leave unchanged.
MIN_AGREEMENT = 0.99


@dataclass(frozen=True)
class Int8Check(Validation):
    """The INT8 graph against its FP32 graph: logits on random inputs (within ``atol``) and, given real texts, the
    share of them whose argmax is unchanged (at least ``min_agreement``); whether weights used 7 bits."""

    agreement: float | None = None
    texts: int = 0
    min_agreement: float = MIN_AGREEMENT
    reduce_range: bool = False

    @property
    def passed(self) -> bool:
        """Returns True when the logits are within tolerance and the decisions agree often enough."""
        return super().passed and (self.agreement is None or self.agreement >= self.min_agreement)

    def to_dict(self) -> dict:
        """Returns JSON-ready data."""
        return {
            **super().to_dict(),
            "agreement": self.agreement,
            "texts": self.texts,
            "min_agreement": self.min_agreement,
            "reduce_range": self.reduce_range,
            "passed": self.passed,
        }


def argmax_agreement(path: Path, reference_path: Path, feeds: list[dict]) -> float:
    """Returns the share of examples in ``feeds`` (batches of ONNX inputs) whose argmax of the first output is the
    same in both graphs."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (path, reference_path)]
    same = total = 0
    for feed in feeds:
        mine, theirs = (s.run(None, feed)[0].argmax(-1) for s in sessions)
        same += int(np.sum(mine == theirs))
        total += mine.size
    return same / max(total, 1)


class _DropPreprocessingHint(logging.Filter):
    # The quantizer advises, on the root logger, a pre-processing step meant for static quantization of CNNs.
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def default_reduce_range() -> bool:
    """Returns whether weights should use 7 bits here: on a CPU without 8-bit dot products."""
    from exporter.machine import has_int8_dot_products

    return not has_int8_dot_products()


def quantize_file(path: Path, quantized: Path, reduce_range: bool) -> None:
    """Writes the dynamic INT8 version of the ONNX graph ``path`` (QInt8 weights, one scale per channel) to
    ``quantized``."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    hint = _DropPreprocessingHint()
    logging.getLogger().addFilter(hint)
    try:
        # A fused graph's Attention outputs have no inferred type (a contrib op): they are FP32.
        quantize_dynamic(
            str(path),
            str(quantized),
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=reduce_range,
            extra_options={"DefaultTensorType": TensorProto.FLOAT},
        )
    finally:
        logging.getLogger().removeFilter(hint)


# Share of validation sentences (prompts) whose INT8 greedy translation (continuation) must equal the FP32 graphs' one.
MIN_GENERATION_AGREEMENT = 0.9
# A language model's INT8 full-sequence graph may raise the perplexity of the validation texts by this share.
MAX_PERPLEXITY_INCREASE = 0.02


def quantize_checked(
    folder: str | Path, files: list[str], check: Callable[[Path], dict], reduce_range: bool | None = None
) -> dict:
    """Quantizes the ONNX ``files`` of ``folder`` (dynamic INT8 weights) beside it and replaces them when
    ``check(folder with the INT8 files)`` says "passed"; returns that check, with ``reduce_range`` (7-bit weights,
    default: this CPU lacks 8-bit dot products). A failed check leaves the FP32 files."""
    reduce_range = default_reduce_range() if reduce_range is None else reduce_range
    folder = Path(folder)
    quantized = Path(tempfile.mkdtemp(prefix=".int8-", dir=folder))  # beside: the INT8 files are renamed in
    try:
        for name in files:
            quantize_file(folder / name, quantized / name, reduce_range)
        result = {**check(quantized), "reduce_range": reduce_range}
        if result["passed"]:
            for name in files:
                os.replace(quantized / name, folder / name)
    finally:
        shutil.rmtree(quantized)
    return result


def agreement_check(same: int, total: int, min_agreement: float, unit: str) -> dict:
    """Returns the check that ``same`` of ``total`` outputs (``unit``: sentences, prompts) are unchanged, passed
    when their share is at least ``min_agreement``."""
    agreement = same / max(total, 1)
    return {
        unit: total,
        "same": same,
        "agreement": agreement,
        "min_agreement": min_agreement,
        "passed": agreement >= min_agreement,
    }


def quantize_seq2seq(
    tokenizer,
    folder: str | Path,
    settings: dict,
    sources: list[str],
    max_new_tokens: int,
    min_agreement: float = MIN_GENERATION_AGREEMENT,
    reduce_range: bool | None = None,
    batch_size: int = 32,
) -> dict:
    """Replaces a translation export's encoder.onnx and decoder.onnx in ``folder`` by their dynamic INT8 versions when
    greedy search over them gives the FP32 graphs' translation of at least ``min_agreement`` of ``sources``; returns
    the check (sentences, same translations, agreement, whether it passed). A failed check leaves the FP32 graphs."""
    from exporter.onnx.seq2seq import DECODER_FILE, ENCODER_FILE, onnx_search, source_batches

    folder = Path(folder)

    def same_translations(quantized: Path) -> dict:
        same = 0
        searches = [onnx_search(where, settings) for where in (folder, quantized)]
        for batch in source_batches(tokenizer, sources, settings["max_length"], batch_size):
            fp32, int8 = (s.greedy(batch["input_ids"], batch["attention_mask"], max_new_tokens) for s in searches)
            same += sum(a == b for a, b in zip(fp32, int8))
        return agreement_check(same, len(sources), min_agreement, "sentences")

    files = [name for name in (ENCODER_FILE, DECODER_FILE) if (folder / name).exists()]
    return quantize_checked(folder, files, same_translations, reduce_range)


@dataclass(frozen=True)
class PerplexityCheck:
    """A language model's INT8 full-sequence graph against its FP32 graph: the perplexity of the validation texts."""

    texts: int
    tokens: int  # predicted tokens
    perplexity_fp32: float
    perplexity_int8: float
    increase: float  # a share: 0.01 is 1 % higher
    max_increase: float
    passed: bool
    reduce_range: bool

    def to_dict(self) -> dict:
        """Returns JSON-ready data."""
        return asdict(self)


def summed_nll(path: Path, feeds: list[dict]) -> float:
    """Returns the ``nll`` output of a language model's full-sequence graph, summed over the batches ``feeds``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sum(float(session.run(["nll"], feed)[0].sum()) for feed in feeds)


def quantize_language_model(
    folder: str | Path,
    file: str,
    feeds: list[dict],
    max_increase: float = MAX_PERPLEXITY_INCREASE,
    reduce_range: bool | None = None,
) -> PerplexityCheck:
    """Replaces a language model's full-sequence graph ``folder/file`` by its dynamic INT8 version when the perplexity
    of the texts in ``feeds`` (batches of input_ids and attention_mask) rises by at most ``max_increase`` (a share);
    returns the check. A failed check leaves the FP32 graph."""
    folder = Path(folder)
    tokens = sum(int(np.maximum(feed["attention_mask"].sum(-1) - 1, 0).sum()) for feed in feeds)
    reference = summed_nll(folder / file, feeds)

    def perplexities(quantized: Path) -> dict:
        fp32, int8 = (math.exp(nll / max(tokens, 1)) for nll in (reference, summed_nll(quantized / file, feeds)))
        return {
            "texts": sum(len(feed["input_ids"]) for feed in feeds),
            "tokens": tokens,
            "perplexity_fp32": fp32,
            "perplexity_int8": int8,
            "increase": int8 / fp32 - 1,
            "max_increase": max_increase,
            "passed": int8 / fp32 - 1 <= max_increase,
        }

    return PerplexityCheck(**quantize_checked(folder, [file], perplexities, reduce_range))


def quantize_int8(
    model,
    path: str | Path,
    names: list[str],
    relative_tolerance: float = INT8_RELATIVE_TOLERANCE,
    feeds: list[dict] | None = None,
    reduce_range: bool | None = None,
    min_agreement: float = MIN_AGREEMENT,
) -> Int8Check:
    """Replaces the FP32 graph at ``path`` by its dynamic INT8 version; returns how far its logits are from FP32's
    (the tolerance is ``relative_tolerance`` of the FP32 logits' range) and, given ``feeds`` (batches of real
    inputs), on what share of them the predicted class is unchanged. ``reduce_range`` (7-bit weights) defaults to
    this CPU lacking 8-bit dot products.

    The FP32 graph is kept until the check is done, so a failed check leaves it in place.
    """
    reduce_range = default_reduce_range() if reduce_range is None else reduce_range
    path = Path(path)
    texts = sum(len(next(iter(f.values()))) for f in feeds or [])

    def check(quantized: Path) -> dict:
        graph = quantized / path.name
        logits = validate_onnx(model, graph, names, relative_tolerance, reference_path=path, relative=True)
        agreement = argmax_agreement(graph, path, feeds) if feeds else None
        validation = Int8Check(
            logits.max_abs_diff, logits.atol, logits.shapes, agreement, texts, min_agreement, reduce_range
        )
        return {"validation": validation, "passed": validation.passed}

    return quantize_checked(path.parent, [path.name], check, reduce_range)["validation"]
