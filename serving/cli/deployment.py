"""CLI commands that deploy and serve: export, serve, classify, translate, models."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

import click

from exporter.triton.config import DeploymentOptions
from serving.benchmark.tune import TuneSettings
from serving.cli.app import default_of, emit, friendly_errors, int_list, main
from serving.client import PROTOCOLS, TritonClient
from serving.server.process import TritonServer
from serving.server.supervisor import supervise


@main.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--repo", default="model_repo", show_default=True, type=click.Path(path_type=Path), help="Triton model repository."
)
@click.option("--name", required=True, help="Model name in the repository.")
@click.option("--version", type=int, default=None, help="Version number (default: the next free one).")
@click.option("--atol", default=1e-4, show_default=True, help="Largest accepted |ONNX - PyTorch| difference.")
@click.option("--optimize", is_flag=True, help="Fuse attention with each layer's real head count (validated).")
@click.option(
    "--quantize",
    type=click.Choice(["int8"]),
    default=None,
    help="Text classifiers, translation and language models: ONNX Runtime dynamic INT8 weights, checked "
    "against the FP32 graphs (a classifier's logits and classes, a translation model's greedy "
    "translations, a language model's perplexity and greedy continuations); measure the quality with "
    "`compare`.",
)
@click.option("--max-batch-size", default=default_of(DeploymentOptions, "max_batch_size"), show_default=True)
@click.option(
    "--instances",
    default=default_of(DeploymentOptions, "instances"),
    show_default=True,
    help="Model instances (instance_group count).",
)
@click.option(
    "--kind",
    type=click.Choice(["cpu", "gpu"]),
    default=default_of(DeploymentOptions, "kind"),
    show_default=True,
    help="Instance kind.",
)
@click.option(
    "--queue-delay-us",
    default=default_of(DeploymentOptions, "queue_delay_us"),
    show_default=True,
    help="Dynamic batching max queue delay (microseconds).",
)
@click.option(
    "--max-queue-size",
    default=default_of(DeploymentOptions, "max_queue_size"),
    show_default=True,
    help="Requests allowed to wait per model; beyond it Triton refuses new ones at once (0: no limit). "
    "A limit or timeout costs latency: Triton 2.51 then holds a request that arrives while the "
    "instance is busy for 500 ms.",
)
@click.option(
    "--queue-timeout-ms",
    default=default_of(DeploymentOptions, "queue_timeout_ms"),
    show_default=True,
    help="A request not started after waiting this long is refused (0: no timeout).",
)
@click.option("--tensorrt", is_flag=True, help="Add the ORT TensorRT accelerator block (GPU deployments).")
@click.option(
    "--max-length",
    default=default_of(DeploymentOptions, "max_length"),
    show_default=True,
    help="Token limit of the text front end.",
)
@click.option(
    "--validation-data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Real examples to validate on (JSONL/CSV/TSV). Translation models: greedy search on its 'source' "
    "sentences (default: seeded pseudo-sentences). With --quantize int8, its 'text' column: a classifier "
    "must predict the FP32 class on 99 % (default: random inputs only), a language model keep their "
    "perplexity within 2 % and 90 % of their greedy continuations (default: pseudo-sentences).",
)
@click.option(
    "--threads",
    default=0,
    show_default=True,
    help="ONNX Runtime intra-op threads per instance (0: one per physical core). `headprune tune` finds a value.",
)
@click.option(
    "--spinning/--no-spinning",
    default=True,
    show_default=True,
    help="Classifiers: whether ONNX Runtime threads spin between requests (faster back to back, "
    "costly when other work needs the cores).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@friendly_errors
def export(
    model_dir: Path,
    repo: Path,
    name: str,
    version,
    atol,
    optimize,
    quantize,
    max_batch_size,
    instances,
    kind,
    queue_delay_us,
    max_queue_size,
    queue_timeout_ms,
    tensorrt,
    max_length,
    validation_data,
    threads,
    spinning,
    as_json,
):
    """Export the model in MODEL_DIR (pruned or not) to ONNX in a Triton repository.

    \b
    A classifier: <repo>/<name>/<version>/model.onnx and config.pbtxt, plus the text front end
    <name>_text (TEXT in; tokenises, calls <name>, returns LOGITS and LABEL). The ONNX file is
    checked against PyTorch on fresh shapes; above --atol nothing is written.
    A causal language model (GPT-2, Llama, Qwen2, Mistral): <name> computes the full-sequence
    forward (logits, and nll: each row's summed next-token negative log-likelihood), and
    <name>_text scores texts (TEXT in; NLL and TOKENS out, for perplexity). No fusion.
    A translation model (Marian, BART, mBART): <name>_translate, with encoder.onnx and a decoder
    step with a KV cache sized per layer (SOURCE in, TRANSLATION out; greedy or beam search).
    Its greedy search must give transformers' tokens, step logits within --atol (default 1e-3 there)."""
    from exporter.pruning.checkpoint import model_task

    options = DeploymentOptions(
        max_batch_size=max_batch_size,
        instances=instances,
        kind=kind,
        queue_delay_us=queue_delay_us,
        tensorrt=tensorrt,
        max_length=max_length,
        threads=threads,
        spinning=spinning,
        max_queue_size=max_queue_size,
        queue_timeout_ms=queue_timeout_ms,
    )
    if model_task(model_dir) == "translation":
        if optimize:
            raise click.UsageError("--optimize applies to classifiers; translation graphs are exported unfused")
        _export_translation(
            model_dir, repo, name, version, atol, options, validation_data, threads, as_json, quantize or "fp32"
        )
        return
    from exporter.triton.repository import export_to_repository

    texts = None
    if quantize and validation_data:
        from exporter.data import read_examples

        texts = [str(e["text"]) for e in read_examples(validation_data, "language-modeling")]
    result = export_to_repository(model_dir, repo, name, version, atol, optimize, options, quantize or "fp32", texts)
    details = "" if result.fused_attention is None else f", {result.fused_attention} attention nodes fused"
    if result.quantization and result.generation:  # a language model's
        check = result.quantization
        details += (
            f"\nINT8: perplexity {check.perplexity_int8:.4g} vs {check.perplexity_fp32:.4g} in FP32 on "
            f"{check.texts} texts; greedy continuations as in FP32 on "
            f"{result.generation['quantization']['same']}/{result.generation['quantization']['prompts']} prompts"
        )
    elif result.quantization:
        check = result.quantization
        details += f"\nINT8: max |INT8 - FP32| = {check.max_abs_diff:.3g} (tolerance {check.atol:g})"
        if check.agreement is not None:
            details += f", same class as FP32 on {100 * check.agreement:.1f} % of {check.texts} texts"
        details += ", 7-bit weights (no 8-bit dot products on this CPU)" if check.reduce_range else ""
    emit(
        result.to_dict(),
        as_json,
        f"exported {name} version {result.version} ({result.heads}/{result.original_heads} heads) -> {result.model_path}\n"
        f"max |ONNX - PyTorch| = {result.validation.max_abs_diff:.3g} (tolerance {atol:g}){details}\n"
        f"front end: {result.front_end}"
        + (
            f"\ngeneration: {result.generation['name']} (greedy continuations equal transformers' on "
            f"{result.generation['exact_matches']} of {result.generation['prompts']} prompts)"
            if result.generation
            else ""
        ),
    )


def _export_translation(model_dir, repo, name, version, atol, options, validation_data, threads, as_json, precision):
    from exporter.data import read_examples
    from exporter.triton.translation import export_translation_to_repository

    sources = [e["source"] for e in read_examples(validation_data, "translation")] if validation_data else None
    atol = max(atol, 1e-3)  # step logits of a full vocabulary: the classifier default is needlessly tight
    result = export_translation_to_repository(
        model_dir, repo, name, version, options, sources, atol, threads=threads, precision=precision
    )
    check = result.validation
    int8 = result.quantization
    emit(
        result.to_dict(),
        as_json,
        f"exported {result.name} version {result.version} ({result.heads}/{result.original_heads} heads) -> "
        f"{result.folder}\ngreedy search == transformers on {check.exact_matches}/{check.sentences} sentences, "
        f"step logits within {check.max_logit_diff:.3g} (tolerance {atol:g})"
        + (f"\nINT8: the FP32 graphs' translation on {int8['same']}/{int8['sentences']} sentences" if int8 else ""),
    )


def server_options(command):
    """Adds the options that describe the embedded server's endpoints."""
    command = click.option(
        "--host",
        default=default_of(TritonServer, "host"),
        show_default=True,
        help="Address to bind, for HTTP, gRPC and metrics (loopback by default). WARNING: another "
        "address (0.0.0.0 included) serves every host that reaches it; Triton has no "
        "authentication: put a proxy with authentication in front.",
    )(command)
    for port in ("metrics_port", "grpc_port", "http_port"):
        command = click.option(
            f"--{port.replace('_', '-')}", default=default_of(TritonServer, port), show_default=True
        )(command)
    return command


@main.command()
@click.option("--repo", default="model_repo", show_default=True, type=click.Path(path_type=Path))
@server_options
@click.option(
    "--allow-model-control",
    is_flag=True,
    help="Let clients load and unload models (explicit mode). WARNING: any client that reaches the port "
    "can then load models, including model files sent in the request (a Python model), and so run any code "
    "in the server. Refused with a --host other than loopback unless --expose-model-control.",
)
@click.option(
    "--expose-model-control",
    is_flag=True,
    help="Confirm --allow-model-control on a --host other hosts can reach (see its warning).",
)
@click.option(
    "--on-failure",
    type=click.Choice(["restart", "exit"]),
    default="restart",
    show_default=True,
    help="When Triton dies, or a model's backend process does (Triton then fails that model's requests yet "
    "still reports it ready): restart the server, or exit with code 3 for a supervisor to act.",
)
@click.option(
    "--python",
    "python",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Python interpreter whose packages the backends import (default: this one); checked before start.",
)
@click.option("--log-file", type=click.Path(path_type=Path), default=None, help="Where Triton's log goes.")
@friendly_errors
def serve(
    repo: Path,
    http_port,
    grpc_port,
    metrics_port,
    host,
    allow_model_control,
    expose_model_control,
    on_failure,
    python,
    log_file,
):
    """Serve a model repository with the real Triton Inference Server until Ctrl-C or SIGTERM.

    \b
    The server and every model's backend processes are watched: a failure is reported (naming the
    model), and the server restarted (--on-failure restart) or stopped with exit code 3 (exit)."""
    server = TritonServer(
        repo,
        host,
        http_port,
        grpc_port,
        metrics_port,
        allow_model_control,
        log_file or repo.resolve().parent / "triton.log",
        expose_model_control=expose_model_control,
        **({"python": python} if python else {}),
    )
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        try:
            code = supervise(server, stop, on_failure, say=lambda line: click.echo(line, err=True), announce=_announce)
        finally:
            began = time.monotonic()
            problem = server.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if problem:
        click.echo(f"Triton did not stop cleanly: {problem} (log: {server.log_file})", err=True)
    elif code:
        click.echo(f"serving stopped on that failure (exit code {code}; log: {server.log_file})", err=True)
    else:
        click.echo(f"Triton stopped: every model unloaded, {time.monotonic() - began:.1f} s.")
    if code:
        sys.exit(code)


def _announce(server: TritonServer) -> None:
    """Prints the server's addresses, its models and its log."""
    client = TritonClient(server.http_url)
    try:
        models = client.models()
    finally:
        client.close()
    click.echo(f"Triton is ready: HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}")
    click.echo(f"models: {', '.join(m['name'] for m in models)}")
    click.echo(f"log: {server.log_file}   (Ctrl-C to stop)")


@main.command()
@click.argument("texts", nargs=-1, required=True)
@click.option("--model", required=True, help="A <name>_text model written by 'headprune export'.")
@click.option("--url", default="127.0.0.1:8000", show_default=True, help="HOST:PORT of a running Triton.")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="http", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def classify(texts, model, url, protocol, as_json):
    """Classify TEXTS with a served <name>_text model; prints the label and logits of each."""
    logits, labels = TritonClient(url, protocol).classify_text(model, list(texts))
    rows = [{"text": t, "label": label, "logits": row.tolist()} for t, label, row in zip(texts, labels, logits)]
    emit({"model": model, "results": rows}, as_json, "\n".join(f"{r['label']:>12s}  {r['text']}" for r in rows))


@main.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--model", required=True, help="A <name>_translate model written by 'headprune export'.")
@click.option(
    "--beams",
    type=click.IntRange(1),
    default=None,
    help="Beam size (1: greedy). Default: the checkpoint's generation config (num_beams), as transformers' "
    "generate; beam search is served only where the export reproduced transformers' beams.",
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(1),
    default=None,
    help="Token budget per translation. Default: the checkpoint's generation config (max_new_tokens, else "
    "max_length less the start token; with neither, 20 as in transformers), capped by the model's "
    "positions.",
)
@click.option("--url", default="127.0.0.1:8000", show_default=True, help="HOST:PORT of a running Triton.")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="http", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def translate(sources, model, beams, max_new_tokens, url, protocol, as_json):
    """Translate SOURCES with a served <name>_translate model; prints one translation per line."""
    translations = TritonClient(url, protocol).translate(model, list(sources), beams, max_new_tokens)
    emit(
        {"model": model, "results": [{"source": s, "translation": t} for s, t in zip(sources, translations)]},
        as_json,
        "\n".join(translations),
    )


@main.command()
@click.argument("prompts", nargs=-1, required=True)
@click.option(
    "--model", required=True, help="A <name>_generate model written by 'headprune export' (a language model)."
)
@click.option("--max-new-tokens", type=click.IntRange(1), default=None, help="Token budget per prompt (default: 32).")
@click.option("--url", default="127.0.0.1:8000", show_default=True, help="HOST:PORT of a running Triton.")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="http", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def generate(prompts, model, max_new_tokens, url, protocol, as_json):
    """Continue PROMPTS with a served <name>_generate model (greedy); prints one continuation per line."""
    continuations = TritonClient(url, protocol).generate(model, list(prompts), max_new_tokens)
    emit(
        {"model": model, "results": [{"prompt": p, "continuation": c} for p, c in zip(prompts, continuations)]},
        as_json,
        "\n".join(continuations),
    )


@main.command()
@click.option("--url", default="127.0.0.1:8000", show_default=True, help="HOST:PORT of a running Triton.")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="http", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def models(url, protocol, as_json):
    """List the models a running Triton serves, with their versions and states."""
    index = TritonClient(url, protocol).models()
    emit(
        {"url": url, "models": index},
        as_json,
        "\n".join(f"{m['name']:32s} version {m.get('version', '-'):>3s}  {m.get('state', '')}" for m in index),
    )


@main.command()
@click.argument("model")
@click.option(
    "--repo", default="model_repo", show_default=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--batch-size",
    default=default_of(TuneSettings, "batch"),
    show_default=True,
    help="Batch size of the throughput measurement.",
)
@click.option(
    "--concurrency",
    default=default_of(TuneSettings, "concurrency"),
    show_default=True,
    help="Concurrent clients of the throughput measurement.",
)
@click.option(
    "--latency-budget-ms",
    type=float,
    default=None,
    help="Largest acceptable p50 latency at batch 1; settings above it are not chosen (default: no budget).",
)
@click.option(
    "--instances",
    default=None,
    callback=lambda c, p, v: v and int_list(v),
    help="Instance counts to try, comma-separated (default: all that fit the cores).",
)
@click.option(
    "--threads",
    default=None,
    callback=lambda c, p, v: v and int_list(v),
    help="Intra-op thread counts to try, comma-separated (default: all that fit the cores, or with --instances 1 to "
    "the core count).",
)
@click.option(
    "--queue-delay-us",
    default="100",
    show_default=True,
    callback=lambda c, p, v: int_list(v),
    help="Dynamic batching delays to try, comma-separated.",
)
@click.option(
    "--seq-len",
    default=default_of(TuneSettings, "seq_len"),
    show_default=True,
    help="Tokens per example in the measurements.",
)
@click.option(
    "--trials", default=default_of(TuneSettings, "trials"), show_default=True, help="Interleaved trials per setting."
)
@click.option("--dry-run", is_flag=True, help="Measure and report, but leave config.pbtxt as it is.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write the result here (JSON)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@friendly_errors
def tune(
    model,
    repo,
    batch_size,
    concurrency,
    latency_budget_ms,
    instances,
    threads,
    queue_delay_us,
    seq_len,
    trials,
    dry_run,
    out,
    as_json,
):
    """Find the serving settings of MODEL (an exported classifier) that give the most throughput.

    \b
    Serves every combination of instances, ONNX Runtime threads per instance and thread spinning
    (at most one thread per core in all) side by side with MODEL's current settings, measures
    throughput at --batch-size and p50 latency at batch 1 in interleaved trials, and writes the
    fastest within --latency-budget-ms into MODEL's config.pbtxt, only if it is significantly faster
    than the current settings (95 % bootstrap interval of the ratio excludes 1)."""
    import os

    from serving.benchmark.latency import Speedup
    from serving.benchmark.tune import default_grid
    from serving.benchmark.tune import tune as run_tune
    from serving.progress import PhaseBars

    grid = default_grid(os.cpu_count() or 1, queue_delay_us, instances, threads)
    settings = TuneSettings(repo, model, batch_size, concurrency, latency_budget_ms, trials, seq_len=seq_len, grid=grid)
    bars = PhaseBars()
    try:
        result = run_tune(settings, write=not dry_run, out=out, phases=bars)
    finally:
        bars.close()
    lines = [f"{'settings':<24} {'examples/s':>10} {'vs current':>22} {'p50 b1 ms':>10}"]
    for index, row in enumerate(result.candidates):
        versus = "current" if index == 0 else Speedup.from_dict(row["speedup"]).format()
        lines.append(
            f"{row['label']:<24} {row['throughput']:>10.1f} {versus:>22} "
            f"{row['p50_batch1_ms']:>10.2f}{'' if row['within_budget'] else '  over budget'}"
        )
    verdict = (
        f"chosen: {result.chosen.label} ({result.speedup.format()} the current {result.current.label})"
        if result.chosen != result.current
        else f"kept the current settings ({result.current.label}): "
        "no setting was significantly faster within the budget"
    )
    written = " -> written to config.pbtxt" if result.written else (" (dry run: config unchanged)" if dry_run else "")
    emit(result.to_dict(), as_json, "\n".join(lines + [verdict + written]))
