"""What `optimize` found, as optimize.json (every figure) and, rendered from it alone, optimize.md and waterfall.png.

The headline is computed from the data: the chosen deployment, its speedup with the interval, and whether its quality
is within the budget by the non-inferiority rule (the 95 % interval's lower bound above -max_drop) or not
distinguishable from such a drop.
"""

from __future__ import annotations

from pathlib import Path

from exporter.atomic import atomic_files, atomic_write_json, atomic_write_text, read_json
from exporter.evaluation.significance import format_p_value
from serving.benchmark.latency import Speedup


def unit_of(metric: str, amount: float = 2.0) -> str:
    """Returns the unit of a quality change of ``amount`` in ``metric``: 'point(s)' for accuracy and BLEU."""
    if metric not in ("accuracy", "bleu"):
        return metric
    return "point" if amount == 1 else "points"


def machine_text(machine: dict) -> str:
    """Returns e.g. 'AMD EPYC, 2 CPUs, 8-bit instructions avx2, avx512_vnni': what INT8's gain depends on."""
    flags = ", ".join(machine.get("int8_instructions") or []) or "none found"
    return (
        f"{machine.get('cpu_model') or machine.get('processor')}, {machine.get('cpus')} CPUs, 8-bit instructions "
        f"{flags} ({machine.get('platform')})"
    )


def quality_sentence(change: dict, max_drop: float) -> str:
    """Returns the verdict on a quality change: within the budget when the interval's lower bound is above -max_drop,
    else 'not distinguishable from a drop of max_drop', naming the interval either way."""
    unit = unit_of(change["metric"], max_drop)
    interval = (
        f"{change['gain']:+.2f} {unit_of(change['metric'])}, 95 % interval "
        f"[{change['gain_low']:+.2f}, {change['gain_high']:+.2f}]"
    )
    if change["gain_low"] > -max_drop:
        return f"within {max_drop:g} {unit} of the unpruned model ({interval})"
    return f"not distinguishable from a drop of {max_drop:g} {unit} ({interval})"


def headline(result: dict) -> str:
    """Returns the one-line finding, computed from the result."""
    settings, proof = result["settings"], result.get("proof")
    cpu = result["environment"]["machine"]
    flags = ", ".join(cpu.get("int8_instructions") or []) or "no 8-bit instructions found"
    where = f"{cpu.get('cpu_model') or cpu.get('processor')} ({flags})"
    if not proof:
        return (
            f"No candidate kept the {result['task']} quality within {settings['max_drop']:g} on the dev split and "
            f"served faster: keep the unpruned model (on {where})."
        )
    final = proof["steps"][-1]
    if settings.get("objective") == "latency":
        speed = f"{Speedup.from_dict(final['p50_b1']).format()} lower p50 latency than the unpruned model at batch 1"
    else:
        speed = (
            f"{Speedup.from_dict(final['throughput']).format()} the unpruned throughput at batch {proof['batch_size']}"
        )
    return (
        f"{final['step']['label']}: {speed} on the test split; {final['quality']['metric']} "
        f"{quality_sentence(final['quality'], settings['max_drop'])}; on {where}."
    )


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _gain_cell(change: dict) -> str:
    return f"{change['gain']:+.2f} [{change['gain_low']:+.2f}, {change['gain_high']:+.2f}]"


def _quality_cell(change: dict) -> str:
    if change["metric"] == "accuracy":
        return f"{100 * change['value']:.2f} %"
    return f"{change['value']:.2f}"


def render_markdown(result: dict) -> str:
    """Returns optimize.md: the headline, the waterfall on the test split, the search's trials, the method."""
    settings, proof = result["settings"], result.get("proof")
    lines = ["# headprune optimize", "", f"**{headline(result)}**", ""]
    if proof:
        base = proof["baseline_quality"]
        lines += [
            f"## The waterfall on the test split ({base['examples']} examples, {proof['trials']} interleaved "
            "trials through Triton)",
            "",
            f"Unpruned: {base['metric']} {_quality_cell(base)}. Each lever's share is its throughput over the "
            "step before; intervals are 95 % t intervals over per-trial log ratios (trials paired).",
            "",
        ]
        rows = [
            [
                row["step"]["label"],
                Speedup.from_dict(row["share"]).format(),
                Speedup.from_dict(row["throughput"]).format(),
                Speedup.from_dict(row["p50_b1"]).format(),
                _quality_cell(row["quality"]),
                _gain_cell(row["quality"]),
                format_p_value(row["quality"]["metric"], row["quality"]["p_value"]),
            ]
            for row in proof["steps"]
        ]
        lines += _table(
            [
                "step",
                "share",
                f"throughput vs unpruned (batch {proof['batch_size']})",
                "p50 speedup (batch 1)",
                base["metric"],
                "gain, 95 % interval",
                "p",
            ],
            rows,
        )
        lines += ["", "![waterfall](waterfall.png)", ""]
        lines += _end_to_end_lines(result)
    lines += [
        f"## The search on the dev split ({settings['objective']} at batch "
        f"{settings['batch_size'] if settings['objective'] == 'throughput' else 1}, {settings['search_trials']} "
        "trials per candidate)",
        "",
    ]
    rows = [
        [t["candidate"]["label"], f"not made: {t['failed']}", "no", "–", f"{t['seconds']:.0f}"]
        if t.get("failed")
        else [
            t["candidate"]["label"],
            _gain_cell(t["quality"]),
            "yes" if t["eligible"] else "no",
            Speedup.from_dict(t["speedup"]).format(),
            f"{t['seconds']:.0f}",
        ]
        for t in result["search"]["trials"]
    ]
    lines += _table(
        ["candidate", "gain on dev, 95 % interval", f"within {settings['max_drop']:g}", "speedup", "seconds"], rows
    )
    masked = result["search"].get("masked_quality") or {}
    if masked:
        lines += [
            "",
            "Masked dev quality before any recovery, by share of heads pruned: "
            + ", ".join(f"{round(100 * float(level))} % {value:.3g}" for level, value in masked.items())
            + ".",
        ]
    if result["search"]["stopped_by_budget"]:
        lines += ["", f"The budget of {settings['budget_minutes']:g} minutes stopped the search before it was done."]
    lines += [
        "",
        "## How it was chosen",
        "",
        f"Candidates pull the levers that apply to a {result['task']} model; the full recipe is bisected over "
        "the pruning levels. A candidate qualifies when the lower bound of the 95 % paired-bootstrap interval "
        f"of its quality change on the dev split is above -{settings['max_drop']:g}; the fastest qualifying "
        f"one that measured more than {settings.get('min_speedup', 1.0):g}x the unpruned model's speed is "
        "chosen, then measured once on the test split.",
    ]
    for lever, why in result["levers_not_applicable"].items():
        lines.append(f"- {lever}: not applied ({why}).")
    installed = result["installed"]
    names = ", ".join(f"`{name}` ({role})" for role, name in installed.items())
    lines += [
        "",
        f"Installed into `{settings['repo']}`: {names}.",
        "",
        f"Machine: {machine_text(result['environment']['machine'])}. INT8's share depends on the CPU's "
        "8-bit instructions: the figures hold for this CPU class.",
        "",
    ]
    return "\n".join(lines)


