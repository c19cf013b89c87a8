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
import zlib
from pathlib import Path

import numpy as np

from exporter.atomic import atomic_write_json, atomic_write_text
from exporter.errors import HeadpruneError
from exporter.evaluation.metrics import in_points
from exporter.evaluation.significance import ALPHA, paired_p_value
from exporter.pruning.scores import HeadScores
from serving.benchmark.compare import STAGES, CompareSettings
from serving.benchmark.latency import PERCENTILES, TAIL, LatencyStats, Speedup, bootstrap_throughput, min_samples, ratios
from serving.report import plots


def _cells(records: list[dict]) -> dict[tuple, list[dict]]:
    cells: dict[tuple, list[dict]] = {}
    for r in records:
        if r["record"] == "latency":
            cells.setdefault((r["deployment"], r["batch_size"], r["concurrency"]), []).append(r)
    return cells


def _generator(seed: int, name: str, batch: int, concurrency: int) -> np.random.Generator:
    """Returns the bootstrap generator of one cell: the same draws whatever else the report holds."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), batch, concurrency])


def build_report(settings: CompareSettings, facts: dict, records: list[dict], environment: dict,
                 command: list[str] | None = None) -> dict:
    """Returns the full report data: signature, environment, facts, quality, cell stats, speedups, verdict."""
    quality = {r["deployment"]: r for r in records if r["record"] == "quality"}
    cells = []
    stats: dict[tuple, LatencyStats] = {}
    draws: dict[tuple, np.ndarray] = {}
    for key, trials in sorted(_cells(records).items()):
        name, batch, concurrency = key
        latencies, throughputs = [t["latencies_ms"] for t in trials], [t["throughput"] for t in trials]
        stats[key] = cell = LatencyStats.from_trials(latencies, throughputs)
        draws[key] = bootstrap_throughput(latencies, throughputs, _generator(settings.seed, *key))
        server = {f"{s}_us": sum(t["server"][f"{s}_us"] for t in trials) / len(trials) for s in STAGES}
        cells.append({"deployment": name, "batch_size": batch, "concurrency": concurrency, **cell.to_dict(),
                      "server": server})
    speedups = []
    measured: dict[str, list[tuple[int, Speedup, np.ndarray]]] = {}
    base_flops = facts[settings.baseline].flops_per_example
    for name in settings.candidates:
        for batch in settings.batch_sizes:
            for concurrency in settings.concurrency:
                key_b, key_c = (settings.baseline, batch, concurrency), (name, batch, concurrency)
                if key_b in stats and key_c in stats:
                    speedup = Speedup.between(stats[key_b], stats[key_c], draws[key_b], draws[key_c])
                    measured.setdefault(name, []).append((concurrency, speedup, ratios(draws[key_b], draws[key_c])))
                    speedups.append({"candidate": name, "batch_size": batch, "concurrency": concurrency,
                                     **speedup.to_dict(), "predicted": base_flops / facts[name].flops_per_example})
    deployments = {}
    for name in settings.deployments:
        entry = facts[name].to_dict()
        entry["quality"] = _paired_quality(quality.get(name), quality.get(settings.baseline), name == settings.baseline)
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
        "mean_speedups": _mean_speedups(measured),
        "complete": len(cells) == len(settings.deployments) * len(settings.batch_sizes) * len(settings.concurrency)
                    and all(c["trials"] == settings.trials for c in cells),
    }
    if settings.scores:
        report["scores"] = HeadScores.load(settings.scores).to_dict()
    report["verdict"] = verdict(report)
    return report


def _paired_quality(measured: dict | None, baseline: dict | None, is_baseline: bool) -> dict | None:
    """Returns a quality record without its per-example results, plus the paired test's p-value against the baseline."""
    if measured is None:
        return None
    entry = {k: v for k, v in measured.items() if k not in ("per_example", "record", "deployment")}
    if not is_baseline and baseline and measured.get("per_example") and baseline.get("per_example"):
        entry["p_value"] = paired_p_value(measured["metric"], baseline["per_example"], measured["per_example"])
    return entry


