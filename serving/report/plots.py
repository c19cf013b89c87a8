"""PNG plots for curves and reports (matplotlib, headless)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib

from exporter.atomic import publish
from exporter.evaluation.metrics import in_points

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(figure, path: str | Path) -> Path:
    """Saves a figure as PNG atomically and closes it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".png", delete=False) as tmp:
        figure.savefig(tmp.name, dpi=120, bbox_inches="tight")
    plt.close(figure)
    publish(tmp.name, path)
    return path


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


def _by_deployment(report: dict, **fixed) -> dict[str, list[dict]]:
    lines: dict[str, list[dict]] = {}
    for cell in report["cells"]:
        if all(cell[k] == v for k, v in fixed.items()):
            lines.setdefault(cell["deployment"], []).append(cell)
    return lines


def _line_plot(lines: dict[str, list[dict]], x: str, y: str, xlabel: str, ylabel: str, title: str, path: Path,
               log_x: bool = True) -> Path:
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, cells in lines.items():
        cells = sorted(cells, key=lambda c: c[x])
        axis.plot([c[x] for c in cells], [c[y] for c in cells], marker="o", label=name)
    if log_x:
        axis.set_xscale("log", base=2)
        ticks = sorted({c[x] for cells in lines.values() for c in cells})
        axis.set_xticks(ticks, [str(t) for t in ticks])
        axis.minorticks_off()
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if lines:
        axis.legend()
    return save_figure(figure, path)


def _quality_value(entry: dict) -> float | None:
    q = entry.get("quality")
    if not q:
        return None
    return in_points(q["metric"], q["value"])


def _scatter(points: list[tuple[str, float, float]], xlabel: str, ylabel: str, title: str, path: Path,
             connect: bool = False) -> Path:
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


def plot_report(report: dict, folder: str | Path, names: list[str]) -> list[Path]:
    """Draws the named report plots into ``folder``; returns their paths."""
    folder = Path(folder)
    concurrency = min((c["concurrency"] for c in report["cells"]), default=1)
    batch = min((c["batch_size"] for c in report["cells"]), default=1)
    largest = max((c["batch_size"] for c in report["cells"]), default=1)
    metric = next((e["quality"]["metric"] for e in report["deployments"].values() if e.get("quality")), "quality")
    unit = " (%)" if metric == "accuracy" else ""
    paths = []
    for name in names:
        path = folder / name
        if name == "latency_vs_batch.png":
            paths.append(_line_plot(_by_deployment(report, concurrency=concurrency), "batch_size", "p50", "batch size",
                                    "p50 latency (ms)", f"latency vs batch size (concurrency {concurrency})", path))
        elif name == "throughput_vs_concurrency.png":
            paths.append(_line_plot(_by_deployment(report, batch_size=batch), "concurrency", "throughput",
                                    "concurrent clients", "examples / s", f"throughput vs concurrency (batch {batch})", path))
        elif name == "quality_vs_latency.png":
            cells = {c["deployment"]: c for c in report["cells"] if c["batch_size"] == largest and c["concurrency"] == concurrency}
            points = [(n, cells[n]["p50"], _quality_value(e)) for n, e in report["deployments"].items()
                      if n in cells and _quality_value(e) is not None]
            paths.append(_scatter(points, f"p50 latency (ms), batch {largest}", f"{metric}{unit}",
                                  "quality vs latency (lower right is worse)", path))
        elif name == "quality_vs_pruned.png":
            points = [(n, 100 * e["pruned_share"], _quality_value(e)) for n, e in report["deployments"].items()
                      if _quality_value(e) is not None]
            paths.append(_scatter(points, "heads pruned (%)", f"{metric}{unit}", f"{metric} vs share of heads pruned",
                                  path, connect=True))
        elif name == "head_importance.png":
            paths.append(_importance_heatmap(report["scores"], path))
    return paths
