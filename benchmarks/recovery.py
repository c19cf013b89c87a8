"""Recovery levers after pruning: distillation and per-head rescaling, measured through Triton.

Prunes the demo's fine-tuned MiniLM at each level with the demo's importance scores,
recovers each pruned model by distillation (one epoch over the demo's training texts,
teacher = the unpruned model) and by rescaling (256 scoring texts), adds the distilled
model of the first level in INT8, exports everything and runs ``compare`` against the
unpruned FP32 model: accuracy through the served text front end on the demo's
evaluation split (paired McNemar test), throughput at batch 16 with bootstrap
intervals. Writes reports/bench/recovery/ (report.json, report.md, plots) and keeps the
recovered checkpoints in outputs/bench/recovery/.

Run from the repository root after ``make demo`` (about 25 minutes on 2 cores):
    .venv/bin/python -m benchmarks.recovery [--levels 50,70]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.served import compare_served
from exporter.data import read_examples
from exporter.evaluation.distill import distill
from exporter.evaluation.rescale import recover_by_rescaling
from exporter.evaluation.settings import RESCALE_EXAMPLES
from exporter.pruning.prune import prune_checkpoint
from exporter.pruning.scores import HeadScores
from serving.demo.assets import default_cache
from serving.demo.pipeline import DemoBudget, finetuned_model_folder, prepare_data
from serving.progress import progress_bar


def recovered_models(
    base: Path, scores: Path, splits: dict[str, Path], levels: list[int], out: Path
) -> dict[str, tuple]:
    """Returns {deployment name: (checkpoint folder, precision)}: each level pruned, distilled and rescaled, and
    the first level's distilled model in INT8 as well."""
    train = read_examples(splits["train"], "classification")
    sample = read_examples(splits["score"], "classification")[:RESCALE_EXAMPLES]
    models = {"minilm": (base, "fp32")}
    for level in levels:
        name = f"minilm_pruned{level}"
        pruned = prune_checkpoint(
            base, out / name, scores=HeadScores.load(scores), fraction=level / 100, overwrite=True
        ).out
        with progress_bar(f"distilling {name} (examples)", len(train)) as advance:
            distill(pruned, base, train, out / f"{name}_distilled", overwrite=True, progress=advance)
        recover_by_rescaling(pruned, base, sample, out / f"{name}_rescaled", overwrite=True)
        models |= {
            name: (pruned, "fp32"),
            f"{name}_distilled": (out / f"{name}_distilled", "fp32"),
            f"{name}_rescaled": (out / f"{name}_rescaled", "fp32"),
        }
    first = f"minilm_pruned{levels[0]}_distilled"
    models[f"{first}_int8"] = (models[first][0], "int8")
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="50,70", help="shares of heads to prune (percent)")
    parser.add_argument("--scores", type=Path, default=Path("outputs/demo/scores.json"), help="`make demo`'s scores")
    parser.add_argument("--batch-sizes", default="16")
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--models", type=Path, default=Path("outputs/bench/recovery"))
    parser.add_argument("--out", type=Path, default=Path("reports/bench/recovery"))
    args = parser.parse_args()
    cache, budget = default_cache(), DemoBudget()
    base = finetuned_model_folder(cache, budget)
    for path in (base, args.scores):
        if not path.exists():
            raise SystemExit(f"'{path}' does not exist: run `make demo` first")
    splits = prepare_data(cache, budget)
    models = recovered_models(base, args.scores, splits, [int(x) for x in args.levels.split(",")], args.models)
    path = compare_served(
        models,
        splits["eval"],
        args.out,
        [int(b) for b in args.batch_sizes.split(",")],
        args.trials,
        ["python", "-m", "benchmarks.recovery"],
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
