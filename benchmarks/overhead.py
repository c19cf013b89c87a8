"""Serving overhead: the same ONNX file run in process and through Triton (HTTP and gRPC with tritonclient, and
HTTP with a second, minimal load generator: one keep-alive connection, Triton's JSON protocol), measured in
alternating blocks with idle gaps; client CPU time per request next to the server's compute time, and the serving
floor: the same requests to a model that does no work, served next to it."""

from __future__ import annotations

import http.client
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from benchmarks.inprocess import IDLE_GAP_S, block_stats, session, timed_blocks
from benchmarks.served import stage_onnx_models
from exporter.triton.layout import MODEL_FILE, ModelRepository
from serving.benchmark.compare import latency_inputs, server_breakdown
from serving.benchmark.deployment import describe_deployment
from serving.client import TritonClient
from serving.server.process import TritonServer, free_port


class RawHttpClient:
    """The second load generator: Triton's JSON inference protocol over one kept-alive ``http.client`` connection."""

    def __init__(self, url: str):
        host, port = url.split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=60)

    def infer(self, model: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Returns the logits of one request."""
        body = json.dumps(
            {
                "inputs": [
                    {"name": n, "shape": list(a.shape), "datatype": "INT64", "data": a.ravel().tolist()}
                    for n, a in arrays.items()
                ],
                "outputs": [{"name": "logits"}],
            }
        )
        self.connection.request("POST", f"/v2/models/{model}/infer", body, {"Content-Type": "application/json"})
        response = self.connection.getresponse()
        data = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"{model}: HTTP {response.status}: {data}")
        return np.asarray(data["outputs"][0]["data"])

    def close(self) -> None:
        """Closes the connection."""
        self.connection.close()


FLOOR_MODEL = "serving_floor"


def write_floor_model(path: Path, input_names: list[str], labels: int = 2) -> Path:
    """Writes an ONNX classifier that does no work (its logits are the first input's first ``labels`` ids, cast to
    float) with the given INT64 inputs; returns ``path``."""
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "tokens"]) for name in input_names]
    constants = [
        helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [1], [value]))
        for name, value in (("start", 0), ("end", labels), ("axis", 1))
    ]
    nodes = [
        *constants,
        helper.make_node("Slice", [input_names[0], "start", "end", "axis"], ["first_ids"]),
        helper.make_node("Cast", ["first_ids"], ["logits"], to=TensorProto.FLOAT),
    ]
    output = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", labels])
    model = helper.make_model(
        helper.make_graph(nodes, FLOOR_MODEL, inputs, [output]), opset_imports=[helper.make_opsetid("", 17)]
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def measure_overhead(repo: Path, model: str, batch_sizes: list[int], rounds: int = 3, seq_len: int = 128) -> dict:
    """Returns, per batch size, p50 latency in process and through each client, their ratios, client CPU time per
    request and Triton's compute time per request; ``floor_*`` paths send the same requests to a model that does no
    work, served (for the duration of the measurement) from the same repository."""
    facts = describe_deployment(repo, model, seq_len)
    onnx_path = ModelRepository(repo).version_folder(model, facts.version) / MODEL_FILE
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    with tempfile.TemporaryDirectory(prefix="headprune-floor-") as folder:
        floor = write_floor_model(Path(folder) / MODEL_FILE, list(facts.inputs))
        stage_onnx_models(repo, {FLOOR_MODEL: floor}, max(batch_sizes))
        try:
            results = _measure(repo, model, facts, onnx_path, ports, batch_sizes, rounds, seq_len)
        finally:
            shutil.rmtree(repo / FLOOR_MODEL)
    return {"model": model, "seq_len": seq_len, "rounds": rounds, "batch_sizes": results}


def _measure(
    repo: Path, model: str, facts, onnx_path: Path, ports: dict, batch_sizes: list[int], rounds: int, seq_len: int
) -> dict:
    results = {}
    with TritonServer(repo, **ports) as server:
        local = session(onnx_path)
        clients = {"http": TritonClient(server.http_url, "http"), "grpc": TritonClient(server.grpc_url, "grpc")}
        raw = RawHttpClient(server.http_url)
        cpu: dict[str, float] = {}
        try:
            for batch in batch_sizes:
                inputs = latency_inputs(facts, batch, seq_len, seed=0)
                runs = {
                    "in_process": lambda: local.run(None, inputs),
                    **{f"triton_{p}": (lambda c=c: c.infer(model, inputs, ["logits"])) for p, c in clients.items()},
                    "triton_http_raw": lambda: raw.infer(model, inputs),
                    **{
                        f"floor_{p}": (lambda c=c: c.infer(FLOOR_MODEL, inputs, ["logits"])) for p, c in clients.items()
                    },
                }
                cpu = {name: 0.0 for name in runs}
                counts = {name: 0 for name in runs}

                def counted(name, run):
                    def wrapped():
                        began = time.process_time()
                        run()
                        cpu[name] += time.process_time() - began
                        counts[name] += 1

                    return wrapped

                before = clients["http"].statistics(model)
                # Longer blocks for large batches: a 0.6 s block would hold two 300 ms requests at batch 16.
                blocks = timed_blocks(
                    {name: counted(name, run) for name, run in runs.items()}, rounds, block_s=0.15 * max(batch, 4)
                )
                after = clients["http"].statistics(model)
                stats = {name: block_stats(b, batch) for name, b in blocks.items()}
                local_p50 = stats["in_process"].p50
                results[str(batch)] = {
                    name: {
                        "p50_ms": s.p50,
                        "requests": s.requests,
                        "blocks": s.trials,
                        "ratio_to_in_process": s.p50 / local_p50,
                        "added_ms": s.p50 - local_p50,
                        "client_cpu_ms_per_request": 1000 * cpu[name] / max(counts[name], 1),
                    }
                    for name, s in stats.items()
                }
                results[str(batch)]["server_compute_infer_ms"] = (
                    server_breakdown(before, after, model)["compute_infer_us"] / 1000
                )
                time.sleep(IDLE_GAP_S)
        finally:
            for client in clients.values():
                client.close()
            raw.close()
    return results
