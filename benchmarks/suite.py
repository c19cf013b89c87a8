"""`make bench`: the performance benchmark, from the demo's real MiniLM to docs/performance.md.

Sections (each writes benchmarks/results/<section>.json atomically, with the machine and
library versions):
  optimize   the headline: `headprune optimize` on the demo's MiniLM (chosen on the scoring split, proven on the
             evaluation split through Triton: the waterfall, end to end, the search's trials)
  fusion     attention fusion (--optimize) vs plain, unpruned, 50 % pruned and the headline's model, in process
  sequence   50 %-pruned vs unpruned over sequence lengths 32-512, in process, next to the
             speedup predicted from the measured share of time in attention
  ceiling    the most heads and INT8 can give on this CPU: INT8 alone, the headline's model and every head
             but one removed (FP32, INT8) vs the unpruned model, in process, next to the CPU's 8-bit instructions
  tune       `headprune tune` on the headline's model
  served     the 50 %-pruned speedup over batch sizes, through Triton, next to the FLOP prediction
  overhead   Triton vs in-process p50, HTTP and gRPC, and a second load generator
  queue      the unpruned model exported with and without a queue limit, served side by side (Triton 2.51's
             batcher holds requests 500 ms under a limit)
  memory     server resident memory per model, ONNX sizes, bytes of weights removed
  peer       the 50 % plan applied by transformers 4.x prune_heads and exported by Optimum (O2), in its
             own virtual environment, served next to ours
  scoring    importance scoring vs a plain forward+backward pass: time and peak memory
  gpu        the served comparison with CUDA instances, when a GPU is present

Run: make bench (the sections took about 28 minutes on 2 cores from a fresh clone; the optimizer's first run adds
its own, cached after),
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
from serving.benchmark.compare import library_versions, machine
from serving.demo.assets import default_cache

RESULTS = Path("benchmarks/results")
BATCH_SIZES = [1, 4, 16, 64]
SERVED_TRIALS = 5
SEQ_LENGTHS = [32, 64, 128, 256, 512]
BASELINE, PRUNED50 = "minilm", "minilm_pruned50"
HEADLINE, HEADLINE_FP32 = "minilm_best", "minilm_best_fp32"  # the optimizer's choice, and its checkpoint in FP32


def save(section: str, data: dict, started: float) -> Path:
    """Writes one section's results (with the environment and its duration); returns the path."""
    return atomic_write_json(
        RESULTS / f"{section}.json",
        {
            "section": section,
            "environment": {**machine(), "libraries": library_versions()},
            "seconds": round(time.monotonic() - started, 1),
            **data,
        },
    )


def export_all(models: BenchModels, repo: Path, fused: bool) -> None:
    """Exports every deployment the sections measure into a fresh ``repo``."""
    shutil.rmtree(repo, ignore_errors=True)
    export_variants(
        {
            BASELINE: (models.base, "fp32"),
            f"{BASELINE}_fused": (models.base, "fp32", {"optimize": True}),
            PRUNED50: (models.pruned50, "fp32"),
            f"{PRUNED50}_fused": (models.pruned50, "fp32", {"optimize": True}),
            HEADLINE_FP32: (models.headline, "fp32"),
            f"{HEADLINE_FP32}_fused": (models.headline, "fp32", {"optimize": True}),
            HEADLINE: (models.headline, models.headline_precision, {"optimize": fused}),
        },
        repo,
        max(BATCH_SIZES),
    )


def fusion_section(repo: Path) -> dict:
    """Returns fused / plain throughput in process for each model at batch 1 and 16."""
    rows = []
    for name in (BASELINE, PRUNED50, HEADLINE_FP32):
        sessions = {
            "plain": inprocess.session(onnx_path(repo, name)),
            "fused": inprocess.session(onnx_path(repo, f"{name}_fused")),
        }
        for batch in (1, 16):
            inputs = {k: inprocess.feed(s, batch, 128) for k, s in sessions.items()}
            blocks = inprocess.timed_blocks(
                {k: (lambda s=s, k=k: s.run(None, inputs[k])) for k, s in sessions.items()}, rounds=5
            )
            rows.append(
                {
                    "model": name,
                    "batch": batch,
                    "speedup": inprocess.speedup(blocks["plain"], blocks["fused"], batch).to_dict(),
                }
            )
    return {"rows": rows, "note": "fused graphs are validated against PyTorch within 1e-4 at export"}


def fusion_kept(fusion: dict) -> bool:
    """Returns whether fusion measured significantly faster on the headline's model at batch 16."""
    row = next((r for r in fusion["rows"] if r["model"] == HEADLINE_FP32 and r["batch"] == 16), None)
    if row is None:  # measured before the headline came from the optimizer
        return False
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
        blocks = inprocess.timed_blocks(
            {n: (lambda s=s, n=n: s.run(None, inputs[n])) for n, s in sessions.items()}, rounds=5
        )
        share = inprocess.attention_share(onnx_path(repo, BASELINE), 1, seq_len)
        rows.append(
            {
                "seq_len": seq_len,
                "speedup": inprocess.speedup(blocks[BASELINE], blocks[PRUNED50], 1).to_dict(),
                "attention_share": share,
                "predicted": 1 / (1 - share * pruned_share),
                "baseline_p50_ms": inprocess.block_stats(blocks[BASELINE], 1).p50,
            }
        )
    return {"pruned_share": pruned_share, "batch": 1, "rows": rows}


def tune_section(repo: Path) -> dict:
    """Runs the serving-settings search on the headline's model (config left unchanged); returns its result."""
    from serving.benchmark.tune import TuneSettings, tune

    return tune(TuneSettings(repo, HEADLINE, batch=16), write=False).to_dict()


