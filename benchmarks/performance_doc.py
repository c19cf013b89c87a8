"""docs/performance.md and its plots, written from benchmarks/results/*.json only (every number has a source file)."""

from __future__ import annotations

import json
from pathlib import Path

from exporter.atomic import atomic_write_text
from serving.benchmark.latency import Speedup
from serving.report.plots import plt, save_figure

TARGETS = {"b16": 2.5, "b1_latency": 0.45, "pruning_b16": 1.35}


def _load(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}


def _fmt(speedup: dict) -> str:
    return Speedup.from_dict(speedup).format()


def _headline(result: dict) -> list[str]:
    """Returns section 1 from `headprune optimize`'s result: the targets, then optimize.md's content."""
    from serving.optimize.report import render_markdown

    lines = ["## 1. The headline: `headprune optimize` on the demo's MiniLM", ""]
    proof = result.get("proof")
    if proof:
        steps = {row["step"]["name"]: row for row in proof["steps"]}
        final = proof["steps"][-1]
        total, latency = Speedup.from_dict(final["throughput"]), Speedup.from_dict(final["p50_b1"])
        pruning = next(
            (Speedup.from_dict(row["throughput"]) for name, row in steps.items() if name.startswith("fp32_distilled")),
            None,
        )
        met = {True: "met", False: "not met"}
        lines += [
            f"Targets (on this machine): throughput at batch 16 >= {TARGETS['b16']}x: {total.format()}, "
            f"{met[total.ratio >= TARGETS['b16']]}; p50 at batch 1 <= {TARGETS['b1_latency']}x the unpruned "
            f"model's: {1 / latency.ratio:.2f}x, {met[1 / latency.ratio <= TARGETS['b1_latency']]}"
            + (
                f"; pruning's own share (pruned + distilled, FP32) >= {TARGETS['pruning_b16']}x: "
                f"{pruning.format()}, {met[pruning.ratio >= TARGETS['pruning_b16']]}"
                if pruning
                else ""
            )
            + ". The optimizer chooses by its rule, not by these targets.",
            "",
        ]
    body = render_markdown(result).splitlines()[1:]  # its own title left out
    lines += [
        "#" + line if line.startswith("## ") else line.replace("](waterfall.png)", "](perf_waterfall.png)")
        for line in body
    ]
    return lines + [""]


def _ceiling(data: dict) -> list[str]:
    have = data["int8_instructions"]
    dot_products = [flag for flag in ("avx512_vnni", "avx_vnni", "amx_int8") if flag in have]
    rows = {row["model"]: row for row in data["rows"]}
    lines = [
        "### What heads and INT8 can give on this CPU (in process)",
        "",
        f"The CPU's 8-bit instructions: {', '.join(have) or 'unknown'}"
        + (
            ""
            if dot_products
            else " (no VNNI or AMX dot-product instructions, which ONNX Runtime's 8-bit matrix "
            "products use where present)"
        )
        + f". Each model against the unpruned FP32 model, {data['rounds']} alternating blocks per model, "
        f"sequence length {data['seq_len']}; the model with one head left is a bound, its accuracy aside.",
        "",
        "| model | heads | precision | throughput at batch 16 | throughput at batch 1 | p50 at batch 1 vs unpruned |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['what']} | {r['heads']} of {data['original_heads']} | {r['precision']} | {_fmt(r['b16'])} | "
        f"{_fmt(r['b1'])} | {r['p50_b1_ratio']:.2f}x |"
        for r in data["rows"]
    ]
    bound = rows["one_head_int8"]
    if bound["b16"]["ci_high"] < TARGETS["b16"]:
        reach = "so no deployment within 1 point reaches the batch-16 target with heads and INT8 on this CPU"
    elif rows["headline"]["b16"]["ratio"] >= TARGETS["b16"]:
        reach = f"the headline's model reaches the batch-16 target of {TARGETS['b16']}x here too"
    else:
        reach = f"only this bound reaches the batch-16 target of {TARGETS['b16']}x"
    lines += [
        "",
        f"With every head but one removed and INT8, throughput at batch 16 is {_fmt(bound['b16'])}: {reach}. "
        f"The headline's model ({rows['headline']['heads']} heads, INT8) measures {_fmt(rows['headline']['b16'])} "
        "here, in process.",
        "",
    ]
    return lines


def _stale_headline_note(data: dict) -> list[str]:
    """Returns a warning where the in-process sections measured another headline model than the optimizer chose."""
    chosen = (data.get("optimize") or {}).get("chosen")
    rows = {row["model"]: row for row in data["ceiling"]["rows"]}
    if not chosen or "headline" not in rows:
        return []
    total = data["ceiling"]["original_heads"]
    heads = total - round(chosen["level"] * total)
    if rows["headline"]["heads"] == heads:
        return []
    return [
        f"Note: this section, `fusion`, `tune` and `memory` measured an earlier headline model "
        f"({rows['headline']['heads']} heads), not the optimizer's choice ({heads} heads, {chosen['label']}): "
        "rerun them (`--sections fusion,ceiling,tune,memory`).",
        "",
    ]


