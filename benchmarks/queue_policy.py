"""What a queue limit costs in the bundled Triton (2.51): the same model exported with the default (no queue policy)
and with a queue limit, served side by side, one request after another and four at once; latency, throughput and
the share of requests held about 500 ms by the batcher."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.inprocess import MINILM_VOCAB
from benchmarks.served import export_variants
from exporter.triton.config import DeploymentOptions
from serving.benchmark.compare import token_inputs
from serving.benchmark.loadgen import Cell, Window, interleaved_windows
from serving.client import TritonClient
from serving.server.process import TritonServer, free_port

# The limits the exporter wrote by default before they were found to cost latency.
LIMITED = {"max_queue_size": 256, "queue_timeout_ms": 30_000}
HELD_MS = 400  # a request this much slower than the model's p50 waited for the batcher's 500 ms timeout


def summarize(windows: list[Window]) -> dict:
    """Returns p50 and mean latency, throughput and how many requests were held (over ``HELD_MS`` past the p50)."""
    latencies = np.concatenate([w.latencies_ms for w in windows])
    p50 = float(np.median(latencies))
    examples = sum(len(w.latencies_ms) * w.batch_size for w in windows)
    return {
        "p50_ms": p50,
        "mean_ms": float(latencies.mean()),
        "requests": int(latencies.size),
        "held": int((latencies > p50 + HELD_MS).sum()),
        "throughput": examples / sum(w.wall_s for w in windows),
    }


def measure_queue_policy(
    checkpoint: Path, trials: int = 3, seq_len: int = 128, requests: int = 40, vocab_size: int = MINILM_VOCAB
) -> dict:
    """Exports ``checkpoint`` twice (default options, and with LIMITED), serves both in one Triton and returns each
    one's summary at concurrency 1 and 4 (batch 1, ``requests`` per window, interleaved trials)."""
    with tempfile.TemporaryDirectory(prefix="headprune-queue-") as folder:
        repo = Path(folder)
        export_variants(
            {
                "default": (checkpoint, "fp32"),
                "limited": (checkpoint, "fp32", {"options": DeploymentOptions(**LIMITED)}),
            },
            repo,
            16,
        )
        ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
        with TritonServer(repo, **ports) as server:
            client = TritonClient(server.http_url)
            arrays = token_inputs(
                [spec["name"] for spec in client.config("default")["input"]], vocab_size, 1, seq_len, seed=0
            )
            client.close()
            cells = [Cell("concurrency1", arrays, 1, requests), Cell("concurrency4", arrays, 4, requests)]
            windows = interleaved_windows(
                lambda: TritonClient(server.http_url, "http"), ["default", "limited"], cells, trials, ["logits"]
            )
    return {
        "limited": LIMITED,
        "trials": trials,
        "seq_len": seq_len,
        "requests_per_window": requests,
        "held_ms": HELD_MS,
        "models": {
            name: {label: summarize(cell_windows) for label, cell_windows in by_cell.items()}
            for name, by_cell in windows.items()
        },
    }
