"""CLI commands that measure and report: compare, report."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from serving.benchmark.compare import CompareSettings
from serving.cli.app import data_options, data_source, default_of, friendly_errors, int_list, main
from serving.client import PROTOCOLS
from serving.progress import PhaseBars


def setting(name: str):
    """Returns CompareSettings' default for field ``name``."""
    return default_of(CompareSettings, name)


def endpoint_map(values: tuple[str, ...]) -> dict[str, str]:
    """Returns {deployment: HOST:PORT} of --endpoint NAME=HOST:PORT options; raises click.BadParameter otherwise."""
    endpoints = {}
    for value in values:
        name, _, address = value.partition("=")
        host, _, port = address.rpartition(":")
        if not name or not host or not port.isdigit() or name in endpoints:
            raise click.BadParameter(
                f"{value!r} is not NAME=HOST:PORT (each deployment once), e.g. minilm_pruned50=127.0.0.1:8001",
                param_hint="--endpoint",
            )
        endpoints[name] = address
    return endpoints


@main.command()
@click.option("--repo", default="model_repo", show_default=True, type=click.Path(path_type=Path))
@click.option("--baseline", required=True, help="The unpruned deployment.")
@click.option("--candidate", "candidates", required=True, multiple=True, help="A pruned deployment (repeatable).")
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path),
    help="Evaluation data (JSONL/CSV/TSV; or .txt, one passage per line, for language models).",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Report folder.")
@click.option(
    "--batch-sizes",
    default=",".join(map(str, setting("batch_sizes"))),
    show_default=True,
    callback=lambda c, p, v: int_list(v),
)
@click.option(
    "--concurrency",
    default=",".join(map(str, setting("concurrency"))),
    show_default=True,
    callback=lambda c, p, v: int_list(v),
)
@click.option(
    "--seq-len", default=setting("seq_len"), show_default=True, help="Tokens per example in the latency runs."
)
@click.option("--url", default=None, help="HOST:PORT of a running Triton (default: start the embedded server).")
@click.option(
    "--endpoint",
    "endpoints",
    multiple=True,
    metavar="NAME=HOST:PORT",
    callback=lambda c, p, v: endpoint_map(v),
    help="Measure deployment NAME on the Triton at HOST:PORT (repeatable; e.g. one per InferenceService of "
    "a cluster). Others use --url or the embedded server.",
)
@click.option("--protocol", type=click.Choice(PROTOCOLS), default=setting("protocol"), show_default=True)
@click.option("--trials", default=setting("trials"), show_default=True, help="Interleaved trials per cell.")
@click.option(
    "--requests", default=setting("requests"), show_default=True, help="Least requests per measurement window."
)
@click.option(
    "--examples",
    default=setting("examples"),
    show_default=True,
    help="Least examples per window: large batches send fewer requests than small ones.",
)
@click.option(
    "--max-windows",
    default=setting("max_windows"),
    show_default=True,
    help="Windows per cell until p50 is stable (1 = fixed count).",
)
@click.option("--warmup", default=setting("warmup"), show_default=True, help="Warm-up requests per cell.")
@click.option("--max-drop", type=float, default=None, help="Name the fastest candidate within X points of quality.")
@click.option(
    "--quality-examples",
    "--max-examples",
    "max_examples",
    type=click.IntRange(1),
    default=None,
    help="Measure quality on a seeded subset of N examples (default: all of --data). The quality pass "
    "sends each example once per deployment, apart from the latency runs (--trials, --requests, "
    "--examples).",
)
@click.option(
    "--scores",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Scores JSON for the importance heat map.",
)
@click.option("--resume", is_flag=True, help="Continue an interrupted run; measured cells are not measured again.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Start over in an existing non-empty --out, deleting its earlier measurements (refused otherwise).",
)
@data_options
@friendly_errors
def compare(
    repo,
    baseline,
    candidates,
    data,
    out,
    batch_sizes,
    concurrency,
    seq_len,
    url,
    endpoints,
    protocol,
    trials,
    requests,
    examples,
    max_windows,
    warmup,
    max_drop,
    max_examples,
    scores,
    resume,
    overwrite,
    **options,
):
    """Compare pruned deployments against the baseline, through Triton: quality (accuracy, BLEU,
    or perplexity for language models), latency percentiles and throughput per batch size and
    concurrency (and tokens/s for language models), Triton's time breakdown, and static facts.
    Writes report.md, report.html, report.json, latency.csv and PNG plots to --out.

    Results are written as they are measured: Ctrl-C keeps them and --resume continues. An existing
    non-empty --out is refused unless --resume or --overwrite (which starts over, deleting its measurements)."""
    settings = CompareSettings(
        repo=repo,
        baseline=baseline,
        candidates=list(candidates),
        data=data,
        out=out,
        batch_sizes=batch_sizes,
        concurrency=concurrency,
        seq_len=seq_len,
        protocol=protocol,
        url=url,
        endpoints=endpoints,
        trials=trials,
        warmup=warmup,
        requests=requests,
        examples=examples,
        max_windows=max_windows,
        max_drop=max_drop,
        max_examples=max_examples,
        scores=scores,
        **data_source(options),
    )
    from serving.report.runner import run_comparison  # plotting libraries load only when a report is written

    bars = PhaseBars()
    try:
        path = run_comparison(
            settings, resume=resume, overwrite=overwrite, phases=bars, command=["headprune", *sys.argv[1:]]
        )
    except KeyboardInterrupt:  # friendly_errors ends the process; this says what of the run is kept
        bars.close()
        click.echo(
            f"what was measured is kept in {out} (report marked incomplete); "
            "rerun the same command with --resume to continue",
            err=True,
        )
        raise
    finally:
        bars.close()
    click.echo("\n".join(path.read_text().splitlines()[:5]))
    click.echo(f"\nreport: {path}  (also report.html, report.json, latency.csv, plots)")


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option(
    "--open",
    "open_page",
    is_flag=True,
    help="Then open report.html in the browser; where there is none, serve it on --host:--port until Ctrl-C.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on (with --open, no browser).")
@click.option("--port", default=0, show_default=True, help="Port to serve on (0: a free one).")
@friendly_errors
def report(folder: Path, open_page: bool, host: str, port: int):
    """Re-render report.md, report.html, latency.csv and the plots of FOLDER from its report.json (no measuring)."""
    from serving.report.report import render_report
    from serving.report.viewer import open_report, report_page

    path = render_report(folder)
    click.echo("\n".join(path.read_text().splitlines()[:5]))
    click.echo(f"\nreport: {path}  (also {report_page(folder)})")
    if not open_page:
        return
    server = open_report(folder, host=host, port=port)
    if server is None:
        click.echo("opened in the browser")
        return
    click.echo(
        f"no browser here: serving {server.url} (from another machine: ssh -L "
        f"{server.httpd.server_address[1]}:127.0.0.1:{server.httpd.server_address[1]} this-host); Ctrl-C stops"
    )
    try:
        server.thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
