"""CLI commands that measure and report: compare, report."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from exporter.atomic import refuse_existing
from exporter.errors import HeadpruneError

from .cli import data_options, data_source, friendly_errors, main, overwrite_option
from .client import PROTOCOLS
from .compare import CompareSettings, Comparison
from .progress import progress_bar
from .report import build_report, render_report, write_report


def int_list(text: str) -> list[int]:
    """Returns the integers of a comma-separated list such as '1,4,16'."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as error:
        raise click.BadParameter(f"'{text}' is not a comma-separated list of integers, e.g. 1,4,16") from error


class PhaseBars:
    """One rich progress bar per phase, opened when the phase starts."""

    def __init__(self):
        self._open = []

    def __call__(self, label: str, total: int):
        self.close()
        bar = progress_bar(label, total)
        self._open.append(bar)
        return bar.__enter__()

    def close(self):
        while self._open:
            self._open.pop().__exit__(None, None, None)


@main.command()
@click.option("--repo", default="model_repo", show_default=True, type=click.Path(path_type=Path))
@click.option("--baseline", required=True, help="The unpruned deployment.")
@click.option("--candidate", "candidates", required=True, multiple=True, help="A pruned deployment (repeatable).")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Evaluation data (JSONL/CSV/TSV).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Report folder.")
@click.option("--batch-sizes", default="1,4,16,64", show_default=True, callback=lambda c, p, v: int_list(v))
@click.option("--concurrency", default="1,2,4,8", show_default=True, callback=lambda c, p, v: int_list(v))
@click.option("--seq-len", default=128, show_default=True, help="Tokens per example in the latency runs.")
@click.option("--url", default=None, help="HOST:PORT of a running Triton (default: start the embedded server).")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="http", show_default=True)
@click.option("--trials", default=3, show_default=True, help="Interleaved trials per cell.")
@click.option("--requests", default=10, show_default=True, help="Least requests per measurement window.")
@click.option("--examples", default=256, show_default=True,
              help="Least examples per window: large batches send fewer requests than small ones.")
@click.option("--max-windows", default=4, show_default=True, help="Windows per cell until p50 is stable (1 = fixed count).")
@click.option("--warmup", default=5, show_default=True, help="Warm-up requests per cell.")
@click.option("--max-drop", type=float, default=None, help="Name the fastest candidate within X points of quality.")
@click.option("--max-examples", type=click.IntRange(1), default=None, help="Evaluate on a seeded subset.")
@click.option("--scores", type=click.Path(exists=True, path_type=Path), default=None, help="Scores JSON for the importance heat map.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run; measured cells are not measured again.")
@overwrite_option
@data_options
@friendly_errors
def compare(repo, baseline, candidates, data, out, batch_sizes, concurrency, seq_len, url, protocol, trials, requests,
            examples, max_windows, warmup, max_drop, max_examples, scores, resume, overwrite, **options):
    """Compare pruned deployments against the baseline, through Triton: accuracy, latency
    percentiles and throughput per batch size and concurrency, Triton's time breakdown, and
    static facts. Writes report.md, report.json, latency.csv and PNG plots to --out.

    Results are written as they are measured: Ctrl-C keeps them and --resume continues. An existing
    non-empty --out is refused unless --resume or --overwrite."""
    refuse_existing(out, overwrite or resume)
    settings = CompareSettings(repo=repo, baseline=baseline, candidates=list(candidates), data=data, out=out,
                               batch_sizes=batch_sizes, concurrency=concurrency, seq_len=seq_len, protocol=protocol,
                               url=url, trials=trials, warmup=warmup, requests=requests, examples=examples,
                               max_windows=max_windows,
                               max_drop=max_drop, max_examples=max_examples, scores=scores,
                               **data_source(options))
    bars = PhaseBars()
    comparison = Comparison(settings, resume=resume, progress=bars)
    failure: BaseException | None = None
    try:
        comparison.run()
    except (KeyboardInterrupt, HeadpruneError) as error:
        failure = error
    finally:
        bars.close()
    records = comparison.journal.records()
    report = build_report(settings, comparison.facts, records, comparison.environment(), ["headprune", *sys.argv[1:]])
    path = write_report(report, out)
    if isinstance(failure, KeyboardInterrupt):
        click.echo(f"interrupted: what was measured is kept in {out} (report marked incomplete); "
                   "rerun the same command with --resume to continue", err=True)
        sys.exit(130)
    if failure is not None:
        raise failure
    click.echo("\n".join(path.read_text().splitlines()[:5]))
    click.echo(f"\nreport: {path}  (also report.json, latency.csv, plots)")


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@friendly_errors
def report(folder: Path):
    """Re-render report.md, latency.csv and the plots of FOLDER from its report.json (no measuring)."""
    path = render_report(folder)
    click.echo("\n".join(path.read_text().splitlines()[:5]))