def _batches(served: dict) -> list[str]:
    rows = [s for s in served["speedups"] if s["candidate"] == "minilm_pruned50" and s["concurrency"] == 1]
    lines = [
        "## 2. 50 % of heads pruned vs unpruned, by batch size (served)",
        "",
        "| batch | measured | predicted from FLOPs | requests (baseline/candidate) |",
        "|---|---|---|---|",
    ]
    for s in rows:
        lines.append(
            f"| {s['batch_size']} | {_fmt(s)} | {s['predicted']:.2f}x | {s['baseline_requests']}/{s['candidate_requests']} |"
        )
    return lines + [
        "",
        "Floors: >= 1.25x at batch 16 and 64, >= 1.15x at batch 1. The prediction from the measured share "
        "of time in attention is in section 5 (per sequence length).",
        "",
    ]


def _overhead(data: dict) -> list[str]:
    lines = [
        "## 3. Serving overhead: Triton vs in-process ONNX Runtime (same model, same threads)",
        "",
        f"Model {data['model']}, sequence length {data['seq_len']}, {data['rounds']} alternating blocks per path "
        "with idle gaps. `triton_http_raw` is the second load generator (one keep-alive connection, JSON protocol).",
        "",
        "| batch | path | p50 ms | vs in process | added ms | client CPU ms/request | requests |",
        "|---|---|---|---|---|---|---|",
    ]
    checks, floors, compute = [], [], []
    for batch, paths in data["batch_sizes"].items():
        for name, row in paths.items():
            if isinstance(row, dict) and not name.startswith("floor_"):
                client = "–" if name == "in_process" else f"{row['client_cpu_ms_per_request']:.2f}"
                lines.append(
                    f"| {batch} | {name} | {row['p50_ms']:.2f} | {row['ratio_to_in_process']:.3f}x | "
                    f"{row['added_ms']:+.2f} | {client} | {row['requests']} |"
                )
        compute.append(_compute_share(batch, paths))
        difference = paths["triton_http_raw"]["p50_ms"] / paths["triton_http"]["p50_ms"] - 1
        checks.append(f"batch {batch}: {100 * difference:+.1f} %")
        if "floor_http" in paths:
            local = paths["in_process"]["p50_ms"]
            floors.append(
                f"batch {batch}: {paths['floor_http']['p50_ms']:.2f} ms over HTTP, "
                f"{paths['floor_grpc']['p50_ms']:.2f} ms over gRPC "
                f"({100 * paths['floor_http']['p50_ms'] / local:.1f} % and "
                f"{100 * paths['floor_grpc']['p50_ms'] / local:.1f} % of the in-process p50)"
            )
    lines += [
        "",
        "Goal: <= 1.05x at batch 1, <= 1.02x at batch 16. Second load generator vs tritonclient over HTTP "
        f"(p50; goal within 10 %): {', '.join(checks)}.",
        "",
        "Where the added time goes: Triton's own compute per request (`compute_infer` of its statistics, a "
        f"mean, not a p50): {'; '.join(compute)}.",
        "",
    ]
    if floors:
        lines += [
            "The floor: the same requests to a model that does no work, served next to it (Triton's Python-backend "
            f"path and the client, nothing else): {'; '.join(floors)}.",
            "",
        ]
    return lines


def _compute_share(batch, paths: dict) -> str:
    """Returns Triton's own compute (a mean) next to the in-process and served p50s and, where the floor was
    measured, how much of the added time protocol and backend can explain at most."""
    local, served, inside = (
        paths["in_process"]["p50_ms"],
        paths["triton_http"]["p50_ms"],
        paths["server_compute_infer_ms"],
    )
    text = (
        f"batch {batch}: {inside:.2f} ms inside Triton (in process: p50 {local:.2f} ms; over HTTP: p50 {served:.2f} ms)"
    )
    if "floor_http" in paths and served > local:
        floor = paths["floor_http"]["p50_ms"]
        text += (
            f"; the floor bounds what protocol and Python backend cost at {floor:.2f} ms of the "
            f"{served - local:+.2f} ms HTTP adds, so the rest is the model running slower inside the server"
        )
    return text


