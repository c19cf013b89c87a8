"""The comparison report as typed data that formats itself: its Markdown, its CSV, its verdict, its plot names.

``Report.to_dict()`` is report.json and ``Report.from_dict`` reads it back, so every
rendering is made from report.json alone.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field, fields

from exporter.evaluation.metrics import LOWER_IS_BETTER, format_points, gain, in_points
from serving.benchmark.compare import STAGES
from serving.benchmark.latency import PERCENTILES, LatencyStats, Speedup

PLOTS = ("latency_vs_batch.png", "throughput_vs_concurrency.png", "quality_vs_latency.png")
# perf_analyzer's CSV layout (its -f option): one row per concurrency, times in microseconds.
PERF_ANALYZER_COLUMNS = (
    "Concurrency",
    "Inferences/Second",
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
)


@dataclass(frozen=True)
class Quality:
    """A deployment's measured quality on the comparison data, and the paired test's p-value against the baseline."""

    metric: str
    value: float
    examples: int
    signature: str
    p_value: float | None = None
    chrf: float | None = None  # translation: chrF of the same outputs, with its own sacrebleu signature
    chrf_signature: str | None = None
    # The 95 % paired-bootstrap interval of the gain over the baseline, in points (negative is worse).
    gain_low: float | None = None
    gain_high: float | None = None

    @classmethod
    def from_dict(cls, data: dict | None) -> Quality | None:
        """Returns the quality stored by ``to_dict`` (None for none)."""
        return None if data is None else cls(**{f.name: data.get(f.name) for f in fields(cls)})

    @property
    def points(self) -> float:
        """Returns the value on its reporting scale (accuracy in percent points)."""
        return in_points(self.metric, self.value)

    def format(self) -> str:
        """Returns e.g. '86.90 %' for accuracy, 'bleu 27.31' otherwise."""
        if self.metric == "accuracy":
            return f"{100 * self.value:.2f} %"
        return f"{self.metric} {format_points(self.value)}" + (
            f", chrF {format_points(self.chrf)}" if self.chrf is not None else ""
        )

    def to_dict(self) -> dict:
        """Returns JSON-ready data (``p_value`` and the interval only where a paired test was made, chrF only where
        measured)."""
        optional = ("p_value", "chrf", "chrf_signature", "gain_low", "gain_high")
        return {k: v for k, v in asdict(self).items() if v is not None or k not in optional}


@dataclass(frozen=True)
class Deployment:
    """One deployment in a report: its static facts as measured (DeploymentFacts.to_dict) and its quality."""

    facts: dict
    quality: Quality | None

    @classmethod
    def from_dict(cls, data: dict) -> Deployment:
        """Returns the deployment stored by ``to_dict``."""
        return cls({k: v for k, v in data.items() if k != "quality"}, Quality.from_dict(data.get("quality")))

    @property
    def heads(self) -> int:
        """Returns the attention heads left."""
        return self.facts["heads"]

    @property
    def pruned_share(self) -> float:
        """Returns the share of the original heads removed."""
        return self.facts["pruned_share"]

    def quality_text(self) -> str:
        """Returns the quality as the report shows it."""
        return self.quality.format() if self.quality else "quality not measured"

    def to_dict(self) -> dict:
        """Returns JSON-ready data: the facts, then ``quality``."""
        return {**self.facts, "quality": self.quality.to_dict() if self.quality else None}


@dataclass(frozen=True)
class Cell:
    """One deployment at one batch size and concurrency: latency statistics and Triton's time per stage (µs)."""

    deployment: str
    batch_size: int
    concurrency: int
    stats: LatencyStats
    server: dict[str, float]

    @classmethod
    def from_dict(cls, data: dict) -> Cell:
        """Returns the cell stored by ``to_dict``."""
        stats = LatencyStats(**{f.name: data[f.name] for f in fields(LatencyStats)})
        return cls(data["deployment"], data["batch_size"], data["concurrency"], stats, data["server"])

    def to_dict(self) -> dict:
        """Returns JSON-ready data with the statistics inline."""
        return {
            "deployment": self.deployment,
            "batch_size": self.batch_size,
            "concurrency": self.concurrency,
            **self.stats.to_dict(),
            "server": self.server,
        }


