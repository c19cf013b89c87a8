"""Latency and throughput statistics of a measured cell, as small value objects that format themselves."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles and mean (ms) and throughput (examples/s) with its spread over trials."""

    p50: float
    p90: float
    p95: float
    p99: float
    mean: float
    throughput: float
    throughput_min: float
    throughput_max: float
    requests: int
    trials: int

    @classmethod
    def from_trials(cls, latencies_ms: list[list[float]], throughputs: list[float]) -> "LatencyStats":
        """Returns stats pooling the latencies of all trials; throughput is the median over trials."""
        pooled = np.concatenate([np.asarray(t, dtype=float) for t in latencies_ms])
        p50, p90, p95, p99 = (float(np.percentile(pooled, p)) for p in PERCENTILES)
        return cls(p50, p90, p95, p99, float(pooled.mean()), float(statistics.median(throughputs)),
                   float(min(throughputs)), float(max(throughputs)), int(pooled.size), len(throughputs))

    @property
    def spread(self) -> float:
        """Returns the relative spread of throughput over trials: (max - min) / median."""
        return (self.throughput_max - self.throughput_min) / self.throughput if self.throughput else 0.0

    def format(self) -> str:
        """Returns a one-line summary."""
        return (f"p50 {self.p50:.2f} ms  p90 {self.p90:.2f}  p95 {self.p95:.2f}  p99 {self.p99:.2f}  "
                f"mean {self.mean:.2f}  {self.throughput:.1f} ex/s (±{100 * self.spread / 2:.0f} %)")

    def to_dict(self) -> dict:
        """Returns JSON-ready data."""
        return asdict(self)


@dataclass(frozen=True)
class Speedup:
    """Candidate vs baseline throughput in one cell, with whether it exceeds the measured spread."""

    ratio: float
    spread: float
    significant: bool | None

    @classmethod
    def between(cls, baseline: LatencyStats, candidate: LatencyStats) -> "Speedup":
        """Returns candidate throughput / baseline throughput; significant when the change exceeds both spreads."""
        ratio = candidate.throughput / baseline.throughput if baseline.throughput else float("nan")
        spread = max(baseline.spread, candidate.spread)
        significant = None if min(baseline.trials, candidate.trials) < 2 else abs(ratio - 1) > spread
        return cls(ratio, spread, significant)

    def format(self) -> str:
        """Returns e.g. '1.17x' or '1.02x (n.s.)'."""
        mark = {True: "", False: " (n.s.)", None: " (1 trial)"}[self.significant]
        return f"{self.ratio:.2f}x{mark}"