def _queue(data: dict) -> list[str]:
    limits = ", ".join(f"`{k}` {v}" for k, v in data["limited"].items())
    lines = [
        "### Queue limits in the bundled Triton (2.51)",
        "",
        f"The unpruned model exported with the default (no queue policy) and with a queue limit ({limits}), "
        f"served side by side: batch 1, sequence length {data['seq_len']}, {data['trials']} interleaved trials of "
        f"{data['requests_per_window']} requests. Held: answered more than {data['held_ms']} ms after the p50 "
        "(the batcher's 500 ms wait for a busy instance).",
        "",
        "| export | clients at once | p50 ms | mean ms | held | requests/s |",
        "|---|---|---|---|---|---|",
    ]
    for name, cells in data["models"].items():
        for label, c in cells.items():
            lines.append(
                f"| {name} | {label.removeprefix('concurrency')} | {c['p50_ms']:.1f} | {c['mean_ms']:.1f} | "
                f"{c['held']} of {c['requests']} | {c['throughput']:.1f} |"
            )
    return lines + [""]


def _fusion(data: dict) -> list[str]:
    lines = [
        "## 4. Attention fusion (`--optimize`) vs plain export, in process",
        "",
        "| model | batch | fused / plain throughput |",
        "|---|---|---|",
    ]
    lines += [f"| {r['model']} | {r['batch']} | {_fmt(r['speedup'])} |" for r in data["rows"]]
    return lines + ["", data["note"] + ".", ""]


def _sequence(data: dict) -> list[str]:
    lines = [
        "## 5. Sequence length: 50 % pruned vs unpruned, in process, batch 1",
        "",
        "| tokens | measured | predicted from attention's share of time | attention's share | unpruned p50 ms |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['seq_len']} | {_fmt(r['speedup'])} | {r['predicted']:.2f}x | {100 * r['attention_share']:.0f} % | "
        f"{r['baseline_p50_ms']:.1f} |"
        for r in data["rows"]
    ]
    return lines + ["", "![sequence length](perf_sequence.png)", ""]


def _memory(data: dict) -> list[str]:
    lines = [
        "## 6. Memory",
        "",
        "| model | heads | precision | ONNX MB | weights removed MB | server RSS MiB (idle → after "
        f"batch {data['batch']}) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in data["models"].items():
        lines.append(
            f"| {name} | {r['heads']} | {r['precision']} | {r['onnx_bytes'] / 1e6:.1f} | "
            f"{r['weight_bytes_removed'] / 1e6:.1f} | {r['resident_mib_idle']:.0f} → {r['resident_mib_after_requests']:.0f} |"
        )
    return lines + ["", f"Triton's own process: {data['server_process_mib']:.0f} MiB. {data['note']}.", ""]


def _peer(data: dict) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in data["peer_versions"].items())
    lines = [
        "## 7. The peer: transformers 4.x `prune_heads` + Optimum O2, served next to ours",
        "",
        f"Plan: {data['plan']}. Peer environment (created by the benchmark): {versions}. Both served by the same "
        f"Triton, {data['trials']} interleaved trials, sequence length {data['seq_len']}.",
        "",
        "| batch | our throughput / the peer's |",
        "|---|---|",
    ]
    lines += [f"| {cell.removeprefix('batch')} | {_fmt(s)} |" for cell, s in data["speedup_ours_over_peer"].items()]
    agree = "the same" if data["same_predictions"] else "different"
    return lines + [
        "",
        f"Outputs on the same inputs: largest logit difference {data['max_abs_logit_difference']:.2g}, "
        f"{agree} predicted labels. Goal: ours >= 1.0x.",
        "",
    ]


def _scoring(data: dict) -> list[str]:
    lines = [
        "## 8. Scoring cost vs a plain forward+backward pass",
        "",
        f"{data['examples']} examples, batch {data['batch_size']}, {data['trials']} interleaved trials, {data['model']}.",
        "",
        "| run | median s | ratio | peak memory MiB (own process) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {r['median_s']:.3f} | {r['ratio']:.2f}x | {r['peak_mib']:.0f} |"
        for name, r in data["runs"].items()
    ]
    return lines + ["", "Goal: <= 1.3x.", ""]


def _tune(data: dict) -> list[str]:
    from serving.benchmark.tune import ServingSettings

    lines = [
        "## Serving settings searched by `headprune tune` (headline INT8 model)",
        "",
        f"Throughput at batch {data['batch']}, concurrency {data['concurrency']}, against the exported settings "
        f"({ServingSettings(**data['current']).label}: instances, threads (auto = ONNX Runtime's default), spinning, "
        "batching delay in µs).",
        "",
        "| settings | examples/s | vs current | p50 batch 1 ms |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['label']} | {r['throughput']:.1f} | {'current' if i == 0 else _fmt(r['speedup'])} | "
        f"{r['p50_batch1_ms']:.2f} |"
        for i, r in enumerate(data["candidates"])
    ]
    return lines + ["", f"Chosen: {data['chosen_label']}.", ""]


