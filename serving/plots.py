"""PNG plots for curves and reports (matplotlib, headless)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(figure, path: str | Path) -> Path:
    """Saves a figure as PNG atomically and closes it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".png", delete=False) as tmp:
        figure.savefig(tmp.name, dpi=120, bbox_inches="tight")
    plt.close(figure)
    Path(tmp.name).replace(path)
    return path


def plot_curves(curves: dict[str, dict], path: str | Path) -> Path:
    """Plots metric vs share of heads pruned for each named curve; returns the PNG path."""
    figure, axis = plt.subplots(figsize=(6, 4))
    metric = "metric"
    for name, curve in curves.items():
        metric = curve["metric"]
        xs = [100 * p["fraction"] for p in curve["points"]]
        ys = [p["metric"] for p in curve["points"]]
        axis.plot(xs, ys, marker="o", label=name)
    axis.set_xlabel("heads pruned (%)")
    axis.set_ylabel(metric)
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title(f"{metric} vs share of heads pruned")
    return save_figure(figure, path)
