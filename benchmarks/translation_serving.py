"""Serving generation: one Python model running both ONNX graphs vs a BLS loop over two served graphs.

The same exported translation model is served twice from one repository, by one Triton
server: ``<name>_translate`` runs ``encoder.onnx`` and ``decoder.onnx`` with ONNX Runtime
inside its own process (what ``headprune export`` writes); ``<name>_bls_translate`` runs
the same search code but sends the encoder call and every decoder step as a BLS request
to ``<name>_encoder`` and ``<name>_decoder``, served by the onnxruntime backend.
Both must translate identically; then greedy translation of test sentences is timed in
interleaved trials at each batch size, and the throughput ratio (BLS / one model) is
printed with its 95 % bootstrap interval and written to reports/bench/translation_serving.json.

Run from the repository root after ``make demo-mt`` (or pass --model):
    .venv/bin/python -m benchmarks.translation_serving [--model DIR] [--sentences 64] [--trials 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from tritonclient.grpc import model_config_pb2 as pb

from exporter.atomic import atomic_write_json
from exporter.data import read_examples
from exporter.errors import HeadpruneError
from exporter.onnx.seq2seq import DECODER_FILE, ENCODER_FILE
from exporter.training.settings import TranslationSettings
from exporter.triton.config import DeploymentOptions, read_config, write_config
from exporter.triton.layout import MODEL_FILE, ModelRepository
from exporter.triton.translation import export_translation_to_repository
from serving.benchmark.latency import LatencyStats, Speedup, bootstrap_throughput, ratios
from serving.client import TritonClient
from serving.demo.assets import default_cache
from serving.demo.tatoeba import SPLITS_FOLDER
from serving.demo.translation import model_folder
from serving.server.process import TritonServer, free_port

ONNX_TO_TRITON = {onnx.TensorProto.INT64: pb.TYPE_INT64, onnx.TensorProto.FLOAT: pb.TYPE_FP32}


def _graph_model(repository: ModelRepository, name: str, graph: Path) -> dict:
    """Serves ``graph`` as the unbatched onnxruntime model ``name``; returns its BLS spec (model, inputs, outputs)."""
    folder = repository.version_folder(name, 1)
    folder.mkdir(parents=True)
    shutil.copy2(graph, folder / MODEL_FILE)
    proto = onnx.load(str(graph), load_external_data=False).graph
    config = pb.ModelConfig(name=name, backend="onnxruntime", max_batch_size=0, default_model_filename=MODEL_FILE)
    for values, cls, target in (
        (proto.input, pb.ModelInput, config.input),
        (proto.output, pb.ModelOutput, config.output),
    ):
        for value in values:
            tensor = value.type.tensor_type
            target.append(
                cls(name=value.name, data_type=ONNX_TO_TRITON[tensor.elem_type], dims=[-1] * len(tensor.shape.dim))
            )
    config.instance_group.append(pb.ModelInstanceGroup(count=1, kind=pb.ModelInstanceGroup.KIND_CPU))
    write_config(config, repository.folder(name))
    return {"model": name, "inputs": [v.name for v in proto.input], "outputs": [v.name for v in proto.output]}


def add_bls_variant(repo: Path, name: str) -> str:
    """Adds ``<name>_encoder``, ``<name>_decoder`` and ``<name>_bls_translate`` (the BLS loop over them) beside the
    exported ``<name>_translate`` in ``repo``; returns the BLS model's name."""
    repository = ModelRepository(Path(repo))
    source = repository.folder(f"{name}_translate")
    version = source / str(max(repository.versions(f"{name}_translate")))
    bls = {
        part: _graph_model(repository, f"{name}_{part}", version / graph)
        for part, graph in (("encoder", ENCODER_FILE), ("decoder", DECODER_FILE))
        if (version / graph).exists()
    }
    served = f"{name}_bls_translate"
    shutil.copytree(version, repository.version_folder(served, 1))
    config = read_config(source / "config.pbtxt")
    config.name = served
    config.parameters["bls"].string_value = json.dumps(bls)
    write_config(config, repository.folder(served))
    return served