@dataclass(frozen=True)
class CellSpeedup:
    """A candidate's measured speedup over the baseline in one cell, and the one its FLOPs predict."""

    candidate: str
    batch_size: int
    concurrency: int
    speedup: Speedup
    predicted: float

    @classmethod
    def from_dict(cls, data: dict) -> CellSpeedup:
        """Returns the speedup stored by ``to_dict``."""
        return cls(
            data["candidate"], data["batch_size"], data["concurrency"], Speedup.from_dict(data), data["predicted"]
        )

    def to_dict(self) -> dict:
        """Returns JSON-ready data with the speedup inline."""
        return {
            "candidate": self.candidate,
            "batch_size": self.batch_size,
            "concurrency": self.concurrency,
            **self.speedup.to_dict(),
            "predicted": self.predicted,
        }


@dataclass(frozen=True)
class MeanSpeedup:
    """A candidate's geometric mean speedup over the batch sizes measured at one concurrency."""

    concurrency: int
    cells: int
    speedup: Speedup

    @classmethod
    def from_dict(cls, data: dict) -> MeanSpeedup:
        """Returns the mean stored by ``to_dict``."""
        return cls(data["concurrency"], data["cells"], Speedup.from_dict(data))

    def to_dict(self) -> dict:
        """Returns JSON-ready data with the speedup inline."""
        return {"concurrency": self.concurrency, "cells": self.cells, **self.speedup.to_dict()}


@dataclass(frozen=True)
class Verdict:
    """The fastest candidate (within ``max_drop`` points of quality, if given), in words, and whether its speedup is
    significant (None without a measured speedup)."""

    best: str | None
    max_drop: float | None
    text: str
    mean_speedup: dict[str, float]
    significant: bool | None

    def to_dict(self) -> dict:
        """Returns JSON-ready data."""
        return asdict(self)


def _significance(speedup: Speedup) -> str:
    if not speedup.significant:
        return "not significantly different from 1: the interval includes it"
    return f"significantly {'faster' if speedup.ratio > 1 else 'slower'}: the interval excludes 1"


# The top-level keys of report.json a Report reads; any other is kept in ``extra``.
_KEYS = (
    "title",
    "created",
    "command",
    "signature",
    "environment",
    "baseline",
    "candidates",
    "max_drop",
    "deployments",
    "cells",
    "speedups",
    "mean_speedups",
    "complete",
    "scores",
    "verdict",
)


