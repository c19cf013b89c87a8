"""The paper's experiments, run with head masks on an in-process model.

Each returns JSON-ready data; the metric comes from an ``Evaluator`` (accuracy or BLEU).
"""

from __future__ import annotations

from collections.abc import Callable

from .inventory import HeadInventory
from .plan import HeadPlan, plan_from_scores
from .quality import Evaluator, in_points
from .scoring import HeadScores

Tick = Callable[[], None] | None


def single_head_ablation(evaluator: Evaluator, inventory: HeadInventory, tick: Tick = None) -> dict:
    """Returns the metric with each head removed alone, and its change from the unmasked model."""
    unmasked = evaluator()
    baseline = unmasked.value
    heads: dict[str, dict[str, list[float]]] = {}
    for layer in inventory.layers:
        deltas = []
        for head in layer.kept:
            deltas.append(evaluator({layer.kind.name: {layer.index: [head]}}).value - baseline)
            if tick:
                tick()
        heads.setdefault(layer.kind.name, {})[str(layer.index)] = deltas
    return {"metric": unmasked.metric, "baseline": baseline, "delta": heads}


def heads_changing(ablation: dict, points: float = 0.5) -> tuple[int, int]:
    """Returns (heads whose removal alone moves the metric by more than ``points``, all heads) of an ablation.

    Points are percentage points for accuracy and BLEU points for BLEU.
    """
    deltas = [d for layers in ablation["delta"].values() for row in layers.values() for d in row]
    return sum(abs(in_points(ablation["metric"], d)) > points for d in deltas), len(deltas)


def best_head_per_layer(evaluator: Evaluator, inventory: HeadInventory, tick: Tick = None) -> dict:
    """Returns, per layer, the metric when the layer keeps only its best single head (the paper's Table 2)."""
    unmasked = evaluator()
    baseline = unmasked.value
    layers: dict[str, dict[str, dict]] = {}
    for layer in inventory.layers:
        results = []
        for keep in layer.kept:
            others = [h for h in layer.kept if h != keep]
            results.append((evaluator({layer.kind.name: {layer.index: others}}).value, keep))
            if tick:
                tick()
        value, head = max(results)
        layers.setdefault(layer.kind.name, {})[str(layer.index)] = {
            "best_head": head, "metric": value, "delta": value - baseline,
        }
    return {"metric": unmasked.metric, "baseline": baseline, "layers": layers}


def pruning_curve(evaluator: Evaluator, inventory: HeadInventory, score: Callable[[dict | None], HeadScores],
                  step: float = 0.1, rescore: bool = False, per_type: bool = False, tick: Tick = None) -> dict:
    """Returns the metric at 0, step, 2*step, ... (< 1) of heads pruned by ascending importance.

    ``score(removed)`` returns importance with ``removed`` masked; it is called once,
    or before every step with ``rescore``. Pruning is iterative: each step removes
    more heads on top of the previous step's.
    """
    plan = HeadPlan()
    scores = score(None)
    points = []
    metric = None
    steps = int(round(1 / step))
    for i in range(steps):
        fraction = round(i * step, 6)
        if fraction >= 1:
            break
        if rescore and i > 0:
            scores = score(plan.removed)
        plan = plan_from_scores(scores.scores, fraction, per_type=per_type, already=plan)
        quality = evaluator(plan.removed)
        metric = quality.metric
        points.append({"fraction": fraction, "pruned_heads": plan.count(), "metric": quality.value,
                       "plan": plan.to_dict()})
        if tick:
            tick()
    return {"metric": metric, "rescore": rescore, "per_type": per_type, "step": step, "points": points}
