"""CLI command `optimize`: the fastest deployment within a quality budget, chosen on dev, proven on test."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from serving.cli.app import data_options, data_source, default_of, friendly_errors, main
from serving.progress import PhaseBars, console


def setting(name: str):
    """Returns OptimizeSettings' default for field ``name``."""
    from serving.optimize.search import OptimizeSettings

    return default_of(OptimizeSettings, name)


existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)


@main.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--train",
    required=True,
    type=existing_file,
    help="Training data: importance is scored on it and distillation trains on it.",
)
@click.option("--dev", required=True, type=existing_file, help="Dev split: every choice is made on it.")
@click.option(
    "--test",
    required=True,
    type=existing_file,
    help="Held-out test split: measured once, at the end, for the reported figures.",
)
@click.option(
    "--max-drop",
    default=setting("max_drop"),
    show_default=True,
    type=click.FloatRange(0),
    help="Largest quality drop accepted (accuracy and BLEU in points, perplexity in its own units); a "
    "candidate qualifies when the 95 % interval's lower bound of its change lies above -X.",
)
@click.option(
    "--repo",
    default="model_repo",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Triton repository the chosen deployment (NAME) and the unpruned one (NAME_unpruned) go into.",
)
@click.option("--name", required=True, help="Name of the chosen deployment.")
@click.option(
    "--out",
    default=None,
    type=click.Path(path_type=Path),
    help="Work and report folder (default: outputs/optimize/NAME).",
)
@click.option(
    "--objective",
    type=click.Choice(["throughput", "latency"]),
    default=setting("objective"),
    show_default=True,
    help="Throughput at --batch-size, or p50 latency at batch 1.",
)
@click.option("--batch-size", default=setting("batch_size"), show_default=True, type=click.IntRange(1))
@click.option(
    "--budget-minutes",
    default=setting("budget_minutes"),
    show_default=True,
    type=click.FloatRange(0.1),
    help="Time for the search: no candidate is started that would not fit, judged by the longest so far. "
    "The proof on the test split and the install come after it.",
)
@click.option("--step", default=setting("step"), show_default=True, help="Spacing of the searched pruning levels.")
@click.option("--max-level", default=setting("max_level"), show_default=True, help="Highest share of heads searched.")
@click.option(
    "--search-trials",
    default=setting("search_trials"),
    show_default=True,
    help="Interleaved speed trials per candidate on dev.",
)
@click.option(
    "--test-trials",
    default=setting("test_trials"),
    show_default=True,
    help="Interleaved speed trials on test (10 or more for a headline figure).",
)
@click.option("--distill-epochs", default=setting("distill_epochs"), show_default=True)
@click.option(
    "--min-int8-agreement",
    default=setting("min_int8_agreement"),
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Classifiers: share of training texts whose class an INT8 candidate must keep; below it the level is tried "
    "in FP32. (Language models keep 90 % of greedy continuations and perplexity within 2 %, translation models 90 % "
    "of translations: the export's checks.)",
)
@click.option(
    "--min-speedup",
    default=setting("min_speedup"),
    show_default=True,
    type=click.FloatRange(0),
    help="The choice must measure faster than this many times the unpruned model on dev.",
)
@click.option("--seed", default=setting("seed"), show_default=True)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run (same settings): made and measured candidates are reused.",
)
@click.option("--overwrite", is_flag=True, help="Start over in an existing non-empty --out (refused otherwise).")
@data_options
@friendly_errors
def optimize(
    model_dir,
    train,
    dev,
    test,
    max_drop,
    repo,
    name,
    out,
    objective,
    batch_size,
    budget_minutes,
    step,
    max_level,
    search_trials,
    test_trials,
    distill_epochs,
    min_int8_agreement,
    min_speedup,
    seed,
    resume,
    overwrite,
    **options,
):
    """Find the fastest deployment of MODEL_DIR within --max-drop of its quality, and prove it.

    \b
    1. importance re-scored before each pruning step, on --train;
    2. on --dev, through Triton: the levers that apply (pruning level and distillation; INT8 for
       text classifiers only) are searched, the full recipe
       bisected over the levels; the fastest candidate whose quality is non-inferior is chosen;
    3. on --test, once: the chosen deployment and each step towards it, with paired intervals;
    4. NAME and NAME_unpruned are exported into --repo.
    Writes optimize.md, optimize.json and waterfall.png into --out (the test comparison's full report
    in --out/test). Ctrl-C keeps what was made; --resume continues."""
    from serving.optimize.pipeline import optimize as run_optimize
    from serving.optimize.search import OptimizeSettings

    settings = OptimizeSettings(
        model=model_dir,
        train=train,
        dev=dev,
        test=test,
        repo=repo,
        name=name,
        out=out or Path("outputs/optimize") / name,
        max_drop=max_drop,
        objective=objective,
        batch_size=batch_size,
        budget_minutes=budget_minutes,
        step=step,
        max_level=max_level,
        search_trials=search_trials,
        test_trials=test_trials,
        distill_epochs=distill_epochs,
        min_int8_agreement=min_int8_agreement,
        min_speedup=min_speedup,
        seed=seed,
        **data_source(options),
    )
    bars = PhaseBars()
    try:
        path = run_optimize(
            settings,
            resume=resume,
            overwrite=overwrite,
            phases=bars,
            say=lambda line: console.print(line, highlight=False, soft_wrap=True, markup=False),
            command=["headprune", *sys.argv[1:]],
        )
    finally:
        bars.close()
    click.echo(f"\nreport: {path}  (also optimize.json, waterfall.png; the test comparison in {path.parent / 'test'})")
