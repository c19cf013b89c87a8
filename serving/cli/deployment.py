"""CLI commands that deploy and serve: export, serve, classify, translate, models."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from exporter.triton.config import DeploymentOptions
from serving.cli.app import default_of, emit, friendly_errors, main
from serving.client import PROTOCOLS, TritonClient
from serving.server.process import TritonServer


@main.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repo", default="model_repo", show_default=True, type=click.Path(path_type=Path), help="Triton model repository.")
@click.option("--name", required=True, help="Model name in the repository.")
@click.option("--version", type=int, default=None, help="Version number (default: the next free one).")
@click.option("--atol", default=1e-4, show_default=True, help="Largest accepted |ONNX - PyTorch| difference.")
@click.option("--optimize", is_flag=True, help="Fuse attention with each layer's real head count (validated).")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Classifiers: ONNX Runtime dynamic INT8 weights (checked against the FP32 graph; measure the "
                   "accuracy with `compare`).")
@click.option("--max-batch-size", default=default_of(DeploymentOptions, "max_batch_size"), show_default=True)
@click.option("--instances", default=default_of(DeploymentOptions, "instances"), show_default=True, help="Model instances (instance_group count).")
@click.option("--kind", type=click.Choice(["cpu", "gpu"]), default=default_of(DeploymentOptions, "kind"), show_default=True, help="Instance kind.")
@click.option("--queue-delay-us", default=default_of(DeploymentOptions, "queue_delay_us"), show_default=True, help="Dynamic batching max queue delay (microseconds).")
@click.option("--tensorrt", is_flag=True, help="Add the ORT TensorRT accelerator block (GPU deployments).")
@click.option("--max-length", default=default_of(DeploymentOptions, "max_length"), show_default=True, help="Token limit of the text front end.")
@click.option("--validation-data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Translation models: source sentences (JSONL/CSV/TSV, 'source' column) to validate greedy search on "
                   "(default: seeded pseudo-sentences).")
@click.option("--threads", default=0, show_default=True, help="Translation models: ONNX Runtime threads in the server (0: all).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@friendly_errors
def export(model_dir: Path, repo: Path, name: str, version, atol, optimize, quantize, max_batch_size, instances, kind,
           queue_delay_us, tensorrt, max_length, validation_data, threads, as_json):
    """Export the model in MODEL_DIR (pruned or not) to ONNX in a Triton repository.

    \b
    A classifier: <repo>/<name>/<version>/model.onnx and config.pbtxt, plus the text front end
    <name>_text (TEXT in; tokenises, calls <name>, returns LOGITS and LABEL). The ONNX file is
    checked against PyTorch on fresh shapes; above --atol nothing is written.
    A translation model (Marian, BART, mBART): <name>_translate, with encoder.onnx and a decoder
    step with a KV cache sized per layer (SOURCE in, TRANSLATION out; greedy or beam search).
    Its greedy search must give transformers' tokens, step logits within --atol (default 1e-3 there)."""
    from exporter.pruning.checkpoint import model_task

    options = DeploymentOptions(max_batch_size=max_batch_size, instances=instances, kind=kind,
                                queue_delay_us=queue_delay_us, tensorrt=tensorrt, max_length=max_length)
    if model_task(model_dir) == "translation":
        if quantize or optimize:
            raise click.UsageError("--quantize and --optimize apply to classifiers; translation graphs are exported "
                                   "as they are (FP32)")
        _export_translation(model_dir, repo, name, version, atol, options, validation_data, threads, as_json)
        return
    from exporter.triton.repository import export_to_repository

    result = export_to_repository(model_dir, repo, name, version, atol, optimize, options, quantize or "fp32")
    details = "" if result.fused_attention is None else f", {result.fused_attention} attention nodes fused"
    if result.quantization:
        details += (f"\nINT8: max |INT8 - FP32| = {result.quantization.max_abs_diff:.3g} "
                    f"(tolerance {result.quantization.atol:g})")
    emit(result.to_dict(), as_json,
         f"exported {name} version {result.version} ({result.heads}/{result.original_heads} heads) -> {result.model_path}\n"
         f"max |ONNX - PyTorch| = {result.validation.max_abs_diff:.3g} (tolerance {atol:g}){details}\n"
         f"text front end: {result.text_model}")


