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
from pathlib import Path

from benchmarks.served import compare_served
from serving.demo.assets import default_cache
from serving.demo.pipeline import DemoBudget, finetuned_model_folder, prepare_data


def variants(base: Path, pruned: dict[str, Path]) -> dict[str, tuple[Path, str]]:
    """Returns {deployment name: (checkpoint, precision)}: ``minilm`` (the baseline, FP32), ``minilm_int8`` and each
    pruned checkpoint in both precisions."""
    models = {}
    for name, folder in {"minilm": base, **pruned}.items():
        models |= {name: (folder, "fp32"), f"{name}_int8": (folder, "int8")}
    return models


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
    pruned = {
        f"minilm_pruned{level}": args.pruned / f"minilm_pruned{level}" for level in args.levels.split(",") if level
    }
    for folder in (base, *pruned.values()):
        if not folder.is_dir():
            raise SystemExit(f"'{folder}' does not exist: run `make demo` first")
    path = compare_served(
        variants(base, pruned),
        prepare_data(cache, budget)["eval"],
        args.out,
        [int(b) for b in args.batch_sizes.split(",")],
        args.trials,
        ["python", "-m", "benchmarks.quantization"],
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
