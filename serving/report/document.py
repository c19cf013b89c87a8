"""The report as one document, built once from a Report and rendered as Markdown (report.md) or HTML (report.html).

Every table cell keeps the number behind its text (``Entry.value``, the value report.json
holds), so the HTML page can sort by it and a test can check the page against report.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exporter.evaluation.metrics import LOWER_IS_BETTER
from exporter.evaluation.significance import ALPHA, format_p_value
from serving.benchmark.latency import PERCENTILES, TAIL, min_samples

if TYPE_CHECKING:
    from serving.report.model import Report


@dataclass(frozen=True)
class Entry:
    """A table cell: its text, and the number (or name) behind it; None where there is none."""

    text: str
    value: float | int | str | None = None


@dataclass(frozen=True)
class Note:
    """A line of prose, optionally ending in code (a signature, a command)."""

    text: str
    code: str = ""


@dataclass(frozen=True)
class Table:
    """A titled table with the prose before and after it; ``key`` names it in the HTML page."""

    key: str
    title: str
    headers: tuple[str, ...]
    rows: list[list[Entry]]
    intro: list[Note] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)


@dataclass(frozen=True)
class Document:
    """What a report says, in order: the verdict, a line per candidate, how it was measured, the tables, the plots
    and the signature."""

    title: str
    verdict: str
    candidates: list[tuple[str, str]]
    method: str
    tables: list[Table]
    plots: list[str]
    signature: list[Note]


def _number(value: float | None, digits: int) -> Entry:
    return Entry("–" if value is None else f"{value:.{digits}f}", value)


def _plain(value: int | str) -> Entry:
    return Entry(str(value), value)


def _summary(report: Report, name: str) -> str:
    entry, lowest = report.deployments[name], report.lowest_concurrency
    speed = ", ".join(
        f"batch {s.batch_size} {s.speedup.format()}"
        for s in report.speedups
        if s.candidate == name and s.concurrency == lowest
    )
    unit = "" if entry.quality and entry.quality.metric in LOWER_IS_BETTER else " points"
    change = f" ({report.quality_change(name)}{unit})" if report.quality_points(name) is not None else ""
    precision = entry.facts.get("precision", "fp32")
    weights = "" if precision == "fp32" else f", {precision.upper()} weights"
    return (
        f"({100 * entry.pruned_share:.0f} % of heads pruned{weights}): {entry.quality_text()}{change}; "
        f"throughput vs {report.baseline} at concurrency {lowest}: {speed or 'not measured'}"
    )


def _method(report: Report) -> str:
    sig = report.signature
    requests, trials = (_count_range([getattr(c.stats, k) for c in report.cells]) for k in ("requests", "trials"))
    translation = any(d.facts.get("task") == "translation" for d in report.deployments.values())
    inputs = "real source sentences of the data (greedy search)" if translation else f"sequence length {sig['seq_len']}"
    if report.language_model:
        inputs += f" (tokens/s = examples/s x {sig['seq_len']})"
    shapes = {tuple(d.facts["input_shape"]) for d in report.deployments.values() if d.facts.get("input_shape")}
    if shapes:
        inputs = "random images of " + ", ".join("x".join(map(str, shape)) for shape in sorted(shapes)) + " pixels"
    return (
        f"Measured through Triton over {sig['protocol'].upper()}, {inputs}, "
        f"{requests} requests in {trials} interleaved trial{'' if trials == '1' else 's'} per cell"
        f"{'' if report.complete else ' (INCOMPLETE: interrupted run)'}; speedup [95 % bootstrap interval, "
        "resampling trials and the requests within them]; n.s. = the interval includes 1.0"
        f"{' (1 trial: only requests are resampled)' if trials == '1' else ''}."
    )


def _count_range(values: list[int]) -> str:
    """Returns '12' or '12–48' for the counts of the cells ('0' for none)."""
    low, high = min(values, default=0), max(values, default=0)
    return str(low) if low == high else f"{low}–{high}"


def _quality_table(report: Report) -> Table:
    rows = []
    for name, entry in report.deployments.items():
        change = report.quality_change(name)
        p_value = entry.quality.p_value if entry.quality else None
        mark = "*" if p_value is not None and p_value < ALPHA else ""
        rows.append(
            [
                _plain(name),
                Entry(f"{entry.heads}/{entry.facts['original_heads']}", entry.heads),
                Entry(entry.quality_text(), entry.quality.value if entry.quality else None),
                Entry(
                    "" if name == report.baseline or not change else f"{change}{mark}",
                    None if name == report.baseline else report.quality_points(name),
                ),
                Entry(_interval(entry.quality), entry.quality.gain_low if entry.quality else None),
                Entry("" if p_value is None else format_p_value(entry.quality.metric, p_value), p_value),
            ]
        )
    notes = [
        Note(
            f"* significant change (p < {ALPHA}; exact McNemar test for accuracy, paired bootstrap for BLEU and "
            "perplexity, on the same examples)."
        )
    ]
    q = report.deployments[report.baseline].quality
    if q and q.signature:
        notes.append(Note("Metric signature: ", q.signature))
    if q and q.chrf_signature:
        notes.append(Note("chrF signature: ", q.chrf_signature))
    unit = "perplexity" if report.language_model else "points"
    if report.max_drop is not None:
        notes.append(
            Note(
                f"Within {report.max_drop:g} {unit} means the interval's lower bound lies above "
                f"-{report.max_drop:g} (non-inferiority); a candidate whose interval reaches below it is not "
                "distinguishable from such a drop."
            )
        )
    return Table(
        "quality",
        "Quality",
        (
            "deployment",
            "heads",
            "quality",
            f"change ({unit})",
            "gain, 95 % interval (paired bootstrap)",
            "p (paired test)",
        ),
        rows,
        notes=notes,
    )


def _interval(quality) -> str:
    return "" if quality is None or quality.gain_low is None else f"[{quality.gain_low:+.2f}, {quality.gain_high:+.2f}]"


def _latency_table(report: Report) -> Table:
    tokens, seq_len = report.language_model, report.signature["seq_len"]
    rows = []
    for c in report.cells:
        s = c.stats
        rows.append(
            [
                _plain(c.deployment),
                _plain(c.batch_size),
                _plain(c.concurrency),
                _plain(s.requests),
                _plain(s.trials),
                *(_number(getattr(s, f"p{q}"), 2) for q in PERCENTILES),
                _number(s.mean, 2),
                _number(s.throughput, 1),
                *([_number(s.throughput * seq_len, 0)] if tokens else []),
                Entry(f"{s.throughput_min:.1f}-{s.throughput_max:.1f}", s.throughput_min),
            ]
        )
    notes = []
    if any(getattr(c.stats, f"p{q}") is None for c in report.cells for q in PERCENTILES):
        notes.append(
            Note(
                "– too few requests for this percentile: "
                + ", ".join(f"p{q} needs at least {min_samples(q)}" for q in PERCENTILES if q > TAIL)
                + " (a percentile q needs n·(1 − q/100) ≥ 1, at least one request beyond it)."
            )
        )
    headers = (
        "deployment",
        "batch",
        "concurrency",
        "requests",
        "trials",
        "p50 ms",
        "p90",
        "p95",
        "p99",
        "mean",
        "examples/s",
        *(["tokens/s"] if tokens else []),
        "range over trials",
    )
    return Table("latency", "Latency and throughput", headers, rows, notes=notes)


def _speedup_table(report: Report) -> Table:
    rows = []
    for s in report.speedups:
        m = s.speedup
        rows.append(
            [
                _plain(s.candidate),
                _plain(s.batch_size),
                _plain(s.concurrency),
                Entry(f"{m.baseline_requests}/{m.candidate_requests}", m.candidate_requests),
                Entry(f"{m.baseline_trials}/{m.candidate_trials}", m.candidate_trials),
                Entry(m.format(), m.ratio),
                Entry(f"{s.predicted:.2f}x", s.predicted),
            ]
        )
    intro = [
        Note("Measured: candidate / baseline throughput [95 % bootstrap interval]; n.s. = the interval includes 1.0.")
    ]
    return Table(
        "speedup",
        "Speedup: measured vs predicted from FLOPs",
        (
            "candidate",
            "batch",
            "concurrency",
            "requests (baseline/candidate)",
            "trials (baseline/candidate)",
            "measured",
            "predicted (FLOPs)",
        ),
        rows,
        intro=intro,
    )


def _stages_table(report: Report) -> Table:
    rows = [
        [
            _plain(c.deployment),
            _plain(c.batch_size),
            _plain(c.concurrency),
            *(
                _number(c.server[f"{stage}_us"], 0)
                for stage in ("queue", "compute_input", "compute_infer", "compute_output")
            ),
        ]
        for c in report.cells
    ]
    return Table(
        "stages",
        "Where the time goes (Triton statistics, µs per request)",
        ("deployment", "batch", "concurrency", "queue", "compute input", "compute infer", "compute output"),
        rows,
    )


def _facts_table(report: Report) -> Table:
    rows = []
    for name, entry in report.deployments.items():
        e = entry.facts
        heads = "; ".join(f"{k}: {' '.join(map(str, v))}" for k, v in e["heads_per_layer"].items())
        rows.append(
            [
                _plain(name),
                Entry(heads, e["heads"]),
                Entry(f"{e['parameters']:,}", e["parameters"]),
                Entry(f"{e['attention_parameters']:,}", e["attention_parameters"]),
                Entry(f"{e['onnx_bytes'] / 1e6:.1f}", e["onnx_bytes"]),
                Entry(f"{e['flops_per_example'] / 1e9:.3f}", e["flops_per_example"]),
            ]
        )
    return Table(
        "facts",
        "Static facts",
        ("deployment", "heads per layer", "parameters", "attention parameters", "ONNX MB", "GFLOPs/example"),
        rows,
    )


def build_document(report: Report) -> Document:
    """Returns the document of ``report``: what report.md and report.html both show."""
    env = report.environment
    signature = [
        Note("command: ", " ".join(report.command)),
        Note(f"created: {report.created}"),
        Note("settings: ", json.dumps(report.signature)),
        Note("weights: " + ", ".join(f"{n} {e.facts['weights_sha256']}" for n, e in report.deployments.items())),
        Note(f"machine: {env['machine']}"),
        Note(f"libraries: {env['libraries']}"),
        Note(f"server: {env['server']}"),
    ]
    return Document(
        title=f"headprune: {report.title}",
        verdict=report.verdict().text,
        candidates=[(name, _summary(report, name)) for name in report.candidates],
        method=_method(report),
        tables=[
            _quality_table(report),
            _latency_table(report),
            _speedup_table(report),
            _stages_table(report),
            _facts_table(report),
        ],
        plots=report.plot_names(),
        signature=signature,
    )


def _markdown_note(note: Note) -> str:
    text = "\\" + note.text if note.text.startswith("*") else note.text
    return f"{text}`{note.code}`" if note.code else text


def render_markdown(document: Document) -> str:
    """Returns report.md: the verdict in the first five lines, then every table, the plots and the signature."""
    lines = [f"# {document.title}", f"**Verdict:** {document.verdict}"]
    lines += [f"- **{name}** {text}" for name, text in document.candidates]
    lines.append(document.method)
    for table in document.tables:
        lines += ["", f"## {table.title}", ""]
        for note in table.intro:
            lines += [_markdown_note(note), ""]
        lines += ["| " + " | ".join(table.headers) + " |", "|" + "---|" * len(table.headers)]
        lines += ["| " + " | ".join(entry.text for entry in row) + " |" for row in table.rows]
        for note in table.notes:
            lines += ["", _markdown_note(note)]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in document.plots]
    lines += ["", "## Signature", ""] + [f"- {_markdown_note(note)}" for note in document.signature] + [""]
    return "\n".join(lines)
