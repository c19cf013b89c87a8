"""`make bench`: the performance benchmark, from the demo's real MiniLM to docs/performance.md.

Sections (each writes benchmarks/results/<section>.json atomically, with the machine and
library versions):
  fusion     attention fusion (--optimize) vs plain, unpruned and pruned, in process
  sequence   50 %-pruned vs unpruned over sequence lengths 32-512, in process, next to the
             speedup predicted from the measured share of time in attention
  ceiling    the most heads and INT8 can give on this CPU: INT8 alone, the headline's model and every head
             but one removed (FP32, INT8) vs the unpruned model, in process, next to the CPU's 8-bit instructions
  tune       `headprune tune` on the headline model
  served     the headline waterfall and the 50 %-pruned speedup over batch sizes, through Triton
  overhead   Triton vs in-process p50, HTTP and gRPC, and a second load generator
  queue      the unpruned model exported with and without a queue limit, served side by side (Triton 2.51's
             batcher holds requests 500 ms under a limit)
  memory     server resident memory per model, ONNX sizes, bytes of weights removed
  peer       the 50 % plan applied by transformers 4.x prune_heads and exported by Optimum (O2), in its
             own virtual environment, served next to ours
  scoring    importance scoring vs a plain forward+backward pass: time and peak memory
  gpu        the served comparison with CUDA instances, when a GPU is present

Run: make bench (about 28 minutes on 2 cores from a fresh clone, less with the models cached),
or .venv/bin/python -m benchmarks.suite [--sections fusion,served] [--render-only].
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import inprocess
from benchmarks.models import BenchModels, prepare_models
from benchmarks.served import compare_repository, export_variants, onnx_path
from exporter.atomic import atomic_write_json
from exporter.triton.config import DeploymentOptions
from serving.benchmark.compare import library_versions, machine
from serving.demo.assets import default_cache

RESULTS = Path("benchmarks/results")
BATCH_SIZES = [1, 4, 16, 64]
SERVED_TRIALS = 5
SEQ_LENGTHS = [32, 64, 128, 256, 512]
BASELINE, PRUNED50 = "minilm", "minilm_pruned50"
PRUNED80, DISTILLED, INT8, TUNED = ("minilm_pruned80", "minilm_pruned80_distilled", "minilm_pruned80_distilled_int8",
                                   "minilm_pruned80_distilled_int8_tuned")


def save(section: str, data: dict, started: float) -> Path:
    """Writes one section's results (with the environment and its duration); returns the path."""
    return atomic_write_json(RESULTS / f"{section}.json", {"section": section,
                                                           "environment": {**machine(), "libraries": library_versions()},
                                                           "seconds": round(time.monotonic() - started, 1), **data})


def export_all(models: BenchModels, repo: Path, fused: bool) -> None:
    """Exports every deployment the sections measure into a fresh ``repo``."""
    shutil.rmtree(repo, ignore_errors=True)
    export_variants({
        BASELINE: (models.base, "fp32"), f"{BASELINE}_fused": (models.base, "fp32", {"optimize": True}),
        PRUNED50: (models.pruned50, "fp32"), f"{PRUNED50}_fused": (models.pruned50, "fp32", {"optimize": True}),
        PRUNED80: (models.pruned80, "fp32"), DISTILLED: (models.distilled80, "fp32"),
        f"{DISTILLED}_fused": (models.distilled80, "fp32", {"optimize": True}),
        INT8: (models.distilled80, "int8", {"optimize": fused}),
    }, repo, max(BATCH_SIZES))


def fusion_section(repo: Path) -> dict:
    """Returns fused / plain throughput in process for each model at batch 1 and 16."""
    rows = []
    for name in (BASELINE, PRUNED50, DISTILLED):
        sessions = {"plain": inprocess.session(onnx_path(repo, name)),
                    "fused": inprocess.session(onnx_path(repo, f"{name}_fused"))}
        for batch in (1, 16):
            inputs = {k: inprocess.feed(s, batch, 128) for k, s in sessions.items()}
            blocks = inprocess.timed_blocks({k: (lambda s=s, k=k: s.run(None, inputs[k])) for k, s in sessions.items()},
                                            rounds=5)
            rows.append({"model": name, "batch": batch, "speedup": inprocess.speedup(blocks["plain"], blocks["fused"],
                                                                                    batch).to_dict()})
    return {"rows": rows, "note": "fused graphs are validated against PyTorch within 1e-4 at export"}


