"""CLI commands over the pruning core: heads, score, prune, ablate, best-heads, curve.

Command bodies import the exporter's PyTorch side when they run, so ``--help`` stays light.
"""

from __future__ import annotations

from pathlib import Path

import click

from exporter.errors import HeadpruneError
from exporter.evaluation.settings import RESCALE_EXAMPLES
from exporter.pruning.scores import DEFAULT_BATCH_SIZE, DEFAULT_METHOD, METHODS
from serving.cli.app import data_options, data_source, emit, friendly_errors, main, overwrite_option
from serving.progress import PhaseBars, progress_bar, stdout

model_dir_argument = click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))


@main.command()
@model_dir_argument
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")
@friendly_errors
def heads(model_dir: Path, as_json: bool):
    """Print the attention-head inventory of MODEL_DIR: types, layers, heads per layer (and key/value heads with
    grouped-query attention), head size, and the attention parameters' share of all parameters."""
    from rich.table import Table

    from exporter.pruning.checkpoint import load_model
    from exporter.pruning.inventory import build_inventory

    model = load_model(model_dir)
    summary = build_inventory(model).summary(model)
    if as_json:
        emit(summary, True, "")
        return
    table = Table(title=f"{model_dir} ({summary['family']}, {summary['model_type']})")
    grouped = any("key_value_heads_per_layer" in info for info in summary["attention_types"].values())
    for column in (
        "attention type",
        "layers",
        "heads per layer",
        *(["key/value heads per layer"] if grouped else []),
        "head size",
    ):
        table.add_column(column)
    for attention_type, info in summary["attention_types"].items():
        key_values = [" ".join(map(str, info.get("key_value_heads_per_layer", [])))] if grouped else []
        table.add_row(
            attention_type,
            str(info["layers"]),
            " ".join(map(str, info["heads_per_layer"])),
            *key_values,
            str(info["head_size"]),
        )
    stdout.print(table)
    click.echo(
        f"heads: {summary['heads']} of {summary['original_heads']} original; attention parameters: "
        f"{summary['attention_parameters']:,} of {summary['parameters']:,} ({100 * summary['attention_share']:.1f} %)"
    )


def scoring_options(command):
    """Adds the options that control importance scoring."""
    command = click.option(
        "--method",
        type=click.Choice(METHODS),
        default=DEFAULT_METHOD,
        show_default=True,
        help="'token': the authors' per-token |.| (default); 'batch': per-batch |dL/dgate| (bertology).",
    )(command)
    command = click.option("--no-normalize", is_flag=True, help="Skip the per-layer L2 normalisation of scores.")(
        command
    )
    return click.option("--batch-size", default=DEFAULT_BATCH_SIZE, show_default=True, type=click.IntRange(1))(command)


@main.command()
@model_dir_argument
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path),
    help="Scoring data (JSONL/CSV/TSV, or .txt for language models); never the evaluation split.",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Where to write the scores JSON.")
@click.option(
    "--max-examples", type=click.IntRange(1), default=None, help="Score on a seeded random subset of this size."
)
@click.option("--seed", default=0, show_default=True, help="Seed for sub-sampling examples.")
@scoring_options
@data_options
@friendly_errors
def score(model_dir: Path, data: Path, out: Path, max_examples, method, no_normalize, batch_size, seed, **options):
    """Compute the importance I_h of every head of MODEL_DIR (one forward+backward pass over --data)."""
    from exporter.pruning.scoring import score_checkpoint

    bars = PhaseBars()
    try:
        scores = score_checkpoint(
            model_dir,
            data,
            method=method,
            normalize=not no_normalize,
            batch_size=batch_size,
            max_examples=max_examples,
            seed=seed,
            phases=bars,
            **data_source(options),
        )
    finally:
        bars.close()
    scores.save(out)
    click.echo(f"scored {scores.examples} examples ({method} method) -> {out}")


@main.command()
@model_dir_argument
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the pruned checkpoint.")
@click.option("--plan", type=click.Path(path_type=Path), help="JSON plan: type -> layer -> heads to remove.")
@click.option("--scores", type=click.Path(path_type=Path), help="Scores JSON from 'headprune score'.")
@click.option("--fraction", type=float, help="With --scores: share of all heads to remove, in [0, 1).")
@click.option("--per-type", is_flag=True, help="With --scores: rank within each attention type instead of globally.")
@click.option(
    "--min-heads-per-layer", default=0, show_default=True, help="With --scores: never leave a layer with fewer heads."
)
@overwrite_option
@friendly_errors
def prune(model_dir: Path, out: Path, plan, scores, fraction, per_type, min_heads_per_layer, overwrite):
    """Structurally remove heads from MODEL_DIR and write a pruned checkpoint to --out.

    Either --plan FILE, or --scores FILE with --fraction F. Pruning an already pruned
    checkpoint composes: head indices always refer to the original model, and a --plan
    naming a head the checkpoint has already lost is refused."""
    from exporter.pruning.plan import HeadPlan
    from exporter.pruning.prune import prune_checkpoint
    from exporter.pruning.scores import HeadScores

    result = prune_checkpoint(
        model_dir,
        out,
        plan=HeadPlan.load(plan) if plan else None,
        scores=HeadScores.load(scores) if scores else None,
        fraction=fraction,
        per_type=per_type,
        min_heads_per_layer=min_heads_per_layer,
        overwrite=overwrite,
    )
    click.echo(result.format())


