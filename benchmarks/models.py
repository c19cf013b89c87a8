"""The checkpoints `make bench` measures, made once and cached: the demo's fine-tuned MiniLM, its 50 %-pruned
model (importance scored once, as the demo prunes) and the headline's model (heads pruned by re-scored
importance, then recovered by distillation from the unpruned model)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from exporter.atomic import atomic_write_json
from exporter.data import read_examples
from exporter.digest import checkpoint_hash
from exporter.evaluation.distill import distill
from exporter.evaluation.experiments import pruning_curve
from exporter.evaluation.quality import Evaluator
from exporter.pruning.checkpoint import load_model, load_tokenizer
from exporter.pruning.inventory import build_inventory
from exporter.pruning.plan import HeadPlan
from exporter.pruning.prune import prune_checkpoint
from exporter.pruning.scores import HeadScores
from exporter.pruning.scoring import compute_importance
from serving.demo.pipeline import DemoBudget, demo_classifier
from serving.progress import PhaseBars, progress_bar

HEADLINE_LEVEL = 0.8  # share of heads the headline model prunes (re-scored, then distilled)
BASELINE_LEVEL = 0.5  # the plain pruning the served-speedup section measures


@dataclass
class BenchModels:
    """Paths of the benchmark's checkpoints and data, and how long making them took (seconds; 0 when cached)."""

    base: Path
    scores: Path
    pruned50: Path
    pruned80: Path
    distilled80: Path
    splits: dict[str, Path]
    curve: dict
    seconds: dict


def _timed(seconds: dict, key: str, done: bool, make) -> None:
    started = time.monotonic()
    if not done:
        make()
    seconds[key] = 0.0 if done else round(time.monotonic() - started, 1)


def prepare_models(cache: Path, budget: DemoBudget = DemoBudget(), level: float = HEADLINE_LEVEL) -> BenchModels:
    """Returns the benchmark's checkpoints, fetching, training, scoring, pruning and distilling only what the cache
    (``cache``/bench/<weights hash>) lacks."""
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
    model, tokenizer = load_model(base), load_tokenizer(base)
    score_examples = read_examples(splits["score"], "classification")

    def score() -> None:
        with progress_bar("importance scores", len(score_examples)) as advance:
            compute_importance(model, tokenizer, score_examples, progress=advance).save(work / "scores.json")

    _timed(seconds, "scores", (work / "scores.json").exists(), score)
    scores = HeadScores.load(work / "scores.json")
    curve_file = work / f"rescored_curve_{round(100 * level)}.json"

    def curve() -> None:
        evaluator = Evaluator(model, tokenizer, read_examples(splits["eval"], "classification"), replay=True)
        rescore = score_examples[: budget.rescore_examples]

        def scored(removed):
            return scores if removed is None else compute_importance(model, tokenizer, rescore, removed=removed)

        steps = round(level / budget.curve_step) + 1
        with progress_bar(f"re-scored pruning to {round(100 * level)} % (masked accuracy)", steps) as advance:
            result = pruning_curve(evaluator, build_inventory(model), scored, budget.curve_step, rescore=True,
                                   progress=advance, up_to=level)
        atomic_write_json(curve_file, result.to_dict())

    _timed(seconds, "rescored_plan", curve_file.exists(), curve)
    rescored = json.loads(curve_file.read_text())
    plan = HeadPlan.from_dict(rescored["points"][-1]["plan"])
    paths = {"pruned50": work / "minilm_pruned50", "pruned80": work / f"minilm_pruned{round(100 * level)}",
             "distilled80": work / f"minilm_pruned{round(100 * level)}_distilled"}

    def prune() -> None:
        prune_checkpoint(base, paths["pruned50"], scores=scores, fraction=BASELINE_LEVEL, overwrite=True)
        prune_checkpoint(base, paths["pruned80"], plan=plan, overwrite=True)

    _timed(seconds, "prune", all((paths[k] / "config.json").exists() for k in ("pruned50", "pruned80")), prune)
    train = read_examples(splits["train"], "classification")

    def recover() -> None:
        with progress_bar("distilling the headline model (examples)", len(train)) as advance:
            distill(paths["pruned80"], base, train, paths["distilled80"], overwrite=True, progress=advance)

    _timed(seconds, "distill", (paths["distilled80"] / "recovery.json").exists(), recover)
    return BenchModels(base, work / "scores.json", paths["pruned50"], paths["pruned80"], paths["distilled80"], splits, rescored, seconds)
