"""In-process quality of a model, optionally with heads masked: accuracy or BLEU."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sacrebleu
import torch

from .data import batches, encode_batch, task_of
from .gates import HeadGates
from .inventory import build_inventory


@dataclass(frozen=True)
class QualityScore:
    """One quality measurement: metric name, value (higher is better), example count, signature."""

    metric: str
    value: float
    examples: int
    signature: str = ""

    def format(self) -> str:
        """Returns the score as one human-readable line."""
        value = f"{100 * self.value:.2f} %" if self.metric == "accuracy" else f"{self.value:.2f}"
        return f"{self.metric} {value} on {self.examples} examples" + (f" ({self.signature})" if self.signature else "")

    def to_dict(self) -> dict:
        """Returns JSON-ready data."""
        return {"metric": self.metric, "value": self.value, "examples": self.examples, "signature": self.signature}


def bleu(hypotheses: list[str], references: list[str]) -> QualityScore:
    """Returns corpus BLEU (sacrebleu defaults) with sacrebleu's signature."""
    metric = sacrebleu.metrics.BLEU()
    score = metric.corpus_score(hypotheses, [references])
    return QualityScore("bleu", score.score, len(hypotheses), str(metric.get_signature()))


def accuracy(predictions: list[int], labels: list[int]) -> QualityScore:
    """Returns the share of predictions equal to their labels."""
    correct = sum(int(p == t) for p, t in zip(predictions, labels))
    return QualityScore("accuracy", correct / max(len(labels), 1), len(labels))


class Evaluator:
    """Evaluates one model on one example set, repeatedly, under different head masks.

    Batches are tokenised once (sorted by length to waste little on padding), so an
    ablation that evaluates dozens of masks pays for tokenisation only once.
    """

    def __init__(self, model, tokenizer, examples: list[dict], batch_size: int = 64, max_length: int = 128,
                 max_new_tokens: int = 64):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.task = task_of(model)
        self.max_new_tokens = max_new_tokens
        key = "text" if self.task == "classification" else "source"
        ordered = sorted(examples, key=lambda e: len(str(e[key])))
        self.batches = [encode_batch(tokenizer, chunk, self.task, model.config, max_length)
                        for chunk in batches(ordered, batch_size)]
        self.references = [e.get("target") for e in ordered]
        self.gates = HeadGates(build_inventory(model))

    def __call__(self, removed: dict | None = None, progress: Callable[[int], None] | None = None) -> QualityScore:
        """Returns the quality with the given original heads masked (none by default)."""
        self.gates.mask(removed or {})
        with torch.inference_mode(), self.gates:
            if self.task == "classification":
                predictions, labels = [], []
                for batch in self.batches:
                    logits = self.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
                    predictions += logits.argmax(-1).tolist()
                    labels += batch["labels"].tolist()
                    if progress:
                        progress(len(batch["labels"]))
                return accuracy(predictions, labels)
            hypotheses = []
            for batch in self.batches:
                generated = self.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                                max_new_tokens=self.max_new_tokens, num_beams=1, do_sample=False)
                hypotheses += self.tokenizer.batch_decode(generated, skip_special_tokens=True)
                if progress:
                    progress(len(batch["input_ids"]))
            return bleu(hypotheses, self.references)