def _end_to_end_lines(result: dict) -> list[str]:
    proof = result["proof"]
    row = proof.get("end_to_end")
    if not row:
        return []
    names = list(row["p50_ms"])  # the unpruned deployment, then the chosen one
    base, chosen = names[0], result["chosen"]["name"]
    tensor = Speedup.from_dict(proof["steps"][-1]["throughput"])
    return (
        [
            f"## End to end: raw test sentences through the text front ends (batch {row['batch_size']})",
            "",
            f"What a client sending text sees ({row['sentences']}, tokenised by the server; {row['trials']} paired "
            "trials):",
            "",
        ]
        + _table(
            ["deployment", "examples/s", "p50 ms", "throughput speedup", "p50 speedup"],
            [
                [
                    names[0] + " (unpruned)",
                    f"{row['examples_per_s'][names[0]]:.1f}",
                    f"{row['p50_ms'][names[0]]:.2f}",
                    "",
                    "",
                ],
                [
                    chosen,
                    f"{row['examples_per_s'][names[1]]:.1f}",
                    f"{row['p50_ms'][names[1]]:.2f}",
                    Speedup.from_dict(row["throughput"]).format(),
                    Speedup.from_dict(row["p50"]).format(),
                ],
            ],
        )
        + [
            "",
            f"The tensor model at {result['settings']['seq_len']} tokens: {tensor.format()} ({base} to {chosen}).",
            "",
        ]
    )


def plot_waterfall(result: dict, path: Path) -> None:
    """Plots the cumulative throughput of each step over the unpruned model, with its interval and quality."""
    from serving.report.plots import plt, save_figure

    proof = result["proof"]
    figure, axis = plt.subplots(figsize=(8, 4))
    labels = ["unpruned"] + [row["step"]["label"] for row in proof["steps"]]
    speeds = [Speedup(1.0, 1.0, 1.0, 0, 0, 0, 0)] + [Speedup.from_dict(row["throughput"]) for row in proof["steps"]]
    values = [s.ratio for s in speeds]
    axis.bar(
        labels,
        values,
        yerr=[[s.ratio - s.ci_low for s in speeds], [s.ci_high - s.ratio for s in speeds]],
        color="tab:blue",
        capsize=4,
    )
    qualities = [proof["baseline_quality"]] + [row["quality"] for row in proof["steps"]]
    for i, quality in enumerate(qualities):
        axis.text(i, 0.05, _quality_cell(quality), ha="center", color="white", fontsize=8)
    axis.set_ylabel(f"throughput vs unpruned (batch {proof['batch_size']})")
    axis.set_title(f"Each lever on the test split ({proof['baseline_quality']['metric']} in the bars)")
    figure.autofmt_xdate(rotation=15)
    save_figure(figure, path)


def write_result(result: dict, folder: Path) -> Path:
    """Writes optimize.json, optimize.md and (with a proof) waterfall.png into ``folder``, replaced together; returns
    optimize.md's path."""
    with atomic_files(folder) as staging:
        atomic_write_json(staging / "optimize.json", result)
        atomic_write_text(staging / "optimize.md", render_markdown(result))
        if result.get("proof"):
            plot_waterfall(result, staging / "waterfall.png")
    return Path(folder) / "optimize.md"


def render_result(folder: Path) -> Path:
    """Re-renders optimize.md and waterfall.png from ``folder``/optimize.json; returns optimize.md's path."""
    result = read_json(
        Path(folder) / "optimize.json",
        f"'{folder}' has no optimize.json",
        "run 'headprune optimize' with that folder as its --out first",
    )
    return write_result(result, Path(folder))