@main.command()
@model_dir_argument
@click.option(
    "--teacher",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The unpruned checkpoint MODEL_DIR was pruned from.",
)
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path),
    help="Texts of the task (JSONL/CSV/TSV; `text`, or `source` for translation models; labels and targets "
    "unused), e.g. the training split; never the evaluation split.",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the recovered checkpoint.")
@click.option(
    "--method",
    type=click.Choice(["distill", "rescale"]),
    default="distill",
    show_default=True,
    help="distill: a short fine-tune towards the teacher's outputs; rescale: one least-squares scale per "
    "head, no training.",
)
@click.option("--epochs", default=1, show_default=True, help="distill: passes over --data.")
@click.option(
    "--max-examples",
    type=click.IntRange(1),
    default=None,
    help=f"Use a seeded random subset of this size (default: all for distill, {RESCALE_EXAMPLES} for rescale).",
)
@click.option("--seed", default=0, show_default=True, help="Seed for sub-sampling and shuffling.")
@click.option("--json", "as_json", is_flag=True, help="Print the recovery record as JSON.")
@overwrite_option
@data_options
@friendly_errors
def recover(
    model_dir: Path,
    teacher: Path,
    data: Path,
    out: Path,
    method,
    epochs,
    max_examples,
    seed,
    as_json,
    overwrite,
    **options,
):
    """Win back some of what pruning cost: train or rescale the pruned MODEL_DIR towards the unpruned --teacher.

    \b
    distill (classifiers, language models, translation models): the pruned model learns the
    teacher's softened output distributions on --data (a translation model's along the
    teacher's own greedy translations; no labels or targets needed); heads stay removed.
    rescale (classifiers): each kept head gets one scale, fitted by least
    squares layer by layer so that every layer's attention output reproduces the teacher's
    (Kwon et al. 2022); the scales are folded into the output projections.
    Either way OUT is a pruned checkpoint of the same shape, with OUT/recovery.json saying
    what was done. Measure the result with `compare`."""
    from exporter.data import UNLABELLED, read_examples
    from exporter.pruning.checkpoint import model_task

    if max_examples is None and method == "rescale":
        max_examples = RESCALE_EXAMPLES
    task = model_task(model_dir)
    examples = read_examples(
        data, UNLABELLED.get(task, task), max_examples=max_examples, seed=seed, **data_source(options)
    )
    if method == "rescale":
        from exporter.evaluation.rescale import recover_by_rescaling

        record = recover_by_rescaling(model_dir, teacher, examples, out, overwrite=overwrite)
        scales = [s for layers in record["scales"].values() for row in layers.values() for s in row]
        spread = f" (scales {min(scales):.2f} to {max(scales):.2f})" if scales else ""
        emit(record, as_json, f"rescaled {len(scales)} heads on {record['examples']} examples{spread} -> {out}")
        return
    from exporter.evaluation.distill import distill

    with progress_bar("distilling (examples)", epochs * len(examples)) as advance:
        record = distill(
            model_dir, teacher, examples, out, epochs=epochs, seed=seed, overwrite=overwrite, progress=advance
        )
    emit(
        record,
        as_json,
        f"distilled {record['epochs']} epoch(s) on {record['examples']} examples, loss "
        f"{record['first_loss']:.3f} -> {record['final_loss']:.3f} -> {out}",
    )


def experiment_options(command):
    """Adds the evaluation options shared by the experiment commands."""
    command = click.option(
        "--eval-data",
        required=True,
        type=click.Path(path_type=Path),
        help="Evaluation data (JSONL/CSV/TSV, or .txt for language models: perplexity).",
    )(command)
    command = click.option("--max-examples", type=click.IntRange(1), default=None, help="Evaluate on a seeded subset.")(
        command
    )
    command = click.option("--seed", default=0, show_default=True)(command)
    command = click.option("--out", required=True, type=click.Path(path_type=Path), help="JSON result file.")(command)
    return command


def _evaluator(model_dir: Path, eval_data: Path, max_examples, seed, source: dict, replay: bool = False):
    from exporter.data import examples_for
    from exporter.evaluation.quality import Evaluator
    from exporter.pruning.checkpoint import load_model, require_tokenizer

    model, tokenizer = load_model(model_dir), require_tokenizer(model_dir)
    examples = examples_for(model, eval_data, max_examples=max_examples, seed=seed, **source)
    return model, tokenizer, Evaluator(model, tokenizer, examples, replay=replay)


