"""The comparison report: built once from the measurements into report.json, rendered from it alone.

``render_report(folder)`` re-creates report.md, latency.csv and the plots from
report.json without measuring anything (``headprune report``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from pathlib import Path

from exporter.atomic import atomic_write_json, atomic_write_text
from exporter.errors import HeadpruneError
from exporter.quality import in_points

from . import plots
from .compare import STAGES, CompareSettings
from .latency import LatencyStats, Speedup


def _cells(records: list[dict]) -> dict[tuple, list[dict]]:
    cells: dict[tuple, list[dict]] = {}
    for r in records:
        if r["kind"] == "latency":
            cells.setdefault((r["deployment"], r["batch_size"], r["concurrency"]), []).append(r)
    return cells


def build_report(settings: CompareSettings, facts: dict, records: list[dict], environment: dict,
                 command: list[str] | None = None) -> dict:
    """Returns the full report data: signature, environment, facts, quality, cell stats, speedups, verdict."""
    quality = {r["deployment"]: r for r in records if r["kind"] == "quality"}
    cells = []
    stats: dict[tuple, LatencyStats] = {}
    for (name, batch, concurrency), trials in sorted(_cells(records).items()):
        cell = LatencyStats.from_trials([t["latencies_ms"] for t in trials], [t["throughput"] for t in trials])
        stats[(name, batch, concurrency)] = cell
        server = {f"{s}_us": sum(t["server"][f"{s}_us"] for t in trials) / len(trials) for s in STAGES}
        cells.append({"deployment": name, "batch_size": batch, "concurrency": concurrency, **cell.to_dict(),
                      "server": server})
    speedups = []
    base_flops = facts[settings.baseline].flops_per_example
    for name in settings.candidates:
        for batch in settings.batch_sizes:
            for concurrency in settings.concurrency:
                key_b, key_c = (settings.baseline, batch, concurrency), (name, batch, concurrency)
                if key_b in stats and key_c in stats:
                    speedup = Speedup.between(stats[key_b], stats[key_c])
                    speedups.append({"candidate": name, "batch_size": batch, "concurrency": concurrency,
                                     "ratio": speedup.ratio, "spread": speedup.spread,
                                     "significant": speedup.significant,
                                     "predicted": base_flops / facts[name].flops_per_example})
    deployments = {}
    for name in settings.deployments:
        entry = facts[name].to_dict()
        entry["quality"] = quality.get(name)
        deployments[name] = entry
    report = {
        "title": f"{', '.join(settings.candidates)} vs {settings.baseline}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command or sys.argv,
        "signature": settings.signature(),
        "environment": environment,
        "baseline": settings.baseline,
        "candidates": settings.candidates,
        "max_drop": settings.max_drop,
        "deployments": deployments,
        "cells": cells,
        "speedups": speedups,
        "complete": len(cells) == len(settings.deployments) * len(settings.batch_sizes) * len(settings.concurrency)
                    and all(c["trials"] == settings.trials for c in cells),
    }
    if settings.scores:
        report["scores"] = json.loads(Path(settings.scores).read_text())
    report["verdict"] = verdict(report)
    return report


def _quality_points(report: dict, name: str) -> float | None:
    q, b = report["deployments"][name]["quality"], report["deployments"][report["baseline"]]["quality"]
    if not q or not b:
        return None
    return in_points(q["metric"], q["value"] - b["value"])


def _mean_speedup(report: dict, name: str) -> float:
    lowest = min(s["concurrency"] for s in report["speedups"]) if report["speedups"] else 1
    ratios = [s["ratio"] for s in report["speedups"] if s["candidate"] == name and s["concurrency"] == lowest]
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else float("nan")


def verdict(report: dict) -> dict:
    """Returns the verdict: the fastest candidate (within --max-drop points of quality, if given)."""
    candidates = report["candidates"]
    limit = report.get("max_drop")
    points = {c: _quality_points(report, c) for c in candidates}
    eligible = [c for c in candidates if limit is None or (points[c] is not None and points[c] >= -limit)]
    speed = {c: _mean_speedup(report, c) for c in candidates}
    best = max(eligible, key=lambda c: speed[c], default=None)
    unit = "point" if limit == 1 else "points"
    if best is None:
        text = f"no candidate stays within {limit:g} {unit} of {report['baseline']}'s quality; keep {report['baseline']}."
    else:
        delta = points[best]
        within = f" within {limit:g} {unit} of {report['baseline']}" if limit is not None else ""
        quality = f"{delta:+.2f} points" if delta is not None else "quality not measured"
        text = (f"{best} is the fastest candidate{within}: {speed[best]:.2f}x {report['baseline']}'s throughput "
                f"(geometric mean over batch sizes, lowest concurrency), {quality}.")
    return {"best": best, "max_drop": limit, "text": text, "mean_speedup": speed}


def _quality_text(entry: dict) -> str:
    q = entry["quality"]
    if not q:
        return "quality not measured"
    return f"{100 * q['value']:.2f} %" if q["metric"] == "accuracy" else f"{q['metric']} {q['value']:.2f}"


def render_markdown(report: dict) -> str:
    """Returns report.md: the verdict in the first five lines, then every table."""
    base = report["baseline"]
    lowest = min((c["concurrency"] for c in report["cells"]), default=1)
    lines = [f"# headprune: {report['title']}", f"**Verdict:** {verdict(report)['text']}"]
    for name in report["candidates"]:
        entry, delta = report["deployments"][name], _quality_points(report, name)
        speed = ", ".join(f"batch {s['batch_size']} {Speedup(s['ratio'], s['spread'], s['significant']).format()}"
                          for s in report["speedups"] if s["candidate"] == name and s["concurrency"] == lowest)
        change = f" ({delta:+.2f} points)" if delta is not None else ""
        lines.append(f"- **{name}** ({100 * entry['pruned_share']:.0f} % of heads pruned): {_quality_text(entry)}{change}; "
                     f"throughput vs {base} at concurrency {lowest}: {speed or 'not measured'}")
    sig = report["signature"]
    lines.append(f"Measured through Triton over {sig['protocol'].upper()}, sequence length {sig['seq_len']}, "
                 f"{sig['trials']} interleaved trials{'' if report['complete'] else ' (INCOMPLETE: interrupted run)'}; "
                 "n.s. = change smaller than the spread between trials.")
    lines += ["", "## Quality", "", "| deployment | heads | quality | change (points) |", "|---|---|---|---|"]
    for name, entry in report["deployments"].items():
        delta = _quality_points(report, name)
        lines.append(f"| {name} | {entry['heads']}/{entry['original_heads']} | {_quality_text(entry)} | "
                     f"{'' if name == base or delta is None else f'{delta:+.2f}'} |")
    q = report["deployments"][base]["quality"]
    if q and q.get("signature"):
        lines += ["", f"Metric signature: `{q['signature']}`"]
    lines += ["", "## Latency and throughput", "",
              "| deployment | batch | concurrency | p50 ms | p90 | p95 | p99 | mean | examples/s | spread |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for c in report["cells"]:
        lines.append(f"| {c['deployment']} | {c['batch_size']} | {c['concurrency']} | {c['p50']:.2f} | {c['p90']:.2f} | "
                     f"{c['p95']:.2f} | {c['p99']:.2f} | {c['mean']:.2f} | {c['throughput']:.1f} | "
                     f"{c['throughput_min']:.1f}-{c['throughput_max']:.1f} |")
    lines += ["", "## Speedup: measured vs predicted from FLOPs", "",
              "| candidate | batch | concurrency | measured | predicted (FLOPs) |", "|---|---|---|---|---|"]
    for s in report["speedups"]:
        lines.append(f"| {s['candidate']} | {s['batch_size']} | {s['concurrency']} | "
                     f"{Speedup(s['ratio'], s['spread'], s['significant']).format()} | {s['predicted']:.2f}x |")
    lines += ["", "## Where the time goes (Triton statistics, µs per request)", "",
              "| deployment | batch | concurrency | queue | compute input | compute infer | compute output |",
              "|---|---|---|---|---|---|---|"]
    for c in report["cells"]:
        s = c["server"]
        lines.append(f"| {c['deployment']} | {c['batch_size']} | {c['concurrency']} | {s['queue_us']:.0f} | "
                     f"{s['compute_input_us']:.0f} | {s['compute_infer_us']:.0f} | {s['compute_output_us']:.0f} |")
    lines += ["", "## Static facts", "",
              "| deployment | heads per layer | parameters | attention parameters | ONNX MB | GFLOPs/example |",
              "|---|---|---|---|---|---|"]
    for name, e in report["deployments"].items():
        heads = "; ".join(f"{k}: {' '.join(map(str, v))}" for k, v in e["heads_per_layer"].items())
        lines.append(f"| {name} | {heads} | {e['parameters']:,} | {e['attention_parameters']:,} | "
                     f"{e['onnx_bytes'] / 1e6:.1f} | {e['flops_per_example'] / 1e9:.3f} |")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plot_names(report)]
    env = report["environment"]
    lines += ["", "## Signature", "", f"- command: `{' '.join(report['command'])}`", f"- created: {report['created']}",
              f"- settings: `{json.dumps(report['signature'])}`",
              "- weights: " + ", ".join(f"{n} {e['weights_sha256']}" for n, e in report["deployments"].items()),
              f"- machine: {env['machine']}", f"- libraries: {env['libraries']}", f"- server: {env['server']}", ""]
    return "\n".join(lines)


def latency_csv(report: dict) -> str:
    """Returns latency.csv: one row per deployment, batch size and concurrency."""
    buffer = io.StringIO()
    fields = ["deployment", "batch_size", "concurrency", "p50", "p90", "p95", "p99", "mean", "throughput",
              "throughput_min", "throughput_max", "requests", "trials"] + [f"{s}_us" for s in STAGES]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for c in report["cells"]:
        writer.writerow({**{k: c[k] for k in fields if k in c}, **c["server"]})
    return buffer.getvalue()


def plot_names(report: dict) -> list[str]:
    """Returns the PNG files the report has, given its data."""
    names = ["latency_vs_batch.png", "throughput_vs_concurrency.png", "quality_vs_latency.png"]
    if len({e["heads"] for e in report["deployments"].values()}) >= 3:
        names.append("quality_vs_pruned.png")
    if report.get("scores"):
        names.append("head_importance.png")
    return names


def write_report(report: dict, folder: str | Path) -> Path:
    """Writes report.json, then renders the rest from it; returns report.md's path."""
    folder = Path(folder)
    atomic_write_json(folder / "report.json", report)
    return render_report(folder)


def render_report(folder: str | Path) -> Path:
    """Re-renders report.md, latency.csv and the plots from ``folder``/report.json; returns report.md's path."""
    folder = Path(folder)
    try:
        report = json.loads((folder / "report.json").read_text())
    except FileNotFoundError as error:
        raise HeadpruneError(f"'{folder}' has no report.json", "run 'headprune compare --out FOLDER' first") from error
    except json.JSONDecodeError as error:
        raise HeadpruneError(f"'{folder / 'report.json'}' is damaged ({error.msg})", "re-run 'headprune compare'") from error
    atomic_write_text(folder / "latency.csv", latency_csv(report))
    plots.plot_report(report, folder, plot_names(report))
    return atomic_write_text(folder / "report.md", render_markdown(report))