def served_section(models: BenchModels, repo: Path, out: Path) -> dict:
    """Serves the unpruned and the 50 %-pruned model and compares them through Triton at every batch size; returns
    the speedups (next to the FLOP prediction) and each one's accuracy."""
    names = [BASELINE, PRUNED50]
    compare_repository(
        repo,
        names,
        models.splits["eval"],
        out,
        ["make", "bench"],
        batch_sizes=BATCH_SIZES,
        concurrency=[1],
        trials=SERVED_TRIALS,
        warmup=1,
        requests=6,
        examples=128,
        max_windows=1,
    )
    report = json.loads((out / "report.json").read_text())
    quality = {n: report["deployments"][n]["quality"] for n in names}
    return {
        "trials": SERVED_TRIALS,
        "heads": {n: [report["deployments"][n]["heads"], report["deployments"][n]["original_heads"]] for n in names},
        "quality": {
            n: {k: q[k] for k in ("value", "examples", "p_value", "gain_low", "gain_high") if k in q}
            for n, q in quality.items()
        },
        "speedups": report["speedups"],
        "report": str(out / "report.md"),
    }


def memory_section(repo: Path) -> dict:
    """Returns each model's server resident memory (its backend stub process after a warm-up request at batch 16),
    its ONNX size and the bytes of weights its pruning removed."""
    from benchmarks.memory import served_memory

    return served_memory(repo, [BASELINE, PRUNED50, HEADLINE_FP32, HEADLINE])


def peer_section(models: BenchModels, repo: Path) -> dict:
    """Returns ours / the peer's served throughput at batch 1 and 16 for the 50 % plan, and how their outputs differ."""
    from benchmarks.peer import PEER_REQUIREMENTS, compare_with_peer, export_peer, peer_python

    python = peer_python(Path("outputs/bench/peer-venv"))
    with tempfile.TemporaryDirectory(prefix="headprune-peer-export-") as folder:
        peer = export_peer(python, models.base, models.pruned50 / "head_plan.json", Path(folder))
        result = compare_with_peer(onnx_path(repo, PRUNED50), Path(peer["onnx"]))
    return {
        **result,
        "peer_versions": peer["versions"],
        "peer_requirements": PEER_REQUIREMENTS,
        "plan": "minilm_pruned50 (importance once, 36 of 72 heads)",
    }


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


def _optimize(models: BenchModels, repo: Path, reports: Path) -> dict:
    # The optimizer ran (or resumed) while the models were prepared: its result is the section.
    return {**models.optimize, "optimize_seconds_this_run": models.seconds.get("optimize")}


def _overhead(models: BenchModels, repo: Path, reports: Path) -> dict:
    from benchmarks.overhead import measure_overhead

    # Ten blocks per path: a few milliseconds of difference must outlast this shared machine's bursts of noise.
    return measure_overhead(repo, BASELINE, [1, 16], rounds=10)


def _ceiling(models: BenchModels, repo: Path, reports: Path) -> dict:
    from benchmarks.ceiling import measure_ceiling

    return measure_ceiling(models.base, models.scores, models.headline, onnx_path(repo, HEADLINE))


def _queue(models: BenchModels, repo: Path, reports: Path) -> dict:
    from benchmarks.queue_policy import measure_queue_policy

    return measure_queue_policy(models.base)


def _scoring(models: BenchModels, repo: Path, reports: Path) -> dict:
    from benchmarks.scoring_cost import measure_scoring

    return measure_scoring()


def _gpu(models: BenchModels, repo: Path, reports: Path) -> dict:
    from benchmarks.gpu import gpu_section

    return gpu_section(models, reports / "gpu")


# Each section: (models, repository, reports folder) -> its JSON-ready results.
RUNNERS = {
    "optimize": _optimize,
    "fusion": lambda models, repo, reports: fusion_section(repo),
    "sequence": lambda models, repo, reports: sequence_section(repo),
    "ceiling": _ceiling,
    "tune": lambda models, repo, reports: tune_section(repo),
    "served": lambda models, repo, reports: served_section(models, repo, reports / "served"),
    "overhead": _overhead,
    "queue": _queue,
    "memory": lambda models, repo, reports: memory_section(repo),
    "peer": lambda models, repo, reports: peer_section(models, repo),
    "scoring": _scoring,
    "gpu": _gpu,
}


# Sections that measure the optimizer's choice: they need it made (or found in its cache).
HEADLINE_SECTIONS = {"fusion", "ceiling", "tune", "memory", "gpu"}


def run_sections(sections: list[str], repo: Path, reports: Path) -> None:
    """Runs the chosen sections in order, each saving its results as soon as it is done."""
    unknown = set(sections) - set(RUNNERS)
    if unknown:
        sys.exit(f"unknown sections {sorted(unknown)}: choose from {', '.join(RUNNERS)}")
    started = time.monotonic()
    models = prepare_models(default_cache(), headline="optimize" in sections or bool(set(sections) & HEADLINE_SECTIONS))
    # A run that found every model cached keeps the record of what making them took (loading is always timed).
    made = any(seconds for step, seconds in models.seconds.items() if step != "assets_and_model")
    if made or not (RESULTS / "models.json").exists():
        save("models", {"seconds_per_step": models.seconds}, started)
    fusion = RESULTS / "fusion.json"
    export_all(models, repo, fused=fusion.exists() and fusion_kept(json.loads(fusion.read_text())))
    for section in sections:
        began = time.monotonic()
        print(f"== {section}", flush=True)
        save(section, RUNNERS[section](models, repo, reports), began)


if __name__ == "__main__":
    main()
