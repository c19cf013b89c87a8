"""The levers the optimizer pulls and the tasks each applies to, as data: every stage and the report read this table.

A lever that does not apply to a task is skipped with its reason, which the report states.
"""

from __future__ import annotations

from dataclasses import dataclass

PRUNE, DISTILL, INT8 = "prune", "distill", "int8"


@dataclass(frozen=True)
class Lever:
    """One way to make a deployment faster (or to win back the quality another cost)."""

    name: str
    label: str
    # task -> why this lever does not apply to it; a task not named here can use the lever.
    not_for: dict[str, str]


LEVERS = (
    Lever(PRUNE, "prune heads (re-scored importance)", {}),
    Lever(
        DISTILL,
        "distil from the unpruned model",
        {
            "image-classification": "recovery by distillation is implemented for text models only",
        },
    ),
    Lever(
        INT8,
        "dynamic INT8 weights",
        {
            "image-classification": "INT8 export is implemented for text classifiers only",
        },
    ),
)


def lever(name: str) -> Lever:
    """Returns the lever called ``name``."""
    return next(item for item in LEVERS if item.name == name)


def applies(name: str, task: str) -> bool:
    """Returns whether lever ``name`` can be used on a model of ``task``."""
    return task not in lever(name).not_for


def not_applicable(task: str) -> dict[str, str]:
    """Returns {lever label: why it does not apply} for the levers ``task`` cannot use."""
    return {item.label: item.not_for[task] for item in LEVERS if task in item.not_for}
