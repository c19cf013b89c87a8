"""The paper's experiments, run with head masks on an in-process model.

Each returns a typed result (``exporter.evaluation.results``); the metric comes from an
``Evaluator`` (accuracy, BLEU or perplexity).
Every change from the unmasked model carries a paired test's p-value (McNemar for
accuracy, paired bootstrap for BLEU and perplexity) on the same examples.
"""

from __future__ import annotations

from collections.abc import Callable

from exporter.evaluation.metrics import gain
from exporter.evaluation.quality import Evaluator
from exporter.evaluation.results import Ablation, BestHeads, PruningCurve
from exporter.evaluation.significance import ALPHA, paired_p_value
from exporter.progress import Advance, no_progress
from exporter.pruning.inventory import HeadInventory
from exporter.pruning.plan import HeadPlan, plan_from_scores
from exporter.pruning.scores import HeadScores


def single_head_ablation(evaluator: Evaluator, inventory: HeadInventory, progress: Advance = no_progress) -> Ablation:
    """Returns the metric with each head removed alone: its change from the unmasked model and the p-value."""
    unmasked = evaluator()
    deltas: dict[str, dict[str, list[float]]] = {}
    p_values: dict[str, dict[str, list[float]]] = {}
    for layer in inventory.layers:
        row, p_row = [], []
        for head in layer.kept:
            masked = evaluator(HeadPlan({layer.attention_type.name: {layer.index: [head]}}))
            row.append(masked.value - unmasked.value)
            p_row.append(paired_p_value(unmasked.metric, unmasked.per_example, masked.per_example))
            progress(1)
        deltas.setdefault(layer.attention_type.name, {})[str(layer.index)] = row
        p_values.setdefault(layer.attention_type.name, {})[str(layer.index)] = p_row
    return Ablation(unmasked.metric, unmasked.value, unmasked.examples, ALPHA, deltas, p_values)


def best_head_per_layer(evaluator: Evaluator, inventory: HeadInventory, progress: Advance = no_progress) -> BestHeads:
    """Returns, per layer, the metric when the layer keeps only its best single head (the paper's Table 2),
    with the change's p-value."""
    unmasked = evaluator()
    layers: dict[str, dict[str, dict]] = {}
    for layer in inventory.layers:
        results = []
        for keep in layer.kept:
            others = [h for h in layer.kept if h != keep]
            results.append((evaluator(HeadPlan({layer.attention_type.name: {layer.index: others}})), keep))
            progress(1)
        quality, head = max(results, key=lambda pair: (gain(unmasked.metric, unmasked.value, pair[0].value), pair[1]))
        layers.setdefault(layer.attention_type.name, {})[str(layer.index)] = {
            "best_head": head,
            "metric": quality.value,
            "delta": quality.value - unmasked.value,
            "p_value": paired_p_value(unmasked.metric, unmasked.per_example, quality.per_example),
        }
    return BestHeads(unmasked.metric, unmasked.value, unmasked.examples, ALPHA, layers)


def curve_fractions(
    step: float, inventory: HeadInventory, per_type: bool = False, only_type: str | None = None
) -> list[float]:
    """Returns the shares of heads a pruning curve visits: 0, step, 2 step, ... and, last, the largest
    share that leaves at least one head (in each attention type with ``per_type``, in ``only_type`` if given)."""
    per_kind = {
        kind: sum(layer.original_heads for layer in inventory.of_type(kind)) for kind in inventory.attention_types
    }
    if only_type is not None:
        sizes = [per_kind[only_type]]
    else:
        sizes = [size for size in per_kind.values() if size] if per_type else [inventory.original_head_count()]
    last = min((size - 1) / size for size in sizes)
    fractions = []
    i = 0
    while i * step < last - 1e-9:
        fractions.append(round(i * step, 6))
        i += 1
    # The last regular step may already prune as many heads as the end point does.
    if any(round(fractions[-1] * size) < round(last * size) for size in sizes):
        fractions.append(last)
    return fractions


def pruning_curve(
    evaluator: Evaluator,
    inventory: HeadInventory,
    score: Callable[[HeadPlan | None], HeadScores],
    step: float = 0.1,
    rescore: bool = False,
    per_type: bool = False,
    only_type: str | None = None,
    progress: Advance = no_progress,
    up_to: float = 1.0,
) -> PruningCurve:
    """Returns the metric at each of ``curve_fractions`` of heads (those up to ``up_to``) pruned by ascending
    importance.

    ``score(removed)`` returns importance with ``removed`` masked; it is called once,
    or before every step with ``rescore``. Pruning is iterative: each step removes
    more heads on top of the previous step's. With ``only_type`` only that attention
    type's heads are pruned (the fraction is of that type's heads).
    """
    plan = HeadPlan()
    scores = score(None)
    points = []
    metric = None
    fractions = [f for f in curve_fractions(step, inventory, per_type, only_type) if f <= up_to + 1e-9]
    for i, fraction in enumerate(fractions):
        if rescore and i > 0:
            scores = score(plan)
        ranked = {only_type: scores.scores[only_type]} if only_type else scores.scores
        plan = plan_from_scores(ranked, fraction, per_type=per_type, already=plan)
        quality = evaluator(plan)
        metric = quality.metric
        points.append(
            {"fraction": fraction, "pruned_heads": plan.count(), "metric": quality.value, "plan": plan.to_dict()}
        )
        progress(1)
    return PruningCurve(metric, rescore, per_type, step, points, only_type=only_type)