def _time(client: TritonClient, model: str, sentences: list[str], batch_size: int) -> tuple[list[float], float]:
    """Returns (milliseconds per request, sentences/s) of translating ``sentences`` in requests of ``batch_size``."""
    latencies, started = [], time.perf_counter()
    for start in range(0, len(sentences), batch_size):
        begin = time.perf_counter()
        client.translate(model, sentences[start : start + batch_size], batch_size=batch_size)
        latencies.append(1000 * (time.perf_counter() - begin))
    return latencies, len(sentences) / (time.perf_counter() - started)


def measure(
    model_dir: Path, sentences: list[str], batch_sizes: list[int], trials: int, log: Path | None = None
) -> dict:
    """Returns, per batch size, both variants' latency stats and the BLS / one-model throughput ratio, after checking
    that both translate ``sentences`` identically."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="headprune-bls-") as folder:
        repo = Path(folder) / "repo"
        export_translation_to_repository(
            model_dir,
            repo,
            "marian",
            options=DeploymentOptions(max_batch_size=max(batch_sizes)),
            sources=sentences[:50],
        )
        variants = {"one_model": "marian_translate", "bls": add_bls_variant(repo, "marian")}
        with TritonServer(
            repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), log_file=log
        ) as server:
            client = TritonClient(server.http_url)
            outputs = {v: client.translate(m, sentences, batch_size=max(batch_sizes)) for v, m in variants.items()}
            same = sum(a == b for a, b in zip(outputs["one_model"], outputs["bls"]))
            if same != len(sentences):
                raise HeadpruneError(
                    f"the BLS loop translated {len(sentences) - same} of {len(sentences)} sentences differently",
                    "this is a bug in the BLS runner",
                )
            cells = {(v, b): ([], []) for v in variants for b in batch_sizes}
            for trial in range(trials):
                for batch_size in batch_sizes:
                    for variant in list(variants) if trial % 2 == 0 else list(variants)[::-1]:
                        latencies, rate = _time(client, variants[variant], sentences, batch_size)
                        cells[variant, batch_size][0].append(latencies)
                        cells[variant, batch_size][1].append(rate)
            client.close()
    results = {"sentences": len(sentences), "trials": trials, "identical_translations": same, "batch_sizes": {}}
    for batch_size in batch_sizes:
        stats = {v: LatencyStats.from_trials(*cells[v, batch_size]) for v in variants}
        draws = {v: bootstrap_throughput(*cells[v, batch_size], rng) for v in variants}
        speedup = Speedup.between(stats["one_model"], stats["bls"], ratios(draws["one_model"], draws["bls"]))
        results["batch_sizes"][str(batch_size)] = {
            **{v: s.to_dict() for v, s in stats.items()},
            "bls_vs_one_model": speedup.to_dict(),
            "formatted": speedup.format(),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cache = default_cache()
    parser.add_argument(
        "--model",
        type=Path,
        default=model_folder(cache, TranslationSettings()) / "model",
        help="translation model folder (default: the one `make demo-mt` trained)",
    )
    parser.add_argument("--test", type=Path, default=cache / SPLITS_FOLDER / "test.jsonl")
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/translation_serving.json"))
    args = parser.parse_args()
    for path in (args.model, args.test):
        if not path.exists():
            raise SystemExit(f"'{path}' does not exist: run `make demo-mt` first, or pass --model and --test")
    sentences = [e["source"] for e in read_examples(args.test, "translation")[: args.sentences]]
    results = measure(args.model, sentences, [int(b) for b in args.batch_sizes.split(",")], args.trials)
    results["model"] = str(args.model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, results)
    print(
        f"{len(sentences)} sentences, greedy, {args.trials} interleaved trials; "
        f"identical translations {results['identical_translations']}/{len(sentences)}"
    )
    for batch_size, cell in results["batch_sizes"].items():
        print(
            f"batch {batch_size:>3}: one model {cell['one_model']['throughput']:.1f} sent/s, BLS loop "
            f"{cell['bls']['throughput']:.1f} sent/s; BLS / one model {cell['formatted']}"
        )
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