def _export_translation(model_dir, repo, name, version, atol, options, validation_data, threads, as_json):
    from exporter.data import read_examples
    from exporter.triton.translation import export_translation_to_repository

    sources = [e["source"] for e in read_examples(validation_data, "translation")] if validation_data else None
    atol = max(atol, 1e-3)  # step logits of a full vocabulary: the classifier default is needlessly tight
    result = export_translation_to_repository(model_dir, repo, name, version, options, sources, atol, threads=threads)
    check = result.validation
    emit(result.to_dict(), as_json,
         f"exported {result.name} version {result.version} ({result.heads}/{result.original_heads} heads) -> "
         f"{result.folder}\ngreedy search == transformers on {check.exact_matches}/{check.sentences} sentences, "
         f"step logits within {check.max_logit_diff:.3g} (tolerance {atol:g})")


def server_options(command):
    """Adds the options that describe the embedded server's endpoints."""
    command = click.option("--host", default=default_of(TritonServer, "host"), show_default=True,
                           help="Address to bind (loopback by default).")(command)
    for port in ("metrics_port", "grpc_port", "http_port"):
        command = click.option(f"--{port.replace('_', '-')}", default=default_of(TritonServer, port),
                               show_default=True)(command)
    return command


@main.command()
@click.option("--repo", default="model_repo", show_default=True, type=click.Path(path_type=Path))
@server_options
@click.option("--allow-model-control", is_flag=True,
              help="Let clients load and unload models (explicit mode). WARNING: any client that reaches the port "
                   "can then load models, including model files sent in the request (a Python model), and so run any code "
                   "in the server.")
@click.option("--log-file", type=click.Path(path_type=Path), default=None, help="Where Triton's log goes.")
@friendly_errors
def serve(repo: Path, http_port, grpc_port, metrics_port, host, allow_model_control, log_file):
    """Serve a model repository with the real Triton Inference Server until Ctrl-C or SIGTERM."""
    server = TritonServer(repo, host, http_port, grpc_port, metrics_port, allow_model_control,
                          log_file or repo.resolve().parent / "triton.log")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with server:
        models = TritonClient(server.http_url).models()
        click.echo(f"Triton is ready: HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}")
        click.echo(f"models: {', '.join(m['name'] for m in models)}")
        click.echo(f"log: {server.log_file}   (Ctrl-C to stop)")
        while not stop.wait(0.5):
            if server.process.poll() is not None:
                raise click.ClickException(f"Triton stopped unexpectedly: {server.failure_reason()}")
    click.echo("Triton stopped.")


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
    emit({"model": model, "results": rows}, as_json,
         "\n".join(f"{r['label']:>12s}  {r['text']}" for r in rows))


@main.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--model", required=True, help="A <name>_translate model written by 'headprune export'.")
@click.option("--beams", default=1, show_default=True, help="Beam size (1: greedy).")
@click.option("--max-new-tokens", type=int, default=None, help="Token budget per translation (default: the model's).")
@click.option("--url", default="127.0.0.1:8000", show_default=True, help="HOST:PORT of a running Triton.")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="http", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def translate(sources, model, beams, max_new_tokens, url, protocol, as_json):
    """Translate SOURCES with a served <name>_translate model; prints one translation per line."""
    translations = TritonClient(url, protocol).translate(model, list(sources), beams, max_new_tokens)
    emit({"model": model, "results": [{"source": s, "translation": t} for s, t in zip(sources, translations)]},
         as_json, "\n".join(translations))


@main.command()
@click.option("--url", default="127.0.0.1:8000", show_default=True, help="HOST:PORT of a running Triton.")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="http", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def models(url, protocol, as_json):
    """List the models a running Triton serves, with their versions and states."""
    index = TritonClient(url, protocol).models()
    emit({"url": url, "models": index}, as_json,
         "\n".join(f"{m['name']:32s} version {m.get('version', '-'):>3s}  {m.get('state', '')}" for m in index))
