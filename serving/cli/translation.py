"""CLI commands for translation models: train-mt (train one from parallel text) and demo-mt (the paper's MT system)."""

from __future__ import annotations

from pathlib import Path

import click

from exporter.evaluation.metrics import format_points
from exporter.training.settings import TranslationSettings
from serving.cli.app import data_options, data_source, default_of, emit, friendly_errors, main, overwrite_option
from serving.cli.demo import cache_option, run_demo_command
from serving.demo.assets import default_cache
from serving.progress import training_bar


def _setting(name: str, text: str):
    return click.option(f"--{name.replace('_', '-')}", default=default_of(TranslationSettings, name), show_default=True,
                        help=text)


@main.command("train-mt")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the tokenizer, checkpoints, "
              "training state, final model (OUT/model) and training.json.")
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Training pairs (JSONL/CSV/TSV, source + target). Default: the Tatoeba English-Spanish train split.")
@click.option("--dev", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Pairs for the periodic BLEU (default: the Tatoeba scoring split).")
@click.option("--test", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Pairs the final model is scored on (default: the Tatoeba test split).")
@cache_option
@_setting("minutes", "Wall-clock training budget (evaluations included).")
@_setting("eval_minutes", "Minutes between BLEU evaluations (each saves a checkpoint and the state).")
@_setting("eval_sentences", "Dev sentences per periodic BLEU.")
@_setting("vocab_size", "Shared BPE vocabulary size.")
@_setting("d_model", "Model width.")
@_setting("layers", "Encoder and decoder layers.")
@_setting("heads", "Attention heads per attention (d_model must divide by it).")
@_setting("ffn", "Feed-forward width.")
@_setting("dropout", "Dropout of the transformer layers.")
@_setting("label_smoothing", "Label smoothing of the cross-entropy.")
@_setting("learning_rate", "Peak learning rate (AdamW, warm-up then inverse square root).")
@_setting("warmup_steps", "Linear warm-up steps.")
@_setting("cooldown", "Share of the budget at the end over which the learning rate falls linearly to zero.")
@_setting("batch_tokens", "Tokens per side in one length-sorted batch.")
@_setting("seed", "Random seed.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last evaluation (a finished run is kept).")
@overwrite_option
@data_options
@click.option("--json", "as_json", is_flag=True, help="Print the training record as JSON.")
@friendly_errors
def train_mt(out, data, dev, test, cache, resume, overwrite, as_json, **options):
    """Train a Marian translation model and its shared BPE tokenizer on CPU (or GPU when present).

    The defaults train 7.6M parameters for 40 minutes (docs/results.md shows the BLEU a run reached
    on the Tatoeba English-Spanish test split, greedy, one reference per source). Progress shows
    loss, tokens/s and the latest BLEU; every --eval-minutes a checkpoint is kept (OUT/checkpoints, for the
    training-dynamics experiment) and the state saved, so --resume continues an interrupted run."""
    from exporter.data import read_examples
    from exporter.training.translation import train_translation

    source = data_source(options)
    settings = TranslationSettings(**{k: v for k, v in options.items() if k in TranslationSettings.__dataclass_fields__})
    if data is None or dev is None or test is None:
        from serving.demo.assets import fetch_asset
        from serving.demo.tatoeba import TATOEBA, write_translation_splits

        cache = cache or default_cache()
        splits = write_translation_splits(fetch_asset(TATOEBA, cache), cache)
        data, dev, test = data or splits["train"], dev or splits["score"], test or splits["test"]
    train, dev_pairs, test_pairs = (read_examples(path, "translation", **source) for path in (data, dev, test))
    with training_bar("training", settings.minutes * 60) as update:
        record = train_translation(train, dev_pairs, out, settings, test=test_pairs, resume=resume, overwrite=overwrite,
                                   progress=update)
    from serving.report.plots import plot_training_curve

    plot_training_curve(record["curve"], Path(out) / "training.png")
    final = record.get("test", {})
    emit(record, as_json, f"model: {Path(out) / 'model'}   BLEU curve: {Path(out) / 'training.png'}\n"
         f"test BLEU {format_points(final.get('value', float('nan')))} on {final.get('examples', 0)} sentences "
         f"(greedy, one reference each; {final.get('signature', '')})\n"
         "BLEU by minute: " + ", ".join(f"{p['seconds'] / 60:.0f}: {format_points(p['bleu'])}"
                                         for p in record["curve"]))


@main.command("demo-mt")
@cache_option
@click.option("--out", default="outputs/demo-mt", show_default=True, type=click.Path(path_type=Path),
              help="Scores, experiments and pruned checkpoints.")
@click.option("--repo", default="model_repo", show_default=True, type=click.Path(path_type=Path))
@click.option("--reports", default="reports/demo-mt", show_default=True, type=click.Path(path_type=Path))
@friendly_errors
def demo_mt(cache, out, repo, reports):
    """The translation demo: train a Marian model on Tatoeba English-Spanish (cached after the first run),
    reproduce the paper's MT experiments per attention type, prune, export with a KV cache, serve with
    Triton, and compare BLEU, chrF and latency.

    Re-running it replaces its own outputs (--out, --reports) and reuses the cached model."""
    from serving.demo.translation import TranslationDemoBudget, run_translation_demo

    run_demo_command(lambda bars: run_translation_demo(cache or default_cache(), out, repo, reports,
                                                       TranslationDemoBudget(), bars, click.echo), reports)
