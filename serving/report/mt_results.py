"""The translation section of docs/results.md, rendered from the report.json of `headprune demo-mt`."""

from __future__ import annotations

from exporter.evaluation.results import Ablation, BestHeads, PruningCurve
from serving.report.model import Report

FIGURES = ("mt_training.png", "mt_curve.png", "mt_curve_types.png", "mt_curve_types_rescored.png", "mt_dynamics.png")
TYPE_NAMES = {"encoder": "encoder self", "decoder": "decoder self", "cross": "encoder-decoder (cross)"}


def _training(training: dict, cached: bool) -> list[str]:
    settings, test = training["settings"], training["test"]
    curve = training["curve"]
    lines = [
        "### The model",
        "",
        f"A Marian transformer of {training['parameters'] / 1e6:.1f}M parameters ({settings['layers']}+{settings['layers']}"
        f" layers, {settings['heads']} heads per attention, d_model {settings['d_model']}, shared "
        f"{settings['vocab_size']} BPE vocabulary) trained by `headprune train-mt` for {settings['minutes']:.0f} minutes "
        f"on {training.get('device', 'cpu')} with {training['threads']} threads"
        f"{' (this run reused the cached model)' if cached else ''}. Test BLEU (greedy, one reference per source, "
        f"{test['examples']} sources): **{test['value']:.1f}** (`{test['signature']}`).",
        "",
        "![BLEU during training](mt_training.png)",
        "",
        f"| minutes | step | BLEU on {training['dev_sentences']} scoring sentences |",
        "|---|---|---|",
    ]
    lines += [f"| {p['seconds'] / 60:.1f} | {p['step']} | {p['bleu']:.1f} |" for p in curve]
    return lines + [""]


def _type_sensitivity(typed: dict[str, PruningCurve]) -> str:
    """Returns the sentence ranking the attention types by the BLEU lost at the largest share every curve reached."""
    share = min(c.points[-1]["fraction"] for c in typed.values())
    drops = {}
    for kind, curve in typed.items():
        point = max((p for p in curve.points if p["fraction"] <= share + 1e-9), key=lambda p: p["fraction"])
        drops[kind] = curve.points[0]["metric"] - point["metric"]
    order = sorted(drops, key=drops.get, reverse=True)
    how = "re-scored" if next(iter(typed.values())).rescore else "scored once"
    return (
        f"BLEU lost when {100 * share:.0f} % of one type's heads are pruned ({how}): "
        + ", ".join(f"{TYPE_NAMES.get(k, k)} {drops[k]:.1f}" for k in order)
        + f". Most sensitive: **{TYPE_NAMES.get(order[0], order[0])}**."
    )


def _curves(curves: dict[str, PruningCurve]) -> list[str]:
    lines = [
        "### BLEU vs share of heads pruned, per attention type",
        "",
        "![curves per type, importance once](mt_curve_types.png)",
        "![curves per type, re-scored](mt_curve_types_rescored.png)",
        "![global curves](mt_curve.png)",
        "",
    ]
    for curve in curves.values():
        points = ", ".join(f"{100 * p['fraction']:.0f} %: {p['metric']:.1f}" for p in curve.points)
        lines.append(f"- {curve.label}: {points} (within 1 BLEU up to {100 * curve.tolerated_share():.0f} %)")
    sentences = [
        _type_sensitivity(typed)
        for rescored in (False, True)
        if (typed := {c.only_type: c for c in curves.values() if c.only_type and c.rescore == rescored})
    ]
    if sentences:
        lines += ["", *sentences, "The paper (WMT En-Fr): encoder-decoder attention is by far the most sensitive."]
    return lines + [""]


def _ablation(ablation: Ablation, best: BestHeads) -> list[str]:
    alpha = ablation.alpha
    lines = [
        f"### Single-head ablation and best head per layer ({ablation.examples} sentences)",
        "",
        f"Baseline BLEU {ablation.baseline:.2f}; * marks a change with p < {alpha} (paired bootstrap over sentences).",
        "",
        "| type | layer | change per head (BLEU) | best single head: BLEU (change) |",
        "|---|---|---|---|",
    ]
    for kind, layers in ablation.delta.items():
        for layer, row in layers.items():
            marks = ablation.p_value[kind][layer]
            best_row = best.layers[kind][layer]
            mark = "*" if best_row["p_value"] < alpha else ""
            lines.append(
                f"| {TYPE_NAMES.get(kind, kind)} | {layer} | "
                + " ".join(f"{d:+.1f}{'*' if p < alpha else ''}" for d, p in zip(row, marks))
                + f" | head {best_row['best_head']}: {best_row['metric']:.1f} ({best_row['delta']:+.1f}{mark}) |"
            )
    for kind in ablation.delta:
        p_values = [p for row in ablation.p_value[kind].values() for p in row]
        reduced = [r for r in best.layers[kind].values()]
        lines.append(
            f"- {TYPE_NAMES.get(kind, kind)}: {sum(p < alpha for p in p_values)} of {len(p_values)} heads "
            f"change BLEU significantly alone; {sum(r['p_value'] < alpha for r in reduced)} of {len(reduced)} "
            "layers change significantly when reduced to one head."
        )
    return lines + [""]


