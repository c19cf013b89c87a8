"""Memory of served models: each model instance runs in its own Python backend stub process, so a model's
server-side resident memory is that process's, read from /proc after a warm-up request."""

from __future__ import annotations

from pathlib import Path

from serving.benchmark.compare import latency_inputs
from serving.benchmark.deployment import describe_deployment
from serving.client import TritonClient
from serving.server.process import TritonServer, free_port

BYTES_PER_WEIGHT = 4  # FP32


def resident_mib(pid: int) -> float:
    """Returns the resident set size of ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def served_memory(repo: Path, names: list[str], batch: int = 16, seq_len: int = 128) -> dict:
    """Returns, per model: stub resident memory (MiB) idle and after requests at ``batch``, ONNX bytes, parameters
    and the bytes of FP32 weights pruning removed (against ``names[0]``, the unpruned model); and the server
    process's own memory."""
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    rows = {}
    with TritonServer(repo, **ports) as server:
        client = TritonClient(server.http_url, "http")
        stubs = server.model_processes()
        try:
            for name in names:
                facts = describe_deployment(repo, name, seq_len)
                pids = stubs.get(name, [])
                idle = sum(resident_mib(p) for p in pids)
                inputs = latency_inputs(facts, batch, seq_len, 0)
                for _ in range(3):
                    client.infer(name, inputs, ["logits"])
                rows[name] = {
                    "stub_processes": len(pids),
                    "resident_mib_idle": idle,
                    "resident_mib_after_requests": sum(resident_mib(p) for p in pids),
                    "onnx_bytes": facts.onnx_bytes,
                    "parameters": facts.parameters,
                    "precision": facts.precision,
                    "heads": facts.heads,
                }
            unpruned = rows[names[0]]["parameters"]
            for row in rows.values():
                row["weight_bytes_removed"] = (unpruned - row["parameters"]) * BYTES_PER_WEIGHT
            server_rss = resident_mib(server.process.pid)
        finally:
            client.close()
    return {
        "batch": batch,
        "seq_len": seq_len,
        "models": rows,
        "server_process_mib": server_rss,
        "note": "one stub process per model instance; resident memory includes the Python interpreter and "
        "onnxruntime (the same for every model)",
    }
