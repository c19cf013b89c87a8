"""ONNX export of sequence classifiers, with validation against PyTorch on fresh shapes."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from exporter.errors import HeadpruneError

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
        return {"max_abs_diff": self.max_abs_diff, "atol": self.atol, "shapes": [list(s) for s in self.shapes],
                "passed": self.passed}


def input_names(model) -> list[str]:
    """Returns the ONNX input names of a classifier: ids, mask, and token types when the model uses them."""
    names = ["input_ids", "attention_mask"]
    if getattr(model.config, "type_vocab_size", 0) and model.config.type_vocab_size > 1:
        names.append("token_type_ids")
    return names


class _LogitsOnly(torch.nn.Module):
    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs):
        return self.model(**dict(zip(self.names, inputs))).logits


def random_inputs(model, names: list[str], batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    """Returns random int64 inputs: real token ids, a padded attention mask, segment ids."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, model.config.vocab_size, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    for row in range(batch):
        mask[row, rng.integers(1, seq + 1):] = 0
    arrays = {"input_ids": ids, "attention_mask": mask,
              "token_type_ids": rng.integers(0, 2, size=(batch, seq), dtype=np.int64)}
    return {name: arrays[name] for name in names}


def export_classifier_onnx(model, path: str | Path) -> list[str]:
    """Writes ``model`` (put in eval mode first) to ``path`` as ONNX; returns its input names.

    Attention is exported in its eager form (same math as SDPA), the pattern ONNX
    Runtime's attention fusion recognises.
    """
    model.eval()
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    names = input_names(model)
    example = random_inputs(model, names, *EXPORT_SHAPE, seed=0)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["logits"] = {0: "batch"}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The wrapper must be in eval mode too: export restores its mode afterwards, recursively.
            torch.onnx.export(_LogitsOnly(model, names).eval(), tuple(torch.from_numpy(example[n]) for n in names),
                              str(path), input_names=names, output_names=["logits"], dynamic_axes=axes,
                              opset_version=OPSET, dynamo=False)
    finally:
        model.set_attn_implementation(previous)
    return names


def validate_onnx(model, path: str | Path, names: list[str], atol: float = 1e-4, seed: int = 1,
                  reference_path: str | Path | None = None, relative: bool = False) -> Validation:
    """Returns the max |diff| between ONNX Runtime on ``path`` and the model (or another ONNX file).

    With ``relative``, ``atol`` is a share of the reference logits' range (max - min over
    the checked inputs), and the returned tolerance is that share in logits."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(str(reference_path), providers=["CPUExecutionProvider"]) if reference_path else None
    worst, low, high = 0.0, float("inf"), float("-inf")
    for i, (batch, seq) in enumerate(VALIDATION_SHAPES):
        feed = random_inputs(model, names, batch, seq, seed + i)
        got = session.run(["logits"], feed)[0]
        if reference is not None:
            expected = reference.run(["logits"], feed)[0]
        else:
            with torch.no_grad():
                expected = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
        worst = max(worst, float(np.abs(got - expected).max()))
        low, high = min(low, float(expected.min())), max(high, float(expected.max()))
    return Validation(worst, atol * (high - low) if relative else atol, VALIDATION_SHAPES)


def require_valid(validation: Validation, what: str) -> None:
    """Raises HeadpruneError when a validation failed."""
    if not validation.passed:
        raise HeadpruneError(
            f"{what} differs from the reference by {validation.max_abs_diff:.3g} (tolerance {validation.atol:g}); nothing was written",
            "report this model as a bug, or loosen the check with `atol` if the difference is acceptable",
        )