def _quality_points(report: dict, name: str) -> float | None:
    q, b = report["deployments"][name]["quality"], report["deployments"][report["baseline"]]["quality"]
    if not q or not b:
        return None
    return in_points(q["metric"], q["value"] - b["value"])


def _mean_speedups(measured: dict[str, list[tuple[int, Speedup, np.ndarray]]]) -> dict[str, dict]:
    """Returns per candidate the geometric mean speedup over batch sizes at the lowest concurrency measured."""
    if not measured:
        return {}
    lowest = min(concurrency for rows in measured.values() for concurrency, _, _ in rows)
    means = {}
    for name, rows in measured.items():
        chosen = [(speedup, draws) for concurrency, speedup, draws in rows if concurrency == lowest]
        if chosen:
            mean = Speedup.geometric_mean([s for s, _ in chosen], [d for _, d in chosen])
            means[name] = {"concurrency": lowest, "cells": len(chosen), **mean.to_dict()}
    return means


def _significance(speedup: Speedup) -> str:
    if not speedup.significant:
        return "not significantly different from 1: the interval includes it"
    return f"significantly {'faster' if speedup.ratio > 1 else 'slower'}: the interval excludes 1"


def verdict(report: dict) -> dict:
    """Returns the verdict: the fastest candidate (within --max-drop points of quality, if given), and whether its
    speedup is significant."""
    candidates, base = report["candidates"], report["baseline"]
    limit = report.get("max_drop")
    points = {c: _quality_points(report, c) for c in candidates}
    eligible = [c for c in candidates if limit is None or (points[c] is not None and points[c] >= -limit)]
    means = {c: Speedup.from_dict(m) for c, m in report.get("mean_speedups", {}).items()}
    speed = {c: means[c].ratio if c in means else math.nan for c in candidates}
    best = max(eligible, key=lambda c: -math.inf if math.isnan(speed[c]) else speed[c], default=None)
    unit = "point" if limit == 1 else "points"
    significant = None
    if best is None:
        text = f"no candidate stays within {limit:g} {unit} of {base}'s quality; keep {base}."
    else:
        delta = points[best]
        within = f" within {limit:g} {unit} of {base}" if limit is not None else ""
        quality = f"{delta:+.2f} points" if delta is not None else "quality not measured"
        if best in means:
            mean = means[best]
            significant = mean.significant
            throughput = (f"{mean.format()} {base}'s throughput (geometric mean over batch sizes at concurrency "
                          f"{report['mean_speedups'][best]['concurrency']}, 95 % bootstrap interval; "
                          f"{_significance(mean)})")
        else:
            throughput = "throughput not measured"
        text = f"{best} is the fastest candidate{within}: {throughput}, {quality}."
    return {"best": best, "max_drop": limit, "text": text, "mean_speedup": speed, "significant": significant}


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
        speed = ", ".join(f"batch {s['batch_size']} {Speedup.from_dict(s).format()}"
                          for s in report["speedups"] if s["candidate"] == name and s["concurrency"] == lowest)
        change = f" ({delta:+.2f} points)" if delta is not None else ""
        lines.append(f"- **{name}** ({100 * entry['pruned_share']:.0f} % of heads pruned): {_quality_text(entry)}{change}; "
                     f"throughput vs {base} at concurrency {lowest}: {speed or 'not measured'}")
    sig = report["signature"]
    requests, trials = (_count_range([c[k] for c in report["cells"]]) for k in ("requests", "trials"))
    lines.append(f"Measured through Triton over {sig['protocol'].upper()}, sequence length {sig['seq_len']}, "
                 f"{requests} requests in {trials} interleaved trial{'' if trials == '1' else 's'} per cell"
                 f"{'' if report['complete'] else ' (INCOMPLETE: interrupted run)'}; speedup [95 % bootstrap interval, "
                 "resampling trials and the requests within them]; n.s. = the interval includes 1.0"
                 f"{' (1 trial: only requests are resampled)' if trials == '1' else ''}.")
    lines += ["", "## Quality", "", "| deployment | heads | quality | change (points) | p (paired test) |",
              "|---|---|---|---|---|"]
    for name, entry in report["deployments"].items():
        delta = _quality_points(report, name)
        p_value = (entry["quality"] or {}).get("p_value")
        mark = "*" if p_value is not None and p_value < ALPHA else ""
        lines.append(f"| {name} | {entry['heads']}/{entry['original_heads']} | {_quality_text(entry)} | "
                     f"{'' if name == base or delta is None else f'{delta:+.2f}{mark}'} | "
                     f"{'' if p_value is None else f'{p_value:.2g}'} |")
    lines += ["", f"\\* significant change (p < {ALPHA}; exact McNemar test for accuracy, paired bootstrap for BLEU, "
              "on the same examples)."]
    q = report["deployments"][base]["quality"]
    if q and q.get("signature"):
        lines += ["", f"Metric signature: `{q['signature']}`"]
    lines += ["", "## Latency and throughput", "",
              "| deployment | batch | concurrency | requests | trials | p50 ms | p90 | p95 | p99 | mean | examples/s | "
              "range over trials |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in report["cells"]:
        percentiles = " | ".join("–" if c[f"p{q}"] is None else f"{c[f'p{q}']:.2f}" for q in PERCENTILES)
        lines.append(f"| {c['deployment']} | {c['batch_size']} | {c['concurrency']} | {c['requests']} | {c['trials']} | "
                     f"{percentiles} | {c['mean']:.2f} | {c['throughput']:.1f} | "
                     f"{c['throughput_min']:.1f}-{c['throughput_max']:.1f} |")
    if any(c[f"p{q}"] is None for c in report["cells"] for q in PERCENTILES):
        lines += ["", "– too few requests for this percentile: " + ", ".join(
            f"p{q} needs at least {min_samples(q)}" for q in PERCENTILES if q > TAIL) +
            " (a percentile q needs n·(1 − q/100) ≥ 1, at least one request beyond it)."]
    lines += ["", "## Speedup: measured vs predicted from FLOPs", "",
              "Measured: candidate / baseline throughput [95 % bootstrap interval]; n.s. = the interval includes 1.0.", "",
              "| candidate | batch | concurrency | requests (baseline/candidate) | trials (baseline/candidate) | "
              "measured | predicted (FLOPs) |", "|---|---|---|---|---|---|---|"]
    for s in report["speedups"]:
        lines.append(f"| {s['candidate']} | {s['batch_size']} | {s['concurrency']} | "
                     f"{s['baseline_requests']}/{s['candidate_requests']} | {s['baseline_trials']}/{s['candidate_trials']} | "
                     f"{Speedup.from_dict(s).format()} | {s['predicted']:.2f}x |")
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


def _count_range(values: list[int]) -> str:
    """Returns '12' or '12–48' for the counts of the cells ('0' for none)."""
    low, high = min(values, default=0), max(values, default=0)
    return str(low) if low == high else f"{low}–{high}"


def latency_csv(report: dict) -> str:
    """Returns latency.csv: one row per deployment, batch size and concurrency (an unsupported percentile is empty)."""
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
        raise HeadpruneError(f"'{folder}' has no report.json", "run 'headprune compare' with that folder as its output first") from error
    except json.JSONDecodeError as error:
        raise HeadpruneError(f"'{folder / 'report.json'}' is damaged ({error.msg})", "re-run 'headprune compare'") from error
    if "mean_speedups" not in report:
        raise HeadpruneError(f"'{folder / 'report.json'}' was written by an older headprune (no speedup intervals)",
                             "rerun the same 'headprune compare' command with --resume: it rebuilds the report from "
                             "measurements.jsonl without measuring again")
    atomic_write_text(folder / "latency.csv", latency_csv(report))
    plots.plot_report(report, folder, plot_names(report))
    return atomic_write_text(folder / "report.md", render_markdown(report))
