"""Quality measurements as small value objects: accuracy and BLEU, and their reporting scale.

Light to import (sacrebleu loads only when BLEU is computed): the report side reads
these without PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def in_points(metric: str, value: float) -> float:
    """Returns a metric value (or change) on its reporting scale: accuracy in percent points, BLEU as is."""
    return 100 * value if metric == "accuracy" else value


@dataclass(frozen=True)
class QualityScore:
    """One quality measurement: metric name, value (higher is better), example count, signature.

    ``per_example`` holds what paired significance tests need, in example order: 1/0
    correctness for accuracy, sacrebleu's sufficient statistics per sentence for BLEU.
    """

    metric: str
    value: float
    examples: int
    signature: str = ""
    per_example: tuple = field(default=(), compare=False, repr=False)

    def format(self) -> str:
        """Returns the score as one human-readable line."""
        value = f"{in_points(self.metric, self.value):.2f}" + (" %" if self.metric == "accuracy" else "")
        return f"{self.metric} {value} on {self.examples} examples" + (f" ({self.signature})" if self.signature else "")

    def to_dict(self) -> dict:
        """Returns JSON-ready data."""
        return {"metric": self.metric, "value": self.value, "examples": self.examples, "signature": self.signature}


def bleu(hypotheses: list[str], references: list[str]) -> QualityScore:
    """Returns corpus BLEU (sacrebleu defaults) with sacrebleu's signature."""
    from sacrebleu.metrics import BLEU

    metric = BLEU()
    score = metric.corpus_score(hypotheses, [references])
    # Per-sentence sufficient statistics (what corpus BLEU sums), for paired bootstrap tests.
    statistics = tuple(tuple(row) for row in metric._extract_corpus_statistics(hypotheses, [references]))
    return QualityScore("bleu", score.score, len(hypotheses), str(metric.get_signature()), statistics)


def chrf(hypotheses: list[str], references: list[str]) -> QualityScore:
    """Returns corpus chrF (sacrebleu defaults) with sacrebleu's signature."""
    from sacrebleu.metrics import CHRF

    metric = CHRF()
    return QualityScore("chrf", metric.corpus_score(hypotheses, [references]).score, len(hypotheses),
                        str(metric.get_signature()))


def accuracy(predictions: list[int], labels: list[int]) -> QualityScore:
    """Returns the share of predictions equal to their labels."""
    correct = tuple(int(p == t) for p, t in zip(predictions, labels))
    return QualityScore("accuracy", sum(correct) / max(len(labels), 1), len(labels), per_example=correct)