def _plots(results: dict, docs: Path) -> None:
    optimized = results.get("optimize")
    if optimized and optimized.get("proof"):
        from serving.optimize.report import plot_waterfall

        plot_waterfall(optimized, docs / "perf_waterfall.png")
    sequence = results.get("sequence")
    if sequence:
        figure, axis = plt.subplots(figsize=(6, 4))
        rows = sequence["rows"]
        x = [r["seq_len"] for r in rows]
        axis.errorbar(
            x,
            [r["speedup"]["ratio"] for r in rows],
            yerr=[
                [r["speedup"]["ratio"] - r["speedup"]["ci_low"] for r in rows],
                [r["speedup"]["ci_high"] - r["speedup"]["ratio"] for r in rows],
            ],
            marker="o",
            label="measured",
        )
        axis.plot(
            x, [r["predicted"] for r in rows], marker="s", linestyle="--", label="predicted (attention's time share)"
        )
        axis.set_xscale("log", base=2)
        axis.set_xlabel("sequence length (tokens)")
        axis.set_ylabel("speedup, 50 % of heads pruned")
        axis.legend()
        save_figure(figure, docs / "perf_sequence.png")


def _gpu_speed(data: dict | None) -> list[str]:
    """The paper's GPU speed table (benchmarks/gpu_speed.py), or why it is missing."""
    lines = ["## 10. GPU speed table (PyTorch, the paper's RQ5)", ""]
    if data is None:
        return lines + [
            "Not measured yet: no session so far had a GPU machine. `benchmarks/gpu_speed.py` is written "
            "and its logic is tested on the CPU; run it on a GPU (`python -m benchmarks.gpu_speed --out "
            "benchmarks/results/gpu_speed.json`) and this section fills in.",
            "",
        ]
    env = data["environment"]
    lines += [
        f"Device: {env['device']}; torch {env['torch']} (CUDA {env['cuda']}), transformers {env['transformers']}. "
        f"Sequence length {data['settings']['seq_len']}, {data['settings']['trials']} interleaved trials per "
        "cell; pruned / unpruned examples/s, median [range over trials].",
        "",
        "| model | precision | attention | batch | heads | speedup | peak MiB (unpruned / pruned) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        peak = row.get("peak_mib") or {}
        memory = f"{peak['unpruned']:.0f} / {peak['pruned']:.0f}" if peak.get("unpruned") is not None else ""
        lines.append(
            f"| {row['model']} | {row['precision']} | {row['attention']} | {row['batch']} | "
            f"{row['heads']['pruned']}/{row['heads']['unpruned']} | {row['speedup']:.3f}x "
            f"[{row['speedup_min']:.3f}–{row['speedup_max']:.3f}] | {memory} |"
        )
    return lines + [""]


def render(results: Path, docs: Path) -> Path:
    """Writes docs/performance.md (and its plots) from the result files; returns its path."""
    data = _load(results)
    env = next(iter(data.values()), {}).get("environment", {})
    lines = [
        "# Performance",
        "",
        "Generated by `make bench` (benchmarks/suite.py) from `benchmarks/results/*.json`; "
        "do not edit by hand. Ratios are measured side by side in one run, with 95 % bootstrap intervals "
        "(trials, then requests within them); n.s. = the interval includes 1.0.",
        "",
        f"Machine: {env.get('processor')} x {env.get('cpus')} CPUs, {env.get('platform')}; "
        f"libraries: {', '.join(f'{k} {v}' for k, v in env.get('libraries', {}).items())}.",
        "",
    ]
    ran = [
        s
        for s in (
            "optimize",
            "served",
            "ceiling",
            "overhead",
            "queue",
            "fusion",
            "sequence",
            "memory",
            "peer",
            "scoring",
            "tune",
        )
        if s in data
    ]
    lines += [
        f"Sections run on the CPU: {', '.join(ran)}. GPU: "
        + (
            f"not run ({data['gpu']['skipped']})."
            if "gpu" in data and "skipped" in data["gpu"]
            else "see section 9."
            if "gpu" in data
            else "not run."
        ),
        "",
    ]
    renderers = [
        ("optimize", _headline),
        ("ceiling", _ceiling),
        ("served", _batches),
        ("overhead", _overhead),
        ("queue", _queue),
        ("fusion", _fusion),
        ("sequence", _sequence),
        ("memory", _memory),
        ("peer", _peer),
        ("scoring", _scoring),
        ("tune", _tune),
    ]
    for key, renderer in renderers:
        if key in data:
            lines += renderer(data[key])
            if key == "ceiling":
                lines += _stale_headline_note(data)
    if "gpu" in data and "speedups" in data["gpu"]:
        lines += ["## 9. GPU", "", f"Report: {data['gpu']['report']}", ""]
    lines += _gpu_speed(data.get("gpu_speed"))
    _plots(data, docs)
    return atomic_write_text(docs / "performance.md", "\n".join(lines))
