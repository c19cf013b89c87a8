"""The tasks headprune handles, described once as data, like model families: what a data file holds for each, the
field a model reads, the quality headprune measures and whether it is higher when better, and whether the model
answers with classes.

Every layer reads this table; a layer whose behaviour differs per task keeps one mapping from task name to that
behaviour, and tests/test_tasks.py checks that each mapping covers the tasks it must.
"""

from __future__ import annotations

from dataclasses import dataclass

# Readings of a data file that are not tasks: a classifier's texts or a translation model's sources alone (recovery
# by distillation needs neither labels nor targets).
TEXTS_ONLY, SOURCES_ONLY = "texts", "sources"


@dataclass(frozen=True)
class Task:
    """One task: a model's job, as every stage needs to know it."""

    name: str
    columns: tuple[str, ...]  # the data file's roles an example needs
    optional: tuple[str, ...] = ()
    input: str = "text"  # the role the model reads (batches are grouped by its length)
    unlabelled: str | None = None  # how recovery reads a file of this task: a task or reading needing no labels
    metric: str | None = None  # the quality headprune measures; None: not measured
    higher_is_better: bool = True
    labels: bool = False  # the model answers with classes (id2label)


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "classification", ("text", "label"), ("text_pair",), unlabelled=TEXTS_ONLY, metric="accuracy", labels=True
        ),
        # A single-output head: scored with squared error, its quality left to the user.
        Task("regression", ("text", "label"), ("text_pair",), unlabelled=TEXTS_ONLY),
        Task(
            "translation",
            ("source", "target"),
            input="source",
            unlabelled=SOURCES_ONLY,
            metric="bleu",
        ),
        Task(
            "language-modeling",
            ("text",),
            unlabelled="language-modeling",
            metric="perplexity",
            higher_is_better=False,
        ),
        Task("image-classification", ("image", "label"), input="image", metric="accuracy", labels=True),
    )
}
# What each reading of a data file needs and may have: the tasks', and the label-free readings'.
READINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    **{name: (task.columns, task.optional) for name, task in TASKS.items()},
    TEXTS_ONLY: (("text",), ("text_pair",)),
    SOURCES_ONLY: (("source",), ()),
}
