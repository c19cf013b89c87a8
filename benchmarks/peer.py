"""The peer, side by side: the same checkpoint pruned with the same plan by the classic tooling (transformers 4.x
``prune_heads``) and exported with Optimum at O2, in its own virtual environment, served by the same Triton next to
ours; throughput ours / peer's at batch 1 and 16, and both outputs against each other."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.inprocess import MINILM_VOCAB, feed, session
from benchmarks.served import stage_onnx_models
from exporter.atomic import atomic_write_text
from serving.benchmark.latency import speedup_of_trials
from serving.benchmark.loadgen import Cell, interleaved_windows
from serving.client import TritonClient
from serving.server.process import TritonServer, free_port

PEER_REQUIREMENTS = ["torch==2.13.0", "transformers==4.46.3", "optimum[onnxruntime]==1.23.3", "onnxscript"]


def peer_python(folder: Path) -> Path:
    """Returns the peer environment's Python, creating the environment (cached in ``folder``) when missing or made
    from other requirements."""
    python, stamp = folder / "bin" / "python", folder / "requirements.txt"
    wanted = "\n".join(PEER_REQUIREMENTS)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True)
    for requirement in (
        PEER_REQUIREMENTS[:1],
        PEER_REQUIREMENTS[1:],
    ):  # the local CPU torch first, as `make setup` does
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *requirement], check=True)
    atomic_write_text(stamp, wanted)
    return python


def export_peer(python: Path, checkpoint: Path, plan: Path, out: Path) -> dict:
    """Runs the peer's prune + export + O2 in its environment; returns its summary (ONNX path, versions)."""
    script = Path(__file__).with_name("peer_export.py")
    result = subprocess.run(
        [str(python), str(script), str(checkpoint), str(plan), str(out)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"the peer's export failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def compare_with_peer(
    ours: Path, peer_onnx: Path, trials: int = 5, seq_len: int = 128, vocab_size: int = MINILM_VOCAB
) -> dict:
    """Serves both ONNX files in one Triton; returns their largest logit difference on the same inputs and ours /
    peer's throughput at batch 1 and 16 (interleaved trials, bootstrap intervals)."""
    with tempfile.TemporaryDirectory(prefix="headprune-peer-") as folder:
        repo = Path(folder)
        stage_onnx_models(repo, {"ours": ours, "peer": peer_onnx}, 16)
        local = session(ours)
        cells = [
            Cell("batch1", feed(local, 1, seq_len, vocab_size=vocab_size), 1, 24),
            Cell("batch16", feed(local, 16, seq_len, vocab_size=vocab_size), 1, 4),
        ]
        ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
        with TritonServer(repo, **ports) as server:
            client = TritonClient(server.http_url, "http")
            probe = feed(local, 8, min(seq_len, 64), seed=3, vocab_size=vocab_size)
            logits = {name: client.infer(name, probe, ["logits"])["logits"] for name in ("ours", "peer")}
            client.close()
            windows = interleaved_windows(
                lambda: TritonClient(server.http_url, "http"), ["ours", "peer"], cells, trials, ["logits"]
            )
    rng = np.random.default_rng(0)

    def measured(name: str, label: str) -> tuple[list[list[float]], list[float]]:
        cell_windows = windows[name][label]
        return [w.latencies_ms for w in cell_windows], [w.throughput for w in cell_windows]

    speedups = {
        cell.label: speedup_of_trials(measured("peer", cell.label), measured("ours", cell.label), rng).to_dict()
        for cell in cells
    }
    difference = float(np.abs(logits["ours"] - logits["peer"]).max())
    return {
        "speedup_ours_over_peer": speedups,
        "max_abs_logit_difference": difference,
        "same_predictions": bool((logits["ours"].argmax(1) == logits["peer"].argmax(1)).all()),
        "trials": trials,
        "seq_len": seq_len,
    }
