"""Pruning a checkpoint end to end: plan, shrink, save. Pruning a pruned checkpoint composes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from exporter.atomic import refuse_existing
from exporter.errors import HeadpruneError
from exporter.pruning.checkpoint import load_model, load_tokenizer, save_pruned
from exporter.pruning.inventory import build_inventory
from exporter.pruning.plan import HeadPlan, plan_from_scores
from exporter.pruning.scores import HeadScores
from exporter.pruning.shrink import apply_plan


@dataclass(frozen=True)
class PruneResult:
    """What pruning wrote: heads and parameters before and after."""

    out: Path
    heads: int
    original_heads: int
    parameters_before: int
    parameters_after: int

    def format(self) -> str:
        """Returns a one-line summary."""
        return (
            f"kept {self.heads} of {self.original_heads} heads; parameters {self.parameters_before:,} -> "
            f"{self.parameters_after:,}; wrote {self.out}"
        )


def prune_checkpoint(
    model_dir: str | Path,
    out: str | Path,
    *,
    plan: HeadPlan | None = None,
    scores: HeadScores | None = None,
    fraction: float | None = None,
    per_type: bool = False,
    min_heads_per_layer: int = 0,
    overwrite: bool = False,
) -> PruneResult:
    """Removes heads from the checkpoint in ``model_dir`` and writes the pruned checkpoint to ``out``.

    Give either an explicit ``plan`` or ``scores`` with a ``fraction`` of all original heads to
    remove. Indices always refer to the original model: a plan applied to a pruned checkpoint
    adds to the heads it already lacks (naming one of those is refused), and a fraction counts
    the heads already gone.
    """
    if (plan is None) == (scores is None):
        raise HeadpruneError("pruning needs exactly one of a plan or scores", "give `plan`, or `scores` and `fraction`")
    if scores is not None and fraction is None:
        raise HeadpruneError("pruning by scores needs the share of heads to remove", "give `fraction`, e.g. 0.3")
    refuse_existing(out, overwrite)
    model = load_model(model_dir)
    before = sum(p.numel() for p in model.parameters())
    already = HeadPlan.of_model(build_inventory(model))
    if plan is None:
        plan = plan_from_scores(
            scores, fraction, per_type=per_type, min_heads_per_layer=min_heads_per_layer, already=already
        )
    else:
        _refuse_removed_again(plan, already, model_dir)
    inventory = apply_plan(model, plan)
    folder = save_pruned(model, load_tokenizer(model_dir), out, source=model_dir, overwrite=overwrite)
    return PruneResult(
        folder,
        inventory.kept_head_count(),
        inventory.original_head_count(),
        before,
        sum(p.numel() for p in model.parameters()),
    )


def _refuse_removed_again(plan: HeadPlan, already: HeadPlan, model_dir: str | Path) -> None:
    # A plan naming heads the checkpoint has already lost was most likely written with the
    # pruned model's own head positions in mind, which would remove the wrong heads.
    again = plan.common(already)
    if again.count():
        kind, layers = next(iter(again.removed.items()))
        layer, heads = next(iter(layers.items()))
        raise HeadpruneError(
            f"the plan removes head(s) {heads} of layer {layer} of '{kind}', which the pruned checkpoint "
            f"'{model_dir}' no longer has (its head_plan.json removed them)",
            "head indices always refer to the original model: list only heads the checkpoint still has "
            "(kept_heads in 'headprune heads --json'), or prune the original model with the whole plan",
        )
