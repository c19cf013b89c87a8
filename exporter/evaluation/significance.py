"""Paired significance tests between two quality measurements of the same examples.

Accuracy: the exact McNemar test on the examples whose correctness differs.
BLEU: a paired bootstrap over sentences (as sacrebleu's ``--paired-bs``), resampling
the per-sentence sufficient statistics and recomputing corpus BLEU. Perplexity: the same
bootstrap over texts' (negative log-likelihood, tokens).
"""

from __future__ import annotations

from math import comb

import numpy as np

from exporter.errors import HeadpruneError
from exporter.evaluation.metrics import corpus_perplexity

ALPHA = 0.01


def mcnemar_exact(first: tuple[int, ...], second: tuple[int, ...]) -> float:
    """Returns the two-sided exact McNemar p-value for paired 1/0 correctness."""
    only_first = sum(a and not b for a, b in zip(first, second))
    only_second = sum(b and not a for a, b in zip(first, second))
    discordant = only_first + only_second
    if discordant == 0:
        return 1.0
    tail = sum(comb(discordant, k) for k in range(min(only_first, only_second) + 1))
    return min(1.0, 2 * tail / 2**discordant)


def paired_bootstrap(first: tuple, second: tuple, corpus_score, resamples: int = 1000, seed: int = 0) -> float:
    """Returns the two-sided paired-bootstrap p-value of a difference in ``corpus_score`` (a function of summed
    per-example statistics)."""
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(resamples):
        index = rng.integers(0, len(a), len(a))
        differences.append(corpus_score(a[index].sum(0)) - corpus_score(b[index].sum(0)))
    differences = np.asarray(differences)
    return float(min(1.0, 2 * min((differences <= 0).mean(), (differences >= 0).mean())))


def paired_p_value(metric: str, first: tuple | list, second: tuple | list) -> float:
    """Returns the p-value that two measurements of the same examples differ: McNemar for accuracy,
    paired bootstrap for BLEU and perplexity. ``first``/``second`` are QualityScore.per_example of each."""
    if len(first) != len(second) or not first:
        raise HeadpruneError(
            "a paired test needs per-example results of the same examples on both sides",
            "evaluate both on the same data with one Evaluator",
        )
    if metric == "accuracy":
        return mcnemar_exact(tuple(first), tuple(second))
    score = _corpus_scorer(metric)
    return paired_bootstrap(tuple(first), tuple(second), lambda totals: score(totals, len(first)))


LEVEL = 95  # confidence level (%) of the quality-change intervals


def _corpus_scorer(metric: str):
    """Returns a function of summed per-example statistics giving the corpus metric (accuracy as a share)."""
    if metric == "accuracy":
        return lambda totals, count: totals / count
    if metric == "bleu":
        from sacrebleu.metrics import BLEU

        bleu = BLEU()
        return lambda totals, count: bleu._compute_score_from_stats([int(t) for t in totals]).score
    if metric == "perplexity":
        return lambda totals, count: corpus_perplexity([totals])
    raise HeadpruneError(f"no paired test is known for metric '{metric}'", "compare accuracy, BLEU or perplexity")


def paired_gain_interval(
    metric: str, baseline: tuple | list, candidate: tuple | list, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Returns the 95 % paired-bootstrap interval (low, high) of the candidate's gain over the baseline on the
    reporting scale (accuracy in points; positive is better, also for perplexity), resampling the examples."""
    from exporter.evaluation.metrics import gain

    if len(baseline) != len(candidate) or not baseline:
        raise HeadpruneError(
            "a paired interval needs per-example results of the same examples on both sides",
            "evaluate both on the same data",
        )
    score = _corpus_scorer(metric)
    a, b = np.asarray(baseline, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for i in range(resamples):
        index = rng.integers(0, len(a), len(a))
        draws[i] = gain(metric, score(a[index].sum(0), len(a)), score(b[index].sum(0), len(a)))
    tail = (100 - LEVEL) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def format_p_value(metric: str, p_value: float, resamples: int = 1000) -> str:
    """Returns a p-value as shown: two significant digits, or '< 1/N' (e.g. '< 0.001') where a resampling test with
    N resamples found no resample on the other side (it never shows 'p = 0')."""
    if p_value == 0 and metric != "accuracy":
        return f"< {1 / resamples:.2g}"
    return f"{p_value:.2g}"
