"""The comparison report: built once from the measurements into a Report, written as report.json, rendered from
it alone.

``render_report(folder)`` re-creates report.md, report.html, latency.csv and the plots
from report.json without measuring anything (``headprune report``).
"""

from __future__ import annotations

import sys
import time
import zlib
from pathlib import Path

import numpy as np

from exporter.atomic import atomic_files, atomic_write_json, atomic_write_text, read_json
from exporter.errors import HeadpruneError
from exporter.evaluation.significance import paired_gain_interval, paired_p_value
from exporter.pruning.scores import HeadScores
from serving.benchmark.compare import STAGES, CompareSettings
from serving.benchmark.journal import record_type
from serving.benchmark.latency import LatencyStats, Speedup, bootstrap_throughput, ratios
from serving.report import plots
from serving.report.document import build_document, render_markdown
from serving.report.html import render_html
from serving.report.model import Cell, CellSpeedup, Deployment, MeanSpeedup, Quality, Report


def _cells(records: list[dict]) -> dict[tuple, list[dict]]:
    cells: dict[tuple, list[dict]] = {}
    for r in records:
        if record_type(r) == "latency":
            cells.setdefault((r["deployment"], r["batch_size"], r["concurrency"]), []).append(r)
    return cells


def _generator(seed: int, name: str, batch: int, concurrency: int) -> np.random.Generator:
    """Returns the bootstrap generator of one cell: the same draws whatever else the report holds."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), batch, concurrency])


def build_report(
    settings: CompareSettings, facts: dict, records: list[dict], environment: dict, command: list[str] | None = None
) -> Report:
    """Returns the report of the measurements: signature, environment, facts, quality, cell stats, speedups."""
    quality = {r["deployment"]: r for r in records if record_type(r) == "quality"}
    cells = []
    stats: dict[tuple, LatencyStats] = {}
    draws: dict[tuple, np.ndarray] = {}
    for key, trials in sorted(_cells(records).items()):
        latencies, throughputs = [t["latencies_ms"] for t in trials], [t["throughput"] for t in trials]
        stats[key] = LatencyStats.from_trials(latencies, throughputs)
        draws[key] = bootstrap_throughput(latencies, throughputs, _generator(settings.seed, *key))
        server = {f"{s}_us": sum(t["server"][f"{s}_us"] for t in trials) / len(trials) for s in STAGES}
        cells.append(Cell(*key, stats[key], server))
    speedups = []
    measured: dict[str, list[tuple[int, Speedup, np.ndarray]]] = {}
    base_flops = facts[settings.baseline].flops_per_example
    for name in settings.candidates:
        for batch in settings.batch_sizes:
            for concurrency in settings.concurrency:
                key_b, key_c = (settings.baseline, batch, concurrency), (name, batch, concurrency)
                if key_b in stats and key_c in stats:
                    ratio_draws = ratios(draws[key_b], draws[key_c])
                    speedup = Speedup.between(stats[key_b], stats[key_c], ratio_draws)
                    measured.setdefault(name, []).append((concurrency, speedup, ratio_draws))
                    speedups.append(
                        CellSpeedup(name, batch, concurrency, speedup, base_flops / facts[name].flops_per_example)
                    )
    deployments = {}
    for name in settings.deployments:
        paired = _paired_quality(quality.get(name), quality.get(settings.baseline), name == settings.baseline)
        deployments[name] = Deployment(facts[name].to_dict(), paired)
    return Report(
        title=f"{', '.join(settings.candidates)} vs {settings.baseline}",
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        command=command or sys.argv,
        signature=settings.signature(),
        environment=environment,
        baseline=settings.baseline,
        candidates=settings.candidates,
        max_drop=settings.max_drop,
        deployments=deployments,
        cells=cells,
        speedups=speedups,
        mean_speedups=_mean_speedups(measured),
        complete=len(cells) == len(settings.deployments) * len(settings.batch_sizes) * len(settings.concurrency)
        and all(c.stats.trials == settings.trials for c in cells),
        scores=HeadScores.load(settings.scores).to_dict() if settings.scores else None,
    )


def _paired_quality(measured: dict | None, baseline: dict | None, is_baseline: bool) -> Quality | None:
    """Returns a deployment's quality record without its per-example results, with the paired test's p-value against
    the baseline (None where nothing was measured)."""
    if measured is None:
        return None
    p_value = low = high = None
    if not is_baseline and baseline and measured.get("per_example") and baseline.get("per_example"):
        p_value = paired_p_value(measured["metric"], baseline["per_example"], measured["per_example"])
        low, high = paired_gain_interval(measured["metric"], baseline["per_example"], measured["per_example"])
    return Quality(
        measured["metric"],
        measured["value"],
        measured["examples"],
        measured["signature"],
        p_value,
        measured.get("chrf"),
        measured.get("chrf_signature"),
        low,
        high,
    )


def _mean_speedups(measured: dict[str, list[tuple[int, Speedup, np.ndarray]]]) -> dict[str, MeanSpeedup]:
    """Returns per candidate the geometric mean speedup over batch sizes at the lowest concurrency measured."""
    if not measured:
        return {}
    lowest = min(concurrency for rows in measured.values() for concurrency, _, _ in rows)
    means = {}
    for name, rows in measured.items():
        chosen = [(speedup, draws) for concurrency, speedup, draws in rows if concurrency == lowest]
        if chosen:
            mean = Speedup.geometric_mean([s for s, _ in chosen], [d for _, d in chosen])
            means[name] = MeanSpeedup(lowest, len(chosen), mean)
    return means


def write_report(report: Report, folder: str | Path) -> Path:
    """Writes report.json and what is rendered from it, all replaced together; returns report.md's path."""
    with atomic_files(folder) as staging:
        atomic_write_json(staging / "report.json", report.to_dict())
        _render(report, staging)
    return Path(folder) / "report.md"


def read_report_json(folder: str | Path) -> dict:
    """Returns the report.json data of ``folder``; raises HeadpruneError if it is missing, damaged or too old."""
    path = Path(folder) / "report.json"
    data = read_json(
        path,
        f"'{folder}' has no report.json",
        "run 'headprune compare' (or 'headprune demo') with that folder as its output first",
    )
    if "mean_speedups" not in data:
        raise HeadpruneError(
            f"'{path}' was written by an older headprune (no speedup intervals)",
            "rerun the same 'headprune compare' command with --resume: it rebuilds the report from "
            "measurements.jsonl without measuring again",
        )
    return data


def render_report(folder: str | Path) -> Path:
    """Re-renders report.md, report.html, latency.csv and the plots from ``folder``/report.json, all replaced
    together; returns report.md's path."""
    report = Report.from_dict(read_report_json(folder))
    with atomic_files(folder) as staging:
        _render(report, staging)
    return Path(folder) / "report.md"


def _render(report: Report, folder: Path) -> None:
    """Writes latency.csv (and its perf_analyzer-layout copies), the plots, report.md and report.html (the plots
    inline) of ``report`` into ``folder``."""
    atomic_write_text(folder / "latency.csv", report.latency_csv())
    for name, text in report.perf_analyzer_csvs().items():
        atomic_write_text(folder / name, text)
    plots.plot_report(report, folder, report.plot_names())
    document = build_document(report)
    atomic_write_text(folder / "report.md", render_markdown(document))
    images = {name: (folder / name).read_bytes() for name in document.plots if (folder / name).is_file()}
    atomic_write_text(folder / "report.html", render_html(document, images))
