"""Latency and throughput statistics of a measured cell, as small value objects that format themselves."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

PERCENTILES = (50, 90, 95, 99)
TAIL = 90  # percentiles above this one are reported only where the samples support them
LEVEL = 95  # confidence level (%) of the speedup intervals
REPLICATES = 2000
_CHUNK = 2_000_000  # resampled latencies held in memory at once


def min_samples(q: float) -> int:
    """Returns the fewest samples that support percentile ``q``: at least one sample beyond it, n * (1 - q/100) >= 1."""
    return math.ceil(round(100 / (100 - q), 9))


def supported(q: float, n: int) -> bool:
    """Returns whether ``n`` samples support percentile ``q`` (p95 needs 20, p99 needs 100)."""
    return n >= min_samples(q)


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles and mean (ms), throughput (examples/s, mean over trials and its range), sample counts.

    A percentile above p90 is None where ``requests`` does not support it (see ``supported``).
    """

    p50: float
    p90: float
    p95: float | None
    p99: float | None
    mean: float
    throughput: float
    throughput_min: float
    throughput_max: float
    requests: int
    trials: int

    @classmethod
    def from_trials(cls, latencies_ms: list[list[float]], throughputs: list[float]) -> "LatencyStats":
        """Returns stats pooling the latencies of all trials; throughput is the mean over trials."""
        pooled = np.concatenate([np.asarray(t, dtype=float) for t in latencies_ms])
        n = int(pooled.size)
        p50, p90, p95, p99 = (
            float(np.percentile(pooled, q)) if q <= TAIL or supported(q, n) else None for q in PERCENTILES
        )
        return cls(
            p50,
            p90,
            p95,
            p99,
            float(pooled.mean()),
            float(np.mean(throughputs)),
            float(min(throughputs)),
            float(max(throughputs)),
            n,
            len(throughputs),
        )

    def format(self) -> str:
        """Returns a one-line summary; an unsupported percentile shows as '–'."""
        p = {q: "–" if v is None else f"{v:.2f}" for q, v in zip(PERCENTILES, (self.p50, self.p90, self.p95, self.p99))}
        return (
            f"p50 {p[50]} ms  p90 {p[90]}  p95 {p[95]}  p99 {p[99]}  mean {self.mean:.2f}  "
            f"{self.throughput:.1f} ex/s (range {self.throughput_min:.1f}-{self.throughput_max:.1f})  "
            f"n={self.requests} requests, {self.trials} trial{'s' if self.trials != 1 else ''}"
        )

    def to_dict(self) -> dict:
        """Returns JSON-ready data (None for an unsupported percentile)."""
        return asdict(self)