def _per_head_experiment(
    name: str, label: str, model_dir: Path, eval_data: Path, max_examples, seed, out: Path, options: dict
):
    """Runs an experiment that evaluates once per head, under a progress bar; writes and returns its result."""
    from exporter.atomic import atomic_write_json
    from exporter.evaluation import experiments
    from exporter.pruning.inventory import build_inventory

    model, _, evaluator = _evaluator(model_dir, eval_data, max_examples, seed, data_source(options), replay=True)
    inventory = build_inventory(model)
    with progress_bar(label, inventory.kept_head_count()) as advance:
        result = getattr(experiments, name)(evaluator, inventory, progress=advance)
    atomic_write_json(out, result.to_dict())
    return result


@main.command()
@model_dir_argument
@experiment_options
@data_options
@friendly_errors
def ablate(model_dir: Path, eval_data: Path, max_examples, seed, out: Path, **options):
    """Single-head ablation: the metric with each head of MODEL_DIR removed alone, and whether the change
    is significant (paired test: McNemar for accuracy, paired bootstrap for BLEU and perplexity)."""
    result = _per_head_experiment(
        "single_head_ablation", "ablating heads", model_dir, eval_data, max_examples, seed, out, options
    )
    click.echo(f"{result.format()} -> {out}")


@main.command("best-heads")
@model_dir_argument
@experiment_options
@data_options
@friendly_errors
def best_heads(model_dir: Path, eval_data: Path, max_examples, seed, out: Path, **options):
    """Reduce each layer of MODEL_DIR to its best single head, one layer at a time."""
    result = _per_head_experiment(
        "best_head_per_layer", "one head per layer", model_dir, eval_data, max_examples, seed, out, options
    )
    click.echo(f"{result.format()} -> {out}")


@main.command()
@model_dir_argument
@click.option("--score-data", required=True, type=click.Path(path_type=Path), help="Data for importance scores.")
@experiment_options
@click.option(
    "--step", default=0.1, show_default=True, type=click.FloatRange(0.01, 0.5), help="Share of heads pruned per step."
)
@click.option("--rescore", is_flag=True, help="Recompute importance before every step.")
@click.option("--per-type", is_flag=True, help="Rank heads within each attention type.")
@click.option(
    "--only-type",
    default=None,
    metavar="TYPE",
    help="Prune only this attention type's heads (encoder, decoder or cross for translation models).",
)
@click.option(
    "--masked-in-norm",
    is_flag=True,
    help="With --rescore: keep masked heads' gradient scores in their layer's L2 norm, as the bertology "
    "script does (default: a masked head scores 0 and stays out of the norm).",
)
@scoring_options
@data_options
@friendly_errors
def curve(
    model_dir: Path,
    score_data: Path,
    eval_data: Path,
    max_examples,
    seed,
    out: Path,
    step,
    rescore,
    per_type,
    only_type,
    masked_in_norm,
    method,
    no_normalize,
    batch_size,
    **options,
):
    """Iterative pruning curve: the metric at 0, step, 2 step, ... of heads pruned by importance, ending at
    the largest share that leaves one head.

    Writes the curve as JSON to --out and a plot next to it (same name, .png)."""
    from exporter.atomic import atomic_write_json
    from exporter.data import examples_for
    from exporter.evaluation.experiments import curve_fractions, pruning_curve
    from exporter.pruning.inventory import build_inventory
    from exporter.pruning.scoring import compute_importance
    from serving.report.plots import plot_curves

    source = data_source(options)
    model, tokenizer, evaluator = _evaluator(model_dir, eval_data, max_examples, seed, source)
    score_examples = examples_for(model, score_data, seed=seed, **source)
    inventory = build_inventory(model)
    if only_type is not None and only_type not in inventory.attention_types:
        raise HeadpruneError(
            f"attention type '{only_type}' is not one of this model's ({', '.join(inventory.attention_types)})",
            "name one of them with `only_type`",
        )

    def score(removed):
        return compute_importance(
            model,
            tokenizer,
            score_examples,
            method=method,
            normalize=not no_normalize,
            batch_size=batch_size,
            removed=removed,
            masked_in_norm=masked_in_norm,
        )

    with progress_bar("pruning curve", len(curve_fractions(step, inventory, per_type, only_type))) as advance:
        result = pruning_curve(
            evaluator,
            inventory,
            score,
            step=step,
            rescore=rescore,
            per_type=per_type,
            only_type=only_type,
            progress=advance,
        )
    result.label = ("re-scored" if rescore else "importance once") + (f", {only_type} only" if only_type else "")
    atomic_write_json(out, result.to_dict())
    plot_curves([result], Path(out).with_suffix(".png"))
    click.echo(result.format())
