"""Quality measurements as small value objects: accuracy, BLEU and perplexity, and their reporting scale.

Light to import (sacrebleu loads only when BLEU is computed): the report side reads
these without PyTorch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from exporter.tasks import TASKS

# Metrics where a smaller value is the better one; every other metric grows with quality.
LOWER_IS_BETTER = tuple(task.metric for task in TASKS.values() if task.metric and not task.higher_is_better)


def in_points(metric: str, value: float) -> float:
    """Returns a metric value (or change) on its reporting scale: accuracy in percent points, BLEU and perplexity
    as they are."""
    return 100 * value if metric == "accuracy" else value


def gain(metric: str, before: float, after: float) -> float:
    """Returns how much better ``after`` is than ``before`` on the reporting scale (negative when worse)."""
    change = in_points(metric, after - before)
    return -change if metric in LOWER_IS_BETTER else change


def format_points(value: float, sign: bool = False) -> str:
    """Returns a score or change (accuracy points, BLEU, chrF) with two decimals, the one rule everywhere; a nonzero
    value that would show as 0.00 keeps its first significant digit instead (a significant -0.004 is not '-0.00')."""
    text = f"{value:+.2f}" if sign else f"{value:.2f}"
    if value and float(text) == 0:
        text = f"{value:+.1g}" if sign else f"{value:.1g}"
    return text


def corpus_perplexity(statistics) -> float:
    """Returns exp(total negative log-likelihood / total predicted tokens) of per-text (nll, tokens) pairs."""
    nll = sum(row[0] for row in statistics)
    tokens = sum(row[1] for row in statistics)
    return math.exp(nll / max(tokens, 1))


@dataclass(frozen=True)
class QualityScore:
    """One quality measurement: metric name, value (higher is better, except for LOWER_IS_BETTER metrics),
    example count, signature.

    ``per_example`` holds what paired significance tests need, in example order: 1/0
    correctness for accuracy, sacrebleu's sufficient statistics per sentence for BLEU,
    (negative log-likelihood, predicted tokens) per text for perplexity.
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
    return QualityScore(
        "chrf", metric.corpus_score(hypotheses, [references]).score, len(hypotheses), str(metric.get_signature())
    )


def accuracy(predictions: list[int], labels: list[int]) -> QualityScore:
    """Returns the share of predictions equal to their labels."""
    correct = tuple(int(p == t) for p, t in zip(predictions, labels))
    return QualityScore("accuracy", sum(correct) / max(len(labels), 1), len(labels), per_example=correct)


def perplexity(statistics: list[tuple[float, int]]) -> QualityScore:
    """Returns the corpus perplexity of per-text (summed next-token negative log-likelihood, predicted tokens)."""
    statistics = tuple((float(nll), int(tokens)) for nll, tokens in statistics)
    tokens = sum(row[1] for row in statistics)
    if not tokens:
        from exporter.errors import HeadpruneError

        raise HeadpruneError(
            f"none of the {len(statistics)} texts has a token to predict (each is one token long), "
            "so perplexity is undefined",
            "evaluate on texts of two tokens or more",
        )
    return QualityScore(
        "perplexity",
        corpus_perplexity(statistics),
        len(statistics),
        f"next-token perplexity over {tokens} predicted tokens",
        statistics,
    )
