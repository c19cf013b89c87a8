"""Tasks are described once (exporter/tasks.py); every layer's per-task mapping covers the tasks it must."""

from __future__ import annotations

from dataclasses import replace

from exporter.data import OPTIONAL, REQUIRED, UNLABELLED
from exporter.evaluation.distill import TASK_OUTPUTS
from exporter.evaluation.metrics import LOWER_IS_BETTER
from exporter.evaluation.quality import METRIC_MEASURES, Evaluator
from exporter.pruning.scoring import LOSSES
from exporter.tasks import READINGS, TASKS, Task
from serving.benchmark.compare import QUALITY_MEASURES, Comparison
from serving.optimize.levers import DISTILL, LEVERS, applies
from serving.optimize.pipeline import OPTIMIZED_TASKS
from serving.optimize.proof import FRONT_END_OUTPUT


def uncovered(tasks: dict[str, Task]) -> list[str]:
    """Returns what a per-task mapping lacks, or names that are no task, for the task table ``tasks``."""
    measured = {name for name, task in tasks.items() if task.metric}
    problems = []
    if set(LOSSES) != set(tasks):
        problems.append(f"scoring losses: {sorted(set(LOSSES) ^ set(tasks))}")
    if set(QUALITY_MEASURES) != measured:
        problems.append(f"served quality: {sorted(set(QUALITY_MEASURES) ^ measured)}")
    missing_metrics = {tasks[name].metric for name in measured} - set(METRIC_MEASURES)
    if missing_metrics:
        problems.append(f"in-process quality: {sorted(missing_metrics)}")
    if not set(OPTIMIZED_TASKS) <= measured:
        problems.append(f"optimize: {sorted(set(OPTIMIZED_TASKS) - measured)}")
    distilled = {name for name in OPTIMIZED_TASKS if applies(DISTILL, name)}
    if set(TASK_OUTPUTS) != distilled:
        problems.append(f"distillation: {sorted(set(TASK_OUTPUTS) ^ distilled)}")
    for lever in LEVERS:
        if not set(lever.not_for) <= set(tasks):
            problems.append(f"lever {lever.name}: {sorted(set(lever.not_for) - set(tasks))}")
    if not set(FRONT_END_OUTPUT) <= set(OPTIMIZED_TASKS):
        problems.append(f"front end outputs: {sorted(set(FRONT_END_OUTPUT) - set(OPTIMIZED_TASKS))}")
    return problems


def test_every_per_task_mapping_covers_the_task_table():
    assert uncovered(TASKS) == []
    assert all(getattr(Comparison, method, None) for method in QUALITY_MEASURES.values())
    assert all(getattr(Evaluator, method, None) for method in METRIC_MEASURES.values())


def test_a_task_added_to_the_table_alone_is_reported_by_each_mapping_it_needs():
    added = {**TASKS, "summarization": Task("summarization", ("source", "target"), input="source", metric="rouge")}
    problems = uncovered(added)
    assert any(p.startswith("scoring losses: ['summarization']") for p in problems)
    assert any(p.startswith("served quality: ['summarization']") for p in problems)
    assert any(p.startswith("in-process quality: ['rouge']") for p in problems)
    # A task losing its metric is no longer one the optimizer may measure.
    assert any(
        p.startswith("optimize")
        for p in uncovered({**TASKS, "translation": replace(TASKS["translation"], metric=None)})
    )


def test_the_data_readings_and_metric_directions_come_from_the_table():
    for name, task in TASKS.items():
        assert (REQUIRED[name], OPTIONAL[name]) == (task.columns, task.optional)
        assert task.input in task.columns  # the field batches are grouped on is one an example has
    assert REQUIRED["translation"] == ("source", "target") and REQUIRED["texts"] == ("text",)
    assert UNLABELLED == {
        "classification": "texts",
        "regression": "texts",
        "translation": "sources",
        "language-modeling": "language-modeling",
    }
    assert set(UNLABELLED.values()) <= set(READINGS)
    assert LOWER_IS_BETTER == ("perplexity",)
