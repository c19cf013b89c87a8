"""PNG plots for curves and reports (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

from exporter.atomic import atomic_file
from exporter.evaluation.metrics import in_points

if TYPE_CHECKING:
    from serving.report.model import Cell, Report

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(figure, path: str | Path) -> Path:
    """Saves a figure as PNG atomically and closes it; returns the path."""
    try:
        with atomic_file(path) as tmp:
            figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(figure)
    return Path(path)


def plot_curves(curves: list, path: str | Path) -> Path:
    """Plots metric vs share of heads pruned for each pruning curve (labelled by its label); returns the PNG path."""
    figure, axis = plt.subplots(figsize=(6, 4))
    metric = "metric"
    for curve in curves:
        metric = curve.metric
        xs = [100 * p["fraction"] for p in curve.points]
        ys = [in_points(curve.metric, p["metric"]) for p in curve.points]
        axis.plot(xs, ys, marker="o", label=curve.label or metric)
    axis.set_xlabel("heads pruned (%)")
    axis.set_ylabel(f"{metric} (%)" if metric == "accuracy" else metric)
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title(f"{metric} vs share of heads pruned")
    return save_figure(figure, path)


def plot_training_curve(curve: list[dict], path: str | Path) -> Path:
    """Plots BLEU vs training minutes (a training record's curve); returns the PNG path."""
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot([p["seconds"] / 60 for p in curve], [p["bleu"] for p in curve], marker="o")
    axis.set_xlabel("training minutes")
    axis.set_ylabel("BLEU (greedy)")
    axis.grid(alpha=0.3)
    axis.set_title("BLEU during training")
    return save_figure(figure, path)


def _by_deployment(
    report: Report, x: Callable[[Cell], float], y: Callable[[Cell], float], **fixed
) -> dict[str, list[tuple[float, float]]]:
    """Returns per deployment the (x, y) points of its cells whose attributes equal ``fixed``."""
    lines: dict[str, list[tuple[float, float]]] = {}
    for cell in report.cells:
        if all(getattr(cell, k) == v for k, v in fixed.items()):
            lines.setdefault(cell.deployment, []).append((x(cell), y(cell)))
    return lines


def _line_plot(
    lines: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, title: str, path: Path, log_x: bool = True
) -> Path:
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, points in lines.items():
        points = sorted(points, key=lambda p: p[0])
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    if log_x:
        axis.set_xscale("log", base=2)
        ticks = sorted({p[0] for points in lines.values() for p in points})
        axis.set_xticks(ticks, [str(t) for t in ticks])
        axis.minorticks_off()
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if lines:
        axis.legend()
    return save_figure(figure, path)


def _scatter(
    points: list[tuple[str, float, float]], xlabel: str, ylabel: str, title: str, path: Path, connect: bool = False
) -> Path:
    figure, axis = plt.subplots(figsize=(6, 4))
    if connect:
        ordered = sorted(points, key=lambda p: p[1])
        axis.plot([p[1] for p in ordered], [p[2] for p in ordered], color="tab:blue", alpha=0.5)
    for name, x, y in points:
        axis.scatter([x], [y], s=40)
        axis.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    return save_figure(figure, path)


def _importance_heatmap(scores: dict, path: Path) -> Path:
    types = list(scores["scores"].items())
    figure, axes = plt.subplots(1, len(types), figsize=(5 * len(types), 4), squeeze=False)
    for axis, (kind, layers) in zip(axes[0], types):
        rows = [layers[k] for k in sorted(layers, key=int)]
        grid = [[float("nan") if v is None else v for v in row] for row in rows]
        image = axis.imshow(grid, aspect="auto", cmap="viridis")
        axis.set_xticks(range(len(grid[0])))
        axis.set_yticks(range(len(grid)))
        axis.set_xlabel("head")
        axis.set_ylabel("layer")
        axis.set_title(f"importance: {kind}")
        figure.colorbar(image, ax=axis)
    return save_figure(figure, path)


def plot_report(report: Report, folder: str | Path, names: list[str]) -> list[Path]:
    """Draws the named report plots into ``folder``; returns their paths."""
    folder = Path(folder)
    concurrency = report.lowest_concurrency
    batch = min((c.batch_size for c in report.cells), default=1)
    largest = max((c.batch_size for c in report.cells), default=1)
    metric = next((d.quality.metric for d in report.deployments.values() if d.quality), "quality")
    unit = " (%)" if metric == "accuracy" else ""
    quality = {n: d.quality.points for n, d in report.deployments.items() if d.quality}
    paths = []
    for name in names:
        path = folder / name
        if name == "latency_vs_batch.png":
            lines = _by_deployment(report, lambda c: c.batch_size, lambda c: c.stats.p50, concurrency=concurrency)
            paths.append(
                _line_plot(
                    lines, "batch size", "p50 latency (ms)", f"latency vs batch size (concurrency {concurrency})", path
                )
            )
        elif name == "throughput_vs_concurrency.png":
            lines = _by_deployment(report, lambda c: c.concurrency, lambda c: c.stats.throughput, batch_size=batch)
            paths.append(
                _line_plot(
                    lines, "concurrent clients", "examples / s", f"throughput vs concurrency (batch {batch})", path
                )
            )
        elif name == "quality_vs_latency.png":
            cells = {c.deployment: c for c in report.cells if c.batch_size == largest and c.concurrency == concurrency}
            points = [(n, cells[n].stats.p50, quality[n]) for n in report.deployments if n in cells and n in quality]
            paths.append(
                _scatter(
                    points,
                    f"p50 latency (ms), batch {largest}",
                    f"{metric}{unit}",
                    "quality vs latency (lower right is worse)",
                    path,
                )
            )
        elif name == "quality_vs_pruned.png":
            points = [(n, 100 * d.pruned_share, quality[n]) for n, d in report.deployments.items() if n in quality]
            paths.append(
                _scatter(
                    points,
                    "heads pruned (%)",
                    f"{metric}{unit}",
                    f"{metric} vs share of heads pruned",
                    path,
                    connect=True,
                )
            )
        elif name == "head_importance.png":
            paths.append(_importance_heatmap(report.scores, path))
    return paths
