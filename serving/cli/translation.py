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
    return click.option(
        f"--{name.replace('_', '-')}", default=default_of(TranslationSettings, name), show_default=True, help=text
    )


@main.command("train-mt")
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for the tokenizer, checkpoints, training state, final model (OUT/model) and training.json.",
)
@click.option(
    "--data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Training pairs (JSONL/CSV/TSV, source + target). Default: the Tatoeba English-Spanish train split.",
)
@click.option(
    "--dev",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Pairs for the periodic BLEU (default: held out of --data, or the Tatoeba scoring split).",
)
@click.option(
    "--test",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Pairs the final model is scored on (default: held out of --data, or the Tatoeba test split).",
)
@click.option(
    "--tokenizer",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="A fast tokenizer folder to use (tokenizer.json with padding and end tokens) instead of training a "
    "shared BPE one; --vocab-size is then its size.",
)
@cache_option
@_setting(
    "minutes",
    "Wall-clock budget, final dev and test evaluations included (reserved at the pace of the "
    "periodic evaluations: a budget shorter than --eval-minutes cannot foresee them).",
)
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
@_setting(
    "source_lang",
    "Source language code recorded in the model's config and deployment.json (en with the default Tatoeba data).",
)
@_setting("target_lang", "Target language code, likewise (es with the default Tatoeba data).")
@click.option(
    "--resume", is_flag=True, help="Continue the run in --out from its last evaluation (a finished run is kept)."
)
@overwrite_option
@data_options
@click.option("--json", "as_json", is_flag=True, help="Print the training record as JSON.")
@friendly_errors
def train_mt(out, data, dev, test, tokenizer, cache, resume, overwrite, as_json, **options):
    """Train a Marian translation model and its shared BPE tokenizer on CPU (or GPU when present).

    The defaults train 7.6M parameters for 40 minutes (docs/results.md shows the BLEU a run reached
    on the Tatoeba English-Spanish test split, greedy, one reference per source). Progress shows
    loss, tokens/s and the latest BLEU; every --eval-minutes a checkpoint is kept (OUT/checkpoints, for the
    training-dynamics experiment) and the state saved, so --resume continues an interrupted run.

    \b
    With --data alone, dev and test splits are held out of it (disjoint by normalised source and target
    sentences; written to OUT/splits when training ends). A raw TSV without a header (Tatoeba's: source, target,
    attribution) is read with --no-header; --source-column 1 --target-column 0 reverses the direction."""
    from exporter.data import read_examples
    from exporter.training.translation import train_translation

    source = data_source(options)
    if data is None:
        options = {
            **options,
            "source_lang": options["source_lang"] or "en",
            "target_lang": options["target_lang"] or "es",
        }
    settings = TranslationSettings(
        **{k: v for k, v in options.items() if k in TranslationSettings.__dataclass_fields__}
    )
    if data is None:
        from serving.demo.assets import fetch_asset
        from serving.demo.tatoeba import TATOEBA, write_translation_splits

        cache = cache or default_cache()
        splits = write_translation_splits(fetch_asset(TATOEBA, cache), cache)
        data, dev, test = splits["train"], dev or splits["score"], test or splits["test"]
    train, dev_pairs, test_pairs = (
        read_examples(path, "translation", **source) if path else None for path in (data, dev, test)
    )
    held_out = None
    if dev_pairs is None or test_pairs is None:
        from serving.demo.tatoeba import SPLIT_SIZES, held_out_splits

        missing = {"score": dev_pairs, "test": test_pairs}
        held_out = held_out_splits(train, {name: SPLIT_SIZES[name] for name, given in missing.items() if given is None})
        train, dev_pairs, test_pairs = held_out["train"], dev_pairs or held_out["score"], test_pairs or held_out["test"]
        shares = ", ".join(
            f"{len(rows)} {'dev' if name == 'score' else name} sources"
            for name, rows in held_out.items()
            if name != "train"
        )
        click.echo(f"held out of {data}: {shares}; written to {Path(out) / 'splits'} after training", err=True)
    with training_bar("training", settings.minutes * 60) as update:
        record = train_translation(
            train,
            dev_pairs,
            out,
            settings,
            test=test_pairs,
            resume=resume,
            overwrite=overwrite,
            progress=update,
            tokenizer=tokenizer,
            say=lambda line: click.echo(line, err=True),
        )
    if held_out:
        from serving.demo.tatoeba import write_splits

        write_splits(held_out, Path(out) / "splits")
    from serving.report.plots import plot_training_curve

    plot_training_curve(record["curve"], Path(out) / "training.png")
    final = record.get("test", {})
    emit(
        record,
        as_json,
        f"model: {Path(out) / 'model'}   BLEU curve: {Path(out) / 'training.png'}\n"
        f"test BLEU {format_points(final.get('value', float('nan')))} on {final.get('examples', 0)} sentences "
        f"(greedy, one reference each; {final.get('signature', '')})\n"
        f"{record.get('seconds', 0) / 60:.1f} minutes in all (budget {settings.minutes:g}), warm-up "
        f"{record.get('warmup_steps', settings.warmup_steps)} steps\n"
        "BLEU by minute: " + ", ".join(f"{p['seconds'] / 60:.0f}: {format_points(p['bleu'])}" for p in record["curve"]),
    )


@main.command("demo-mt")
@cache_option
@click.option(
    "--out",
    default="outputs/demo-mt",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Scores, experiments and pruned checkpoints.",
)
@click.option("--repo", default="model_repo", show_default=True, type=click.Path(path_type=Path))
@click.option("--reports", default="reports/demo-mt", show_default=True, type=click.Path(path_type=Path))
@friendly_errors
def demo_mt(cache, out, repo, reports):
    """The translation demo: train a Marian model on Tatoeba English-Spanish (cached after the first run),
    reproduce the paper's MT experiments per attention type, prune, export with a KV cache, serve with
    Triton, and compare BLEU, chrF and latency.

    Re-running it replaces its own outputs (--out, --reports) and reuses the cached model."""
    from serving.demo.translation import TranslationDemoBudget, run_translation_demo

    run_demo_command(
        lambda bars: run_translation_demo(
            cache or default_cache(), out, repo, reports, TranslationDemoBudget(), bars, click.echo
        ),
        reports,
    )