def fusion_kept(fusion: dict) -> bool:
    """Returns whether fusion measured significantly faster on the headline's model at batch 16."""
    row = next(r for r in fusion["rows"] if r["model"] == DISTILLED and r["batch"] == 16)
    return row["speedup"]["significant"] and row["speedup"]["ratio"] > 1


def sequence_section(repo: Path) -> dict:
    """Returns the 50 %-pruned model's in-process speedup over the unpruned one per sequence length (batch 1), next
    to the speedup predicted from the unpruned model's measured share of time in attention."""
    from serving.benchmark.deployment import describe_deployment

    pruned_share = describe_deployment(repo, PRUNED50, 128).pruned_share
    sessions = {n: inprocess.session(onnx_path(repo, n)) for n in (BASELINE, PRUNED50)}
    rows = []
    for seq_len in SEQ_LENGTHS:
        inputs = {n: inprocess.feed(s, 1, seq_len) for n, s in sessions.items()}
        blocks = inprocess.timed_blocks({n: (lambda s=s, n=n: s.run(None, inputs[n])) for n, s in sessions.items()},
                                        rounds=5)
        share = inprocess.attention_share(onnx_path(repo, BASELINE), 1, seq_len)
        rows.append({"seq_len": seq_len, "speedup": inprocess.speedup(blocks[BASELINE], blocks[PRUNED50], 1).to_dict(),
                     "attention_share": share, "predicted": 1 / (1 - share * pruned_share),
                     "baseline_p50_ms": inprocess.block_stats(blocks[BASELINE], 1).p50})
    return {"pruned_share": pruned_share, "batch": 1, "rows": rows}


def tune_section(repo: Path) -> dict:
    """Runs the serving-settings search on the headline's INT8 model (config left unchanged); returns its result."""
    from serving.benchmark.tune import TuneSettings, tune

    return tune(TuneSettings(repo, INT8, batch=16), write=False).to_dict()


def served_section(models: BenchModels, repo: Path, tuned: dict, fused: bool, out: Path) -> dict:
    """Serves every step of the headline and the 50 %-pruned model, compares them through Triton; returns the
    waterfall at batch 16, p50 ratios at batch 1, speedups per batch size and each step's accuracy."""
    from benchmarks.waterfall import p50_ratio, read_journal, step_shares
    from serving.benchmark.tune import ServingSettings

    steps = [BASELINE, PRUNED80, DISTILLED, INT8]
    chosen = None
    if tuned["chosen"] != tuned["current"]:
        chosen = ServingSettings(**tuned["chosen"])
        export_variants({TUNED: (models.distilled80, "int8", {
            "optimize": fused, "options": chosen.options(DeploymentOptions(max_batch_size=max(BATCH_SIZES)))})},
            repo, max(BATCH_SIZES))
        steps.append(TUNED)
    names = [BASELINE, PRUNED50, *steps[1:]]
    compare_repository(repo, names, models.splits["eval"], out, ["make", "bench"], batch_sizes=BATCH_SIZES,
                       concurrency=[1], trials=SERVED_TRIALS, warmup=1, requests=6, examples=128, max_windows=1)
    report = json.loads((out / "report.json").read_text())
    records = read_journal(out)
    quality = {n: report["deployments"][n]["quality"] for n in names}
    return {"steps": steps, "trials": SERVED_TRIALS, "fusion_kept": fused, "tuned_settings": chosen and chosen.label,
            "heads": {n: [report["deployments"][n]["heads"], report["deployments"][n]["original_heads"]] for n in names},
            "quality": {n: {k: q[k] for k in ("value", "examples", "p_value") if k in q} for n, q in quality.items()},
            "waterfall_b16": step_shares(records, steps, 16), "waterfall_b1": step_shares(records, steps, 1),
            "p50_b1": {n: p50_ratio(records, BASELINE, n, 1) for n in names[1:]},
            "speedups": report["speedups"], "masked_accuracy_before_recovery": models.curve["points"][-1]["metric"],
            "report": str(out / "report.md")}


def memory_section(repo: Path) -> dict:
    """Returns each model's server resident memory (its backend stub process after a warm-up request at batch 16),
    its ONNX size and the bytes of weights its pruning removed."""
    from benchmarks.memory import served_memory

    return served_memory(repo, [BASELINE, PRUNED50, DISTILLED, INT8])