def bootstrap_throughput(
    latencies_ms: list[list[float]], throughputs: list[float], rng: np.random.Generator, replicates: int = REPLICATES
) -> np.ndarray:
    """Returns ``replicates`` hierarchical bootstrap draws of a cell's throughput (mean over trials).

    Each draw resamples the trials with replacement, then the requests within each drawn trial. A closed loop's
    throughput is inversely proportional to its mean latency, so a resampled trial's throughput is its measured
    throughput * mean(latencies) / mean(resampled latencies).
    """
    trials = [np.asarray(t, dtype=float) for t in latencies_ms]
    scale = np.asarray(throughputs, dtype=float) * np.array([t.mean() for t in trials])
    picked = rng.integers(0, len(trials), size=(replicates, len(trials)))  # which trial fills each slot
    resampled = np.empty(picked.shape)
    for index, values in enumerate(trials):
        slots = np.flatnonzero(picked == index)
        step = max(1, _CHUNK // values.size)
        for start in range(0, slots.size, step):
            chosen = slots[start : start + step]
            resampled.flat[chosen] = values[rng.integers(0, values.size, size=(chosen.size, values.size))].mean(axis=1)
    return (scale[picked] / resampled).mean(axis=1)


@dataclass(frozen=True)
class Speedup:
    """Candidate vs baseline throughput with its 95 % bootstrap interval and the samples behind it.

    For a mean over cells the trials are the fewest in any cell and the requests the total.
    """

    ratio: float
    ci_low: float
    ci_high: float
    baseline_trials: int
    candidate_trials: int
    baseline_requests: int
    candidate_requests: int

    @classmethod
    def between(cls, baseline: LatencyStats, candidate: LatencyStats, ratio_draws: np.ndarray) -> "Speedup":
        """Returns candidate / baseline throughput, its interval from the two cells' bootstrap ratio draws
        (``ratios`` of their draws)."""
        ratio = candidate.throughput / baseline.throughput if baseline.throughput else math.nan
        return cls.from_draws(
            ratio, ratio_draws, baseline.trials, candidate.trials, baseline.requests, candidate.requests
        )

    @classmethod
    def from_draws(
        cls,
        ratio: float,
        draws: np.ndarray,
        baseline_trials: int,
        candidate_trials: int,
        baseline_requests: int,
        candidate_requests: int,
    ) -> "Speedup":
        """Returns the speedup with the percentile interval of its bootstrap draws."""
        tail = (100 - LEVEL) / 2
        finite = draws[np.isfinite(draws)]
        low, high = (float(v) for v in np.percentile(finite, [tail, 100 - tail])) if finite.size else (math.nan,) * 2
        return cls(float(ratio), low, high, baseline_trials, candidate_trials, baseline_requests, candidate_requests)

    @classmethod
    def geometric_mean(cls, speedups: list["Speedup"], draws: list[np.ndarray]) -> "Speedup":
        """Returns the geometric mean of independent speedups, its interval from their draws taken together."""
        ratio = math.exp(np.mean(np.log([s.ratio for s in speedups])))
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_draws = np.exp(np.log(np.stack(draws)).mean(axis=0))
        return cls.from_draws(
            ratio,
            mean_draws,
            min(s.baseline_trials for s in speedups),
            min(s.candidate_trials for s in speedups),
            sum(s.baseline_requests for s in speedups),
            sum(s.candidate_requests for s in speedups),
        )

    @classmethod
    def from_dict(cls, data: dict) -> "Speedup":
        """Returns the speedup stored by ``to_dict`` (extra keys are ignored)."""
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    @property
    def significant(self) -> bool:
        """Returns whether the 95 % interval excludes 1.0 (no change)."""
        return not (self.ci_low <= 1.0 <= self.ci_high) and not math.isnan(self.ci_low)

    @property
    def trials(self) -> int:
        """Returns the fewest trials behind either side."""
        return min(self.baseline_trials, self.candidate_trials)

    def format(self) -> str:
        """Returns e.g. '1.23x [1.15–1.31]', '1.02x [0.95–1.08] (n.s.)' or '1.23x [1.15–1.31] (1 trial)'."""
        notes = ([] if self.significant else ["n.s."]) + (["1 trial"] if self.trials < 2 else [])
        interval = f"[{_bound(self.ci_low)}–{_bound(self.ci_high)}]"
        return f"{self.ratio:.2f}x {interval}" + (f" ({', '.join(notes)})" if notes else "")

    def to_dict(self) -> dict:
        """Returns JSON-ready data, with ``significant``."""
        return {**asdict(self), "significant": self.significant}


def _bound(value: float) -> str:
    """Returns an interval bound with 2 decimals, more where 2 would show 1.00 for a bound that is not 1."""
    for digits in (2, 3, 4):
        text = f"{value:.{digits}f}"
        if float(text) != 1.0 or value == 1.0:
            break
    return text


def speedup_of_trials(
    baseline: tuple[list[list[float]], list[float]],
    candidate: tuple[list[list[float]], list[float]],
    rng: np.random.Generator,
) -> Speedup:
    """Returns candidate / baseline throughput of two cells, each (latencies per trial, throughput per trial), with
    the bootstrap interval of ``bootstrap_throughput``'s draws (baseline drawn first)."""
    stats = [LatencyStats.from_trials(*cell) for cell in (baseline, candidate)]
    draws = [bootstrap_throughput(*cell, rng) for cell in (baseline, candidate)]
    return Speedup.between(stats[0], stats[1], ratios(*draws))


def ratios(baseline_draws: np.ndarray, candidate_draws: np.ndarray) -> np.ndarray:
    """Returns candidate / baseline draw by draw (nan where the baseline drew 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(baseline_draws > 0, candidate_draws / np.where(baseline_draws > 0, baseline_draws, 1), np.nan)


# Student's t quantile for a two-sided 95 % interval with 1-9 degrees of freedom; from 10 on the Cornish-Fisher
# expansion below is within 0.005 of it.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262)


def t_quantile_975(degrees: int) -> float:
    """Returns the 97.5 % quantile of Student's t distribution with ``degrees`` degrees of freedom (>= 1)."""
    if degrees < 1:
        raise ValueError("a t interval needs at least two paired trials")
    if degrees <= len(_T975):
        return _T975[degrees - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * degrees) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * degrees**2)


def paired_trial_ratio(baseline: dict[int, float], candidate: dict[int, float]) -> tuple[float, float, float, int]:
    """Returns (ratio, low, high, pairs): the geometric mean of candidate / baseline over the trials both measured
    (``{trial: value}``), with the 95 % t interval of the per-trial log ratios.

    Interleaved trials share the machine's state of their moment, so each trial's two values are paired, and
    the trials (not the requests within them) are the independent samples. With one pair the interval is nan."""
    trials = sorted(set(baseline) & set(candidate))
    if not trials:
        return math.nan, math.nan, math.nan, 0
    logs = np.log([candidate[t] / baseline[t] for t in trials])
    mean = float(logs.mean())
    if len(trials) < 2:
        return math.exp(mean), math.nan, math.nan, 1
    half = t_quantile_975(len(trials) - 1) * float(logs.std(ddof=1)) / math.sqrt(len(trials))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half), len(trials)


def paired_speedup(baseline: dict[int, tuple[float, int]], candidate: dict[int, tuple[float, int]]) -> Speedup:
    """Returns candidate / baseline throughput paired by trial (``{trial: (throughput, requests)}``): the geometric
    mean of the per-trial ratios with its 95 % t interval (``paired_trial_ratio``)."""
    ratio, low, high, pairs = paired_trial_ratio(
        {t: v[0] for t, v in baseline.items()}, {t: v[0] for t, v in candidate.items()}
    )
    return Speedup(
        ratio, low, high, pairs, pairs, sum(v[1] for v in baseline.values()), sum(v[1] for v in candidate.values())
    )
