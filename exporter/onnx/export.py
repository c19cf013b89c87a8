"""ONNX export of sequence classifiers and language models (their full-sequence forward), with validation against
PyTorch on fresh shapes."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from exporter.data import task_of
from exporter.errors import HeadpruneError
from exporter.onnx.masks import step_masks
from exporter.pruning.scoring import token_losses

OPSET = 17
EXPORT_SHAPE = (2, 8)
# Shapes other than the export shape, so a shape baked into the graph is caught.
VALIDATION_SHAPES = ((3, 13), (1, 5), (5, 31))


@dataclass(frozen=True)
class Validation:
    """How closely an ONNX file reproduces the PyTorch model."""

    max_abs_diff: float
    atol: float
    shapes: tuple[tuple[int, int], ...]

    @property
    def passed(self) -> bool:
        """Returns True when the largest difference is within tolerance."""
        return self.max_abs_diff <= self.atol

    def to_dict(self) -> dict:
        """Returns JSON-ready data."""
        return {
            "max_abs_diff": self.max_abs_diff,
            "atol": self.atol,
            "shapes": [list(s) for s in self.shapes],
            "passed": self.passed,
        }


def input_names(model) -> list[str]:
    """Returns the ONNX input names of a model: ``pixel_values`` for an image model; otherwise ids, mask, and token
    types when the model uses them."""
    if task_of(model) == "image-classification":
        return ["pixel_values"]
    names = ["input_ids", "attention_mask"]
    if getattr(model.config, "type_vocab_size", 0) and model.config.type_vocab_size > 1:
        names.append("token_type_ids")
    return names


def output_names(model) -> list[str]:
    """Returns the ONNX outputs of a model: ``logits``, and for a language model also ``nll``, each row's summed
    next-token negative log-likelihood (batch, 1), so that scoring a text need not ship its logits."""
    return ["logits", "nll"] if task_of(model) == "language-modeling" else ["logits"]


class _Outputs(torch.nn.Module):
    """The exported function: named int64 inputs in, ``output_names`` out."""

    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, names
        self.language_model = task_of(model) == "language-modeling"

    def forward(self, *inputs):
        feed = dict(zip(self.names, inputs))
        if not self.language_model:
            return self.model(**feed).logits
        # The causal mask is built here: transformers' sliding-window masks trace to the example's length.
        mask = step_masks(self.model.config, feed["attention_mask"], feed["input_ids"].shape[1], self.model.dtype)
        logits = self.model(input_ids=feed["input_ids"], attention_mask=mask, use_cache=False).logits
        labels = feed["input_ids"].masked_fill(feed["attention_mask"] == 0, -100)
        return logits, token_losses(logits, labels).sum(-1, keepdim=True)


def pixel_shape(config) -> list[int]:
    """Returns the (channels, height, width) of an image model's pixel input."""
    return [config.num_channels, config.image_size, config.image_size]


def random_inputs(model, names: list[str], batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    """Returns random inputs: real token ids, a padded attention mask, segment ids (int64); or standard normal
    float32 pixels of the model's image shape (``seq`` unused)."""
    rng = np.random.default_rng(seed)
    if names == ["pixel_values"]:
        return {"pixel_values": rng.standard_normal((batch, *pixel_shape(model.config))).astype(np.float32)}
    ids = rng.integers(0, model.config.vocab_size, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    for row in range(batch):
        mask[row, rng.integers(1, seq + 1) :] = 0
    arrays = {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": rng.integers(0, 2, size=(batch, seq), dtype=np.int64),
    }
    return {name: arrays[name] for name in names}


def export_onnx(model, path: str | Path) -> list[str]:
    """Writes a classifier or language model (put in eval mode first) to ``path`` as ONNX; returns its input names.

    Attention is exported in its eager form (same math as SDPA), the pattern ONNX
    Runtime's attention fusion recognises.
    """
    model.eval()
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    names = input_names(model)
    example = random_inputs(model, names, *EXPORT_SHAPE, seed=0)
    outputs = output_names(model)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["pixel_values"] = {0: "batch"}
    axes["logits"] = {0: "batch", 1: "sequence"} if "nll" in outputs else {0: "batch"}
    axes["nll"] = {0: "batch"}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The wrapper must be in eval mode too: export restores its mode afterwards, recursively.
            torch.onnx.export(
                _Outputs(model, names).eval(),
                tuple(torch.from_numpy(example[n]) for n in names),
                str(path),
                input_names=names,
                output_names=outputs,
                dynamic_axes={k: v for k, v in axes.items() if k in names + outputs},
                opset_version=OPSET,
                dynamo=False,
            )
    finally:
        model.set_attn_implementation(previous)
    return names


def validate_onnx(
    model,
    path: str | Path,
    names: list[str],
    atol: float = 1e-4,
    seed: int = 1,
    reference_path: str | Path | None = None,
    relative: bool = False,
) -> Validation:
    """Returns the max |diff| between ONNX Runtime on ``path`` and the model (or another ONNX file), over every
    output (a language model's ``nll`` too).

    With ``relative``, ``atol`` is a share of the reference logits' range (max - min over
    the checked inputs), and the returned tolerance is that share in logits."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = (
        ort.InferenceSession(str(reference_path), providers=["CPUExecutionProvider"]) if reference_path else None
    )
    outputs = output_names(model)
    function = _Outputs(model, names).eval()
    worst, low, high = 0.0, float("inf"), float("-inf")
    for i, (batch, seq) in enumerate(VALIDATION_SHAPES):
        feed = random_inputs(model, names, batch, seq, seed + i)
        got = session.run(outputs, feed)
        if reference is not None:
            expected = reference.run(outputs, feed)
        else:
            with torch.no_grad():
                computed = function(*(torch.from_numpy(feed[n]) for n in names))
            expected = [t.numpy() for t in (computed if isinstance(computed, tuple) else (computed,))]
        worst = max(worst, *(float(np.abs(g - e).max()) for g, e in zip(got, expected)))
        low, high = min(low, float(expected[0].min())), max(high, float(expected[0].max()))
    return Validation(worst, atol * (high - low) if relative else atol, VALIDATION_SHAPES)


def require_valid(validation: Validation, what: str) -> None:
    """Raises HeadpruneError when a validation failed."""
    if not validation.passed:
        raise HeadpruneError(
            f"{what} differs from the reference by {validation.max_abs_diff:.3g} (tolerance {validation.atol:g}); nothing was written",
            "report this model as a bug, or loosen the check with `atol` if the difference is acceptable",
        )