def peer_section(models: BenchModels, repo: Path) -> dict:
    """Returns ours / the peer's served throughput at batch 1 and 16 for the 50 % plan, and how their outputs differ."""
    from benchmarks.peer import PEER_REQUIREMENTS, compare_with_peer, export_peer, peer_python

    python = peer_python(Path("outputs/bench/peer-venv"))
    with tempfile.TemporaryDirectory(prefix="headprune-peer-export-") as folder:
        peer = export_peer(python, models.base, models.pruned50 / "head_plan.json", Path(folder))
        result = compare_with_peer(onnx_path(repo, PRUNED50), Path(peer["onnx"]))
    return {**result, "peer_versions": peer["versions"], "peer_requirements": PEER_REQUIREMENTS,
            "plan": "minilm_pruned50 (importance once, 36 of 72 heads)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(RUNNERS), help="comma-separated, of: " + ", ".join(RUNNERS))
    parser.add_argument("--render-only", action="store_true", help="only write docs/performance.md from the results")
    parser.add_argument("--repo", type=Path, default=Path("outputs/bench/repo"))
    parser.add_argument("--reports", type=Path, default=Path("reports/bench/suite"))
    args = parser.parse_args()
    from benchmarks.performance_doc import render

    if not args.render_only:
        run_sections([s for s in args.sections.split(",") if s], args.repo, args.reports)
    print(f"wrote {render(RESULTS, Path('docs'))}")


def _served(models: BenchModels, repo: Path, reports: Path) -> dict:
    fusion = RESULTS / "fusion.json"
    fused = fusion.exists() and fusion_kept(json.loads(fusion.read_text()))
    if fused:
        export_all(models, repo, fused=True)
    tune = RESULTS / "tune.json"
    tuned = json.loads(tune.read_text()) if tune.exists() else tune_section(repo)
    return served_section(models, repo, tuned, fused, reports / "served")


def _overhead(models: BenchModels, repo: Path, reports: Path) -> dict:
    from benchmarks.overhead import measure_overhead

    # Ten blocks per path: a few milliseconds of difference must outlast this shared machine's bursts of noise.
    return measure_overhead(repo, BASELINE, [1, 16], rounds=10)


def _ceiling(models: BenchModels, repo: Path, reports: Path) -> dict:
    from benchmarks.ceiling import measure_ceiling

    return measure_ceiling(models.base, models.scores, models.distilled80, onnx_path(repo, INT8))


def _queue(models: BenchModels, repo: Path, reports: Path) -> dict:
    from benchmarks.queue_policy import measure_queue_policy

    return measure_queue_policy(models.base)


def _scoring(models: BenchModels, repo: Path, reports: Path) -> dict:
    from benchmarks.scoring_cost import measure_scoring

    return measure_scoring()


def _gpu(models: BenchModels, repo: Path, reports: Path) -> dict:
    from benchmarks.gpu import gpu_section

    return gpu_section(models, reports / "gpu")


# Each section: (models, repository, reports folder) -> its JSON-ready results. `served` reads fusion's and tune's.
RUNNERS = {
    "fusion": lambda models, repo, reports: fusion_section(repo),
    "sequence": lambda models, repo, reports: sequence_section(repo),
    "ceiling": _ceiling,
    "tune": lambda models, repo, reports: tune_section(repo),
    "served": _served,
    "overhead": _overhead,
    "queue": _queue,
    "memory": lambda models, repo, reports: memory_section(repo),
    "peer": lambda models, repo, reports: peer_section(models, repo),
    "scoring": _scoring,
    "gpu": _gpu,
}


def run_sections(sections: list[str], repo: Path, reports: Path) -> None:
    """Runs the chosen sections in order, each saving its results as soon as it is done."""
    unknown = set(sections) - set(RUNNERS)
    if unknown:
        sys.exit(f"unknown sections {sorted(unknown)}: choose from {', '.join(RUNNERS)}")
    started = time.monotonic()
    models = prepare_models(default_cache())
    # A run that found every model cached keeps the record of what making them took (loading is always timed).
    made = any(seconds for step, seconds in models.seconds.items() if step != "assets_and_model")
    if made or not (RESULTS / "models.json").exists():
        save("models", {"seconds_per_step": models.seconds, "rescored_curve": models.curve}, started)
    export_all(models, repo, fused=False)
    for section in sections:
        began = time.monotonic()
        print(f"== {section}", flush=True)
        save(section, RUNNERS[section](models, repo, reports), began)


if __name__ == "__main__":
    main()