@dataclass(frozen=True)
class Report:
    """A comparison of deployments: signature, environment, facts, quality, cell statistics and speedups.

    ``extra`` holds further top-level sections (the demo's experiments), written after the verdict.
    """

    title: str
    created: str
    command: list[str]
    signature: dict
    environment: dict
    baseline: str
    candidates: list[str]
    max_drop: float | None
    deployments: dict[str, Deployment]
    cells: list[Cell]
    speedups: list[CellSpeedup]
    mean_speedups: dict[str, MeanSpeedup]
    complete: bool
    scores: dict | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> Report:
        """Returns the report stored by ``to_dict``; its verdict is recomputed from the data."""
        return cls(
            title=data["title"],
            created=data["created"],
            command=data["command"],
            signature=data["signature"],
            environment=data["environment"],
            baseline=data["baseline"],
            candidates=data["candidates"],
            max_drop=data["max_drop"],
            deployments={name: Deployment.from_dict(entry) for name, entry in data["deployments"].items()},
            cells=[Cell.from_dict(c) for c in data["cells"]],
            speedups=[CellSpeedup.from_dict(s) for s in data["speedups"]],
            mean_speedups={name: MeanSpeedup.from_dict(m) for name, m in data["mean_speedups"].items()},
            complete=data["complete"],
            scores=data.get("scores"),
            extra={k: v for k, v in data.items() if k not in _KEYS},
        )

    def to_dict(self) -> dict:
        """Returns report.json's data: every field, the verdict, then the extra sections."""
        data = {
            "title": self.title,
            "created": self.created,
            "command": self.command,
            "signature": self.signature,
            "environment": self.environment,
            "baseline": self.baseline,
            "candidates": self.candidates,
            "max_drop": self.max_drop,
            "deployments": {n: d.to_dict() for n, d in self.deployments.items()},
            "cells": [c.to_dict() for c in self.cells],
            "speedups": [s.to_dict() for s in self.speedups],
            "mean_speedups": {n: m.to_dict() for n, m in self.mean_speedups.items()},
            "complete": self.complete,
        }
        if self.scores:
            data["scores"] = self.scores
        return {**data, "verdict": self.verdict().to_dict(), **self.extra}

    @property
    def lowest_concurrency(self) -> int:
        """Returns the lowest concurrency measured (1 for none)."""
        return min((c.concurrency for c in self.cells), default=1)

    def quality_points(self, name: str) -> float | None:
        """Returns how much better deployment ``name``'s quality is than the baseline's, in points (negative when
        worse; None where either is unmeasured)."""
        q, b = self.deployments[name].quality, self.deployments[self.baseline].quality
        if not q or not b:
            return None
        return gain(q.metric, b.value, q.value)

    def quality_change(self, name: str) -> str:
        """Returns deployment ``name``'s change of the metric vs the baseline as shown: '+0.20' (accuracy in points),
        with ', worse' or ', better' for metrics where lower is better; '' where unmeasured."""
        points = self.quality_points(name)
        if points is None:
            return ""
        metric = self.deployments[name].quality.metric
        if metric not in LOWER_IS_BETTER:
            return format_points(points, sign=True)
        return f"{format_points(-points, sign=True)}, {'worse' if points < 0 else 'better' if points > 0 else 'same'}"

    @property
    def language_model(self) -> bool:
        """Returns True when the deployments are language models (scored by perplexity, measured in tokens/s too)."""
        return any(d.facts.get("task") == "language-modeling" for d in self.deployments.values())

    def within(self, name: str) -> bool:
        """Returns whether candidate ``name`` stays within ``max_drop`` of the baseline's quality: the lower bound of
        its change's 95 % interval lies above -max_drop (non-inferiority); for a report.json written before intervals,
        the change itself is at least -max_drop."""
        if self.max_drop is None:
            return True
        quality, points = self.deployments[name].quality, self.quality_points(name)
        if points is None:
            return False
        if quality.gain_low is not None:
            return quality.gain_low > -self.max_drop
        return points >= -self.max_drop

    def interval_text(self, name: str) -> str:
        """Returns ' (95 % interval [-2.60, +1.00])' for a candidate with a paired interval, '' otherwise."""
        quality = self.deployments[name].quality
        if quality is None or quality.gain_low is None:
            return ""
        return f" (95 % interval [{quality.gain_low:+.2f}, {quality.gain_high:+.2f}])"

    def verdict(self) -> Verdict:
        """Returns the verdict: the fastest candidate (within ``max_drop`` points of quality by ``within``, if given),
        and whether its speedup is significant."""
        candidates, base, limit = self.candidates, self.baseline, self.max_drop
        points = {c: self.quality_points(c) for c in candidates}
        eligible = [c for c in candidates if self.within(c)]
        means = self.mean_speedups
        speed = {c: means[c].speedup.ratio if c in means else math.nan for c in candidates}
        best = max(eligible, key=lambda c: -math.inf if math.isnan(speed[c]) else speed[c], default=None)
        unit = "point" if limit == 1 else "points"
        significant = None
        if best is None:
            shown = "; ".join(f"{c}{self.interval_text(c)}" for c in candidates if self.interval_text(c))
            text = (
                f"no candidate stays within {limit:g} {unit} of {base}'s quality"
                + (f": none is distinguishable from a drop of {limit:g} ({shown})" if shown else "")
                + f"; keep {base}."
            )
        else:
            delta = points[best]
            within = f" within {limit:g} {unit} of {base}" if limit is not None else ""
            metric = self.deployments[best].quality.metric if delta is not None else ""
            quality = (
                "quality not measured"
                if delta is None
                else f"{metric} {self.quality_change(best)}"
                if metric in LOWER_IS_BETTER
                else f"{delta:+.2f} points"
            )
            quality += self.interval_text(best) if delta is not None else ""
            if best in means:
                mean = means[best].speedup
                significant = mean.significant
                throughput = (
                    f"{mean.format()} {base}'s throughput (geometric mean over batch sizes at concurrency "
                    f"{means[best].concurrency}, 95 % bootstrap interval; {_significance(mean)})"
                )
            else:
                throughput = "throughput not measured"
            text = f"{best} is the fastest candidate{within}: {throughput}, {quality}."
        return Verdict(best, limit, text, speed, significant)

    def plot_names(self) -> list[str]:
        """Returns the PNG files the report has, given its data."""
        names = list(PLOTS)
        if len({d.heads for d in self.deployments.values()}) >= 3:
            names.append("quality_vs_pruned.png")
        if self.scores:
            names.append("head_importance.png")
        return names

    def latency_csv(self) -> str:
        """Returns latency.csv: one row per deployment, batch size and concurrency (an unsupported percentile is
        empty)."""
        buffer = io.StringIO()
        stats = [f.name for f in fields(LatencyStats)]
        writer = csv.DictWriter(
            buffer, fieldnames=["deployment", "batch_size", "concurrency", *stats] + [f"{s}_us" for s in STAGES]
        )
        writer.writeheader()
        for c in self.cells:
            writer.writerow(
                {
                    "deployment": c.deployment,
                    "batch_size": c.batch_size,
                    "concurrency": c.concurrency,
                    **c.stats.to_dict(),
                    **c.server,
                }
            )
        return buffer.getvalue()

    def perf_analyzer_csvs(self) -> dict[str, str]:
        """Returns {file name: CSV} in perf_analyzer's layout, one file per deployment and batch size
        (``perf_analyzer_<deployment>_batch<b>.csv``), one row per concurrency, so tools that read perf_analyzer's
        output read these. Times are in µs; the client's send and receive are not measured apart, so they are 0 and
        their time is in Network+Server Send/Recv (mean latency minus Triton's stages); a percentile too few
        requests support is empty."""
        files = {}
        for deployment in self.deployments:
            for batch in sorted({c.batch_size for c in self.cells if c.deployment == deployment}):
                buffer = io.StringIO()
                writer = csv.writer(buffer, lineterminator="\n")
                writer.writerow(PERF_ANALYZER_COLUMNS)
                for c in sorted(
                    (c for c in self.cells if c.deployment == deployment and c.batch_size == batch),
                    key=lambda c: c.concurrency,
                ):
                    stages = [c.server[f"{s}_us"] for s in STAGES]
                    percentiles = [
                        "" if getattr(c.stats, f"p{q}") is None else round(1000 * getattr(c.stats, f"p{q}"))
                        for q in PERCENTILES
                    ]
                    network = max(round(1000 * c.stats.mean - sum(stages)), 0)
                    writer.writerow(
                        [
                            c.concurrency,
                            round(c.stats.throughput, 3),
                            0,
                            network,
                            *(round(s) for s in stages),
                            0,
                            *percentiles,
                        ]
                    )
                files[f"perf_analyzer_{deployment}_batch{batch}.csv"] = buffer.getvalue()
        return files
