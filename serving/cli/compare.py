"""CLI commands that measure and report: compare, report."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from serving.benchmark.compare import CompareSettings
from serving.cli.app import Terminated, data_options, data_source, default_of, friendly_errors, int_list, main
from serving.client import PROTOCOLS
from serving.progress import PhaseBars
from serving.report.report import render_report
from serving.report.runner import run_comparison


def setting(name: str):
    """Returns CompareSettings' default for field ``name``."""
    return default_of(CompareSettings, name)


@main.command()
@click.option("--repo", default="model_repo", show_default=True, type=click.Path(path_type=Path))
@click.option("--baseline", required=True, help="The unpruned deployment.")
@click.option("--candidate", "candidates", required=True, multiple=True, help="A pruned deployment (repeatable).")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Evaluation data (JSONL/CSV/TSV; or .txt, one passage per line, for language models).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Report folder.")
@click.option("--batch-sizes", default=",".join(map(str, setting("batch_sizes"))), show_default=True, callback=lambda c, p, v: int_list(v))
@click.option("--concurrency", default=",".join(map(str, setting("concurrency"))), show_default=True, callback=lambda c, p, v: int_list(v))
@click.option("--seq-len", default=setting("seq_len"), show_default=True, help="Tokens per example in the latency runs.")
@click.option("--url", default=None, help="HOST:PORT of a running Triton (default: start the embedded server).")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default=setting("protocol"), show_default=True)
@click.option("--trials", default=setting("trials"), show_default=True, help="Interleaved trials per cell.")
@click.option("--requests", default=setting("requests"), show_default=True, help="Least requests per measurement window.")
@click.option("--examples", default=setting("examples"), show_default=True,
              help="Least examples per window: large batches send fewer requests than small ones.")
@click.option("--max-windows", default=setting("max_windows"), show_default=True, help="Windows per cell until p50 is stable (1 = fixed count).")
@click.option("--warmup", default=setting("warmup"), show_default=True, help="Warm-up requests per cell.")
@click.option("--max-drop", type=float, default=None, help="Name the fastest candidate within X points of quality.")
@click.option("--max-examples", type=click.IntRange(1), default=None, help="Evaluate on a seeded subset.")
@click.option("--scores", type=click.Path(exists=True, path_type=Path), default=None, help="Scores JSON for the importance heat map.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run; measured cells are not measured again.")
@click.option("--overwrite", is_flag=True,
              help="Start over in an existing non-empty --out, deleting its earlier measurements (refused otherwise).")
@data_options
@friendly_errors
def compare(repo, baseline, candidates, data, out, batch_sizes, concurrency, seq_len, url, protocol, trials, requests,
            examples, max_windows, warmup, max_drop, max_examples, scores, resume, overwrite, **options):
    """Compare pruned deployments against the baseline, through Triton: quality (accuracy, BLEU,
    or perplexity for language models), latency percentiles and throughput per batch size and
    concurrency (and tokens/s for language models), Triton's time breakdown, and static facts.
    Writes report.md, report.json, latency.csv and PNG plots to --out.

    Results are written as they are measured: Ctrl-C keeps them and --resume continues. An existing
    non-empty --out is refused unless --resume or --overwrite (which starts over, deleting its measurements)."""
    settings = CompareSettings(repo=repo, baseline=baseline, candidates=list(candidates), data=data, out=out,
                               batch_sizes=batch_sizes, concurrency=concurrency, seq_len=seq_len, protocol=protocol,
                               url=url, trials=trials, warmup=warmup, requests=requests, examples=examples,
                               max_windows=max_windows,
                               max_drop=max_drop, max_examples=max_examples, scores=scores,
                               **data_source(options))
    bars = PhaseBars()
    try:
        path = run_comparison(settings, resume=resume, overwrite=overwrite, phases=bars,
                              command=["headprune", *sys.argv[1:]])
    except KeyboardInterrupt as interrupt:
        bars.close()
        click.echo(f"interrupted: what was measured is kept in {out} (report marked incomplete); "
                   "rerun the same command with --resume to continue", err=True)
        sys.exit(143 if isinstance(interrupt, Terminated) else 130)
    finally:
        bars.close()
    click.echo("\n".join(path.read_text().splitlines()[:5]))
    click.echo(f"\nreport: {path}  (also report.json, latency.csv, plots)")


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@friendly_errors
def report(folder: Path):
    """Re-render report.md, latency.csv and the plots of FOLDER from its report.json (no measuring)."""
    path = render_report(folder)
    click.echo("\n".join(path.read_text().splitlines()[:5]))
