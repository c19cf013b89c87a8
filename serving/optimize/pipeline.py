"""`optimize` end to end: plans, search on dev, proof on test, install, report. Every step is a library call."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from exporter.atomic import refuse_existing
from exporter.errors import HeadpruneError
from exporter.progress import Phases, no_phases
from exporter.triton.layout import check_name
from serving.benchmark.compare import library_versions, machine
from serving.optimize.levers import not_applicable
from serving.optimize.proof import install, prove
from serving.optimize.report import headline, write_result
from serving.optimize.search import BASELINE, Candidate, OptimizeSettings, Search, choose, load_plans
from serving.optimize.workshop import Workshop

# The tasks optimize measures (exporter.tasks names them all).
OPTIMIZED_TASKS = ("classification", "translation", "language-modeling")


def optimize(
    settings: OptimizeSettings,
    *,
    resume: bool = False,
    overwrite: bool = False,
    phases: Phases = no_phases,
    say: Callable[[str], None] = lambda _: None,
    command: list[str] | None = None,
) -> Path:
    """Searches the levers on the dev split, proves the choice on the test split, installs it (and the unpruned
    model) into ``settings.repo`` and writes optimize.json/md into ``settings.out``; returns optimize.md's path.

    ``resume`` continues an interrupted run from what ``settings.out`` holds (the same settings only); ``overwrite``
    starts over. Raises HeadpruneError for settings, data or models that cannot work, before any long work."""
    from exporter.pruning.checkpoint import model_task

    settings.check()
    task = model_task(settings.model)
    if task not in OPTIMIZED_TASKS:
        raise HeadpruneError(
            f"'{settings.model}' is a {task} model: optimize measures {', '.join(OPTIMIZED_TASKS)} models",
            "optimize a text classifier, a translation model or a causal language model",
        )
    for name in (settings.name, f"{settings.name}_unpruned"):
        check_name(name)
    refuse_existing(settings.out, overwrite or resume, resumable=True)
    if overwrite and not resume:
        shutil.rmtree(settings.out, ignore_errors=True)
    settings.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    workshop = Workshop(settings, task, phases, say)
    for split in (settings.train, settings.dev, settings.test):
        workshop.examples(split, 1)  # a bad file (missing column, unknown label) fails now, not after an hour
    say(f"1/4 re-scored importance on {settings.train} up to {round(100 * settings.max_level)} % of heads")
    workshop.plans()
    workshop.make(BASELINE)
    say(f"2/4 search on {settings.dev} (budget {settings.budget_minutes:g} minutes)")
    search = Search(settings, task, workshop.make, phases, say, spent_before=workshop.seconds.get("plans", 0.0))
    search.start(resume)
    trials, stopped = search.run()
    best = choose(trials, settings.min_speedup)
    chosen = Candidate.from_dict(best["candidate"]) if best else None
    proof = None
    if chosen:
        say(f"3/4 proof on {settings.test}: {chosen.label} and each step towards it, {settings.test_trials} trials")
        proof = prove(settings, chosen, task, workshop.make, phases, command)
    else:
        say("3/4 no candidate kept the quality on dev and served faster: nothing to prove on the test split")
    say(f"4/4 installing into {settings.repo}")
    installed = install(settings, chosen, task, workshop.checkpoint, workshop.validation_texts)
    plans_data = load_plans(settings.out / "plans.json")[1]
    result = {
        "settings": {
            **settings.signature(),
            "repo": str(settings.repo),
            "name": settings.name,
            "budget_minutes": settings.budget_minutes,
            "test_trials": settings.test_trials,
            "min_speedup": settings.min_speedup,
        },
        "task": task,
        "environment": {"machine": machine(), "libraries": library_versions()},
        "levers_not_applicable": not_applicable(task),
        "search": {
            "trials": trials,
            "stopped_by_budget": stopped,
            "masked_quality": {str(row["level"]): row["masked_quality"] for row in plans_data["levels"]},
            "masked_metric": plans_data["metric"],
        },
        "chosen": chosen and chosen.to_dict(),
        "proof": proof,
        "installed": installed,
        "command": command,
        "seconds": round(time.monotonic() - started, 1),
    }
    result["headline"] = headline(result)
    path = write_result(result, settings.out)
    say(result["headline"])
    return path
