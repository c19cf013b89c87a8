"""The checkpoints `make bench` measures, made once and cached: the demo's fine-tuned MiniLM, its 50 %-pruned
model (importance scored once, as the demo prunes) and the headline's deployment, which `headprune optimize` chooses
on the scoring split and proves on the evaluation split (cached in its own folder, resumed on every run)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from exporter.data import read_examples
from exporter.digest import checkpoint_hash
from exporter.pruning.checkpoint import load_model, load_tokenizer
from exporter.pruning.prune import prune_checkpoint
from exporter.pruning.scores import HeadScores
from exporter.pruning.scoring import compute_importance
from serving.demo.pipeline import DemoBudget, demo_classifier
from serving.optimize.search import OptimizeSettings
from serving.progress import PhaseBars, console, progress_bar

BASELINE_LEVEL = 0.5  # the plain pruning the served-speedup section measures
OPTIMIZE_OUT, OPTIMIZE_REPO = Path("outputs/bench/optimize"), Path("outputs/bench/optimize-repo")
HEADLINE_NAME = "minilm_best"


@dataclass
class BenchModels:
    """Paths of the benchmark's checkpoints and data, the optimizer's result, and how long making them took (seconds;
    0 when cached). ``headline`` is the checkpoint of the optimizer's choice in ``headline_precision`` (the unpruned
    model in FP32 when nothing qualified)."""

    base: Path
    scores: Path
    pruned50: Path
    headline: Path
    headline_precision: str
    optimize: dict
    splits: dict[str, Path]
    seconds: dict


def _timed(seconds: dict, key: str, done: bool, make) -> None:
    started = time.monotonic()
    if not done:
        make()
    seconds[key] = 0.0 if done else round(time.monotonic() - started, 1)


def optimize_settings(base: Path, splits: dict[str, Path], budget: DemoBudget = DemoBudget()) -> OptimizeSettings:
    """Returns the optimizer's settings for the benchmark: the demo's splits (scoring = dev, evaluation = test),
    1 point of accuracy, throughput at batch 16."""
    return OptimizeSettings(
        model=base,
        train=splits["train"],
        dev=splits["score"],
        test=splits["eval"],
        repo=OPTIMIZE_REPO,
        name=HEADLINE_NAME,
        out=OPTIMIZE_OUT,
        max_drop=1.0,
        seed=budget.seed,
    )


def run_optimizer(settings: OptimizeSettings) -> tuple[dict, Path, str]:
    """Runs (or resumes) `headprune optimize`; returns (its optimize.json, the chosen checkpoint, its precision)."""
    import json

    from exporter.pruning.checkpoint import model_task
    from serving.optimize.pipeline import optimize
    from serving.optimize.workshop import Workshop

    bars = PhaseBars()
    try:
        optimize(
            settings,
            resume=True,
            phases=bars,
            command=["make", "bench"],
            say=lambda line: console.print(line, highlight=False, markup=False),
        )
    finally:
        bars.close()
    result = json.loads((settings.out / "optimize.json").read_text())
    chosen = result["chosen"]
    if not chosen:
        return result, settings.model, "fp32"
    workshop = Workshop(settings, model_task(settings.model))
    return result, workshop.checkpoint(chosen["level"], chosen["distill"]), chosen["precision"]


def prepare_models(cache: Path, budget: DemoBudget = DemoBudget(), headline: bool = True) -> BenchModels:
    """Returns the benchmark's checkpoints, fetching, training, scoring, pruning and optimizing only what the caches
    (``cache``/bench/<weights hash>, outputs/bench/optimize) lack; without ``headline`` the optimizer is not run
    (the unpruned model stands for its choice)."""
    seconds: dict[str, float] = {}
    started = time.monotonic()
    bars = PhaseBars()
    try:
        base, splits = demo_classifier(cache, budget, bars)
    finally:
        bars.close()
    seconds["assets_and_model"] = round(time.monotonic() - started, 1)
    work = cache / "bench" / f"{checkpoint_hash(base)[:12]}-seed{budget.seed}"
    work.mkdir(parents=True, exist_ok=True)

    def score() -> None:
        model, tokenizer = load_model(base), load_tokenizer(base)
        examples = read_examples(splits["score"], "classification")
        with progress_bar("importance scores", len(examples)) as advance:
            compute_importance(model, tokenizer, examples, progress=advance).save(work / "scores.json")

    _timed(seconds, "scores", (work / "scores.json").exists(), score)
    pruned50 = work / "minilm_pruned50"
    _timed(
        seconds,
        "prune",
        (pruned50 / "config.json").exists(),
        lambda: prune_checkpoint(
            base, pruned50, scores=HeadScores.load(work / "scores.json"), fraction=BASELINE_LEVEL, overwrite=True
        ),
    )
    result, chosen, precision = {}, base, "fp32"
    if headline:
        began = time.monotonic()
        result, chosen, precision = run_optimizer(optimize_settings(base, splits, budget))
        seconds["optimize"] = round(time.monotonic() - began, 1)
    return BenchModels(base, work / "scores.json", pruned50, chosen, precision, result, splits, seconds)
