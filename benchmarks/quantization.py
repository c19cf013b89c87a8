"""Quantization lever: dynamic INT8 against FP32, unpruned and pruned, served by Triton side by side.

Exports the demo's fine-tuned MiniLM and its pruned checkpoints (``make demo`` made them)
in FP32 and INT8 into one repository and runs ``compare`` on them: accuracy through the
served text front end on the demo's evaluation split (paired McNemar test against the
baseline), throughput per batch size in interleaved trials with bootstrap intervals. The
baseline is the unpruned model exported plainly (FP32). Writes reports/bench/quantization/
(report.json, report.md, plots).

Run from the repository root after ``make demo``:
    .venv/bin/python -m benchmarks.quantization [--levels 30,50] [--trials 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from exporter.triton.config import DeploymentOptions
from exporter.triton.repository import export_to_repository
from serving.benchmark.compare import CompareSettings
from serving.demo.assets import default_cache
from serving.demo.pipeline import DemoBudget, finetuned_model_folder, prepare_data
from serving.progress import PhaseBars
from serving.report.runner import run_comparison


def export_variants(base: Path, pruned: dict[str, Path], repo: Path, max_batch_size: int) -> list[str]:
    """Exports ``base`` (FP32 as ``minilm``, INT8 as ``minilm_int8``) and each pruned checkpoint in both precisions;
    returns the candidates' names (all but ``minilm``)."""
    options = DeploymentOptions(max_batch_size=max_batch_size)
    names = []
    for name, folder in {"minilm": base, **pruned}.items():
        for precision in ("fp32", "int8"):
            served = name if precision == "fp32" else f"{name}_int8"
            export_to_repository(folder, repo, served, options=options, precision=precision)
            names.append(served)
    return names[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="30,50", help="pruned checkpoints of `make demo` to include (percent)")
    parser.add_argument("--pruned", type=Path, default=Path("outputs/demo"), help="where `make demo` wrote them")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("reports/bench/quantization"))
    args = parser.parse_args()
    cache, budget = default_cache(), DemoBudget()
    base = finetuned_model_folder(cache, budget)
    pruned = {f"minilm_pruned{level}": args.pruned / f"minilm_pruned{level}" for level in args.levels.split(",") if level}
    for folder in (base, *pruned.values()):
        if not folder.is_dir():
            raise SystemExit(f"'{folder}' does not exist: run `make demo` first")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="headprune-int8-") as folder:
        repo = Path(folder) / "repo"
        candidates = export_variants(base, pruned, repo, max(batch_sizes))
        settings = CompareSettings(repo=repo, baseline="minilm", candidates=candidates,
                                   data=prepare_data(cache, budget)["eval"], out=args.out, max_drop=1.0,
                                   batch_sizes=batch_sizes, concurrency=[1], trials=args.trials,
                                   seed=budget.seed)
        bars = PhaseBars()
        try:
            path = run_comparison(settings, overwrite=True, phases=bars,
                                  command=["python", "-m", "benchmarks.quantization"])
        finally:
            bars.close()
    print(path.read_text())


if __name__ == "__main__":
    main()
