"""The proof: the chosen candidate and each step towards it, measured once on the held-out test split through
Triton, with paired intervals for quality and speed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from exporter.progress import Phases, no_phases
from exporter.tasks import TASKS
from serving.benchmark.compare import CompareSettings
from serving.benchmark.journal import Journal
from serving.optimize.search import (
    BASELINE,
    Candidate,
    OptimizeSettings,
    non_inferior,
    quality_change,
    serving,
    trial_speedup,
)


def test_settings(settings: OptimizeSettings, steps: list[Candidate]) -> CompareSettings:
    """Returns the comparison of ``steps`` (the first is the baseline) on the test split: batch 1 and the
    objective's batch size, ``test_trials`` interleaved trials."""
    batch = settings.batch_size
    return CompareSettings(
        repo=settings.out / "repo",
        baseline=steps[0].name,
        candidates=[s.name for s in steps[1:]],
        data=settings.test,
        out=settings.out / "test",
        batch_sizes=sorted({1, batch}),
        concurrency=[1],
        seq_len=settings.seq_len,
        trials=settings.test_trials,
        warmup=1,
        requests=6,
        examples=8 * batch,
        max_windows=1,
        max_drop=settings.max_drop,
        columns=settings.columns,
        encoding=settings.encoding,
        seed=settings.seed,
    )


def prove(
    settings: OptimizeSettings,
    chosen: Candidate,
    task: str,
    make: Callable[[Candidate], None],
    phases: Phases = no_phases,
    command: list[str] | None = None,
) -> dict:
    """Makes each step from the unpruned model to ``chosen`` (``make``), measures them on the test split (continuing
    an interrupted measurement) and returns the figures (``proof_figures``). The comparison's own report is written
    into ``settings.out``/test."""
    from serving.report.runner import run_comparison

    for step in chosen.steps:
        make(step)
    compare = test_settings(settings, chosen.steps)
    with serving(compare.repo, compare.deployments, settings.out / "test-triton.log") as url:
        compare.url = url
        run_comparison(compare, resume=True, phases=phases, command=command)
        figures = proof_figures(Journal(compare.out / "measurements.jsonl").records(), settings, chosen)
        if task in FRONT_END_OUTPUT:
            figures["end_to_end"] = end_to_end(url, settings, chosen, task, phases)
    return figures


# Tasks whose deployments have a text front end taking raw texts (TEXT), and the output a request fetches.
FRONT_END_OUTPUT = {"classification": "LABEL", "language-modeling": "NLL"}


def end_to_end(url: str, settings: OptimizeSettings, chosen: Candidate, task: str, phases: Phases = no_phases) -> dict:
    """Returns the chosen deployment's text front end against the unpruned one's on real test sentences (the first
    ``batch_size`` of the test split in every request, tokenised by the server), trials interleaved and paired:
    throughput and p50 speedups, and each side's p50 and examples/s. Measured once; kept in end_to_end.jsonl."""
    import numpy as np

    from exporter.data import read_examples
    from exporter.triton.layout import text_model_name
    from serving.benchmark.loadgen import run_window
    from serving.client import TritonClient, strings_array

    journal = Journal(settings.out / "end_to_end.jsonl")
    names = [BASELINE.name, chosen.name]
    texts = [
        str(e[TASKS[task].input])
        for e in read_examples(
            settings.test,
            TASKS[task].unlabelled,
            settings.columns,
            encoding=settings.encoding,
        )
    ]
    batch = settings.batch_size
    arrays = {"TEXT": strings_array([texts[i % len(texts)] for i in range(batch)])}
    done = {(r["deployment"], r["trial"]) for r in journal.records()}
    advance = phases("end to end: text front ends on test sentences", settings.test_trials * len(names))
    for trial in range(settings.test_trials):
        for name in names[trial % 2 :] + names[: trial % 2]:  # alternate who goes first
            if (name, trial) not in done:
                model = text_model_name(name)
                make_client = lambda: TritonClient(url, "http")  # noqa: E731  (one per window thread)
                run_window(make_client, model, arrays, [FRONT_END_OUTPUT[task]], 1, 1)  # warm-up
                window = run_window(make_client, model, arrays, [FRONT_END_OUTPUT[task]], 1, 8)
                journal.append(
                    {
                        "record": "latency",
                        "deployment": name,
                        "batch_size": batch,
                        "trial": trial,
                        "latencies_ms": window.latencies_ms,
                        "throughput": window.throughput,
                    }
                )
            advance(1)
    records = journal.records()
    sides = {name: [r for r in records if r["deployment"] == name] for name in names}
    return {
        "model": "<name>_text",
        "batch_size": batch,
        "trials": settings.test_trials,
        "sentences": f"the first {batch} test sentences in every request",
        "throughput": trial_speedup(records, *names, batch, "throughput").to_dict(),
        "p50": trial_speedup(records, *names, batch, "latency").to_dict(),
        "p50_ms": {n: float(np.median([x for r in rows for x in r["latencies_ms"]])) for n, rows in sides.items()},
        "examples_per_s": {n: float(np.mean([r["throughput"] for r in rows])) for n, rows in sides.items()},
    }


def proof_figures(records: list[dict], settings: OptimizeSettings, chosen: Candidate) -> dict:
    """Returns, from the test comparison's records: each step's quality change against the unpruned model, its
    throughput at the objective's batch size and p50 at batch 1 against it, each lever's share over the step
    before (all paired by trial), and whether the chosen candidate is non-inferior."""
    steps = chosen.steps
    base = steps[0].name
    batch = settings.batch_size
    rows = []
    for previous, step in zip(steps, steps[1:]):
        rows.append(
            {
                "step": step.to_dict(),
                "quality": quality_change(records, base, step.name, settings.seed),
                "share": trial_speedup(records, previous.name, step.name, batch, "throughput").to_dict(),
                "throughput": trial_speedup(records, base, step.name, batch, "throughput").to_dict(),
                "p50_b1": trial_speedup(records, base, step.name, 1, "latency").to_dict(),
            }
        )
    baseline_quality = next(r for r in records if r.get("record") == "quality" and r["deployment"] == base)
    final = rows[-1]
    return {
        "steps": rows,
        "batch_size": batch,
        "trials": settings.test_trials,
        "baseline_quality": {k: baseline_quality[k] for k in ("metric", "value", "examples")},
        "non_inferior": non_inferior(final["quality"], settings.max_drop),
        "report": str(settings.out / "test"),
    }


def install(
    settings: OptimizeSettings,
    chosen: Candidate | None,
    task: str,
    checkpoint,
    validation_texts: list[str] | None = None,
) -> dict[str, str]:
    """Exports the chosen candidate as ``settings.name`` and the unpruned model as ``<name>_unpruned`` into the
    user's repository (validated like any export); without a choice only the unpruned model, as ``settings.name``.
    Returns {role: deployment name}."""
    from serving.optimize.workshop import export_deployment

    installed = {}
    baseline_name = f"{settings.name}_unpruned" if chosen else settings.name
    if chosen:
        export_deployment(
            checkpoint(chosen.level, chosen.distill),
            Path(settings.repo),
            settings.name,
            chosen.precision,
            task,
            settings.batch_size,
            validation_texts,
            settings.min_int8_agreement,
        )
        installed["chosen"] = settings.name
    export_deployment(settings.model, Path(settings.repo), baseline_name, "fp32", task, settings.batch_size)
    installed["unpruned"] = baseline_name
    return installed