def _dynamics(curves: list[PruningCurve]) -> list[str]:
    if not curves:
        return []
    lines = [
        "### Training dynamics (RQ4)",
        "",
        "![dynamics](mt_dynamics.png)",
        "",
        "| checkpoint | BLEU unpruned | BLEU at each share pruned | within 1 BLEU up to |",
        "|---|---|---|---|",
    ]
    for curve in curves:
        points = ", ".join(f"{100 * p['fraction']:.0f} %: {p['metric']:.1f}" for p in curve.points)
        lines.append(
            f"| {curve.label} | {curve.points[0]['metric']:.1f} | {points} | {100 * curve.tolerated_share():.0f} % |"
        )
    return lines + ["", "The paper: the share of prunable heads grows early in training, before BLEU levels off.", ""]


def _served(report: Report) -> list[str]:
    base = report.baseline
    lines = [
        "### Served through Triton (greedy, KV cache)",
        "",
        "| deployment | heads | BLEU | chrF | change (BLEU) | p (paired bootstrap) |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in report.deployments.items():
        q = entry.quality
        if q is None:
            continue
        delta = report.quality_points(name)
        lines.append(
            f"| {name} | {entry.heads}/{entry.facts['original_heads']} | {q.value:.2f} | "
            f"{'' if q.chrf is None else f'{q.chrf:.2f}'} | "
            f"{'' if name == base or delta is None else f'{delta:+.2f}'} | "
            f"{'' if q.p_value is None else f'{q.p_value:.2g}'} |"
        )
    lowest = min((s.concurrency for s in report.speedups), default=None)
    lines += [
        "",
        f"Sentences per second vs `{base}` at concurrency {lowest} [95 % bootstrap interval]:",
        "",
        "| candidate | batch | speedup | requests, trials per side |",
        "|---|---|---|---|",
    ]
    for s in report.speedups:
        if s.concurrency == lowest:
            m = s.speedup
            lines.append(
                f"| {s.candidate} | {s.batch_size} | {m.format()} | {m.baseline_requests}/{m.candidate_requests},"
                f" {m.baseline_trials}/{m.candidate_trials} |"
            )
    equal = report.extra.get("served_vs_in_process", {})
    checked = report.extra.get("export_validation", {})
    if equal:
        lines += [
            "",
            "Served greedy translations equal to transformers' greedy translations of the same checkpoint, "
            "in process: " + ", ".join(f"{n} {e['exact_matches']}/{e['sentences']}" for n, e in equal.items()) + ".",
        ]
    if checked:
        lines += [
            "",
            "Export check (greedy search over the two ONNX graphs vs transformers, test sentences): "
            + ", ".join(
                f"{n} {v['exact_matches']}/{v['sentences']} identical, step logits within {v['max_abs_diff']:.1g}"
                for n, v in checked.items()
            )
            + ".",
        ]
    return lines + ["", f"Verdict: {report.verdict().text}", ""]


def render_translation_results(data: dict) -> str:
    """Returns the Markdown of the translation section for a `headprune demo-mt` report.json."""
    report = Report.from_dict(data)
    ex, demo = report.extra["experiments"], report.extra["demo"]
    curves = {name: PruningCurve.from_dict(curve) for name, curve in ex["curves"].items()}
    seconds = demo.get("seconds", {})
    lines = [
        "## Translation: Marian on Tatoeba English-Spanish (the paper's second system)",
        "",
        f"Generated from the report of `headprune demo-mt` ({report.created}); importance scored on "
        f"{ex['score_examples']} scoring sentences (teacher-forced cross-entropy, all three attention types in one "
        f"pass); BLEU of masked variants on {ex['eval_examples']} test sentences (greedy). The run took "
        f"{seconds.get('total', 0) / 60:.1f} minutes.",
        "",
    ]
    lines += _training(report.extra["training"], demo.get("model_cached", False))
    lines += _curves(curves)
    lines += _ablation(Ablation.from_dict(ex["ablation"]), BestHeads.from_dict(ex["best_head_per_layer"]))
    lines += _dynamics([PruningCurve.from_dict(c) for c in ex.get("dynamics", [])])
    lines += _served(report)
    return "\n".join(lines)
