"""In-process ONNX Runtime measurements the suite compares side by side: alternating blocks of runs with idle
gaps between them (ONNX Runtime's threads spin after each run and would slow whatever runs next), ratios with
the same hierarchical bootstrap as the served measurements, and the share of time spent in attention."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.benchmark.compare import token_inputs
from serving.benchmark.latency import LatencyStats, Speedup, speedup_of_trials

# Per-head work of a BERT layer in the exported graph: the attention block minus its residual layer norm.
ATTENTION_NODES = ("/attention/self/", "/attention/output/dense/")
IDLE_GAP_S = 0.2
MINILM_VOCAB = 30522


def session(path: str | Path, threads: int = 0, spinning: bool = True, profile: bool = False) -> ort.InferenceSession:
    """Returns a CPU session with ``threads`` intra-op threads (0: ONNX Runtime's default)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.enable_profiling = profile
    if profile:
        options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "headprune-profile")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feed(
    sess: ort.InferenceSession, batch: int, seq_len: int, seed: int = 0, vocab_size: int = MINILM_VOCAB
) -> dict[str, np.ndarray]:
    """Returns fixed random inputs of shape (batch, seq_len) for the session's inputs (ids below ``vocab_size``)."""
    return token_inputs([i.name for i in sess.get_inputs()], vocab_size, batch, seq_len, seed)


def timed_blocks(
    runs: dict[str, Callable[[], object]], rounds: int, block_s: float = 0.6
) -> dict[str, list[list[float]]]:
    """Runs each callable in turn, one block of about ``block_s`` seconds per round (order rotated each round, an idle
    gap after each block); returns {name: [per-run latencies in ms of each block]}."""
    names = list(runs)
    per_block = {}
    for name, run in runs.items():  # warm-up, and how many runs fill a block
        run()
        began = time.perf_counter()
        run()
        per_block[name] = max(2, int(block_s / max(time.perf_counter() - began, 1e-4)))
        time.sleep(IDLE_GAP_S)
    blocks: dict[str, list[list[float]]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            latencies = []
            for _ in range(per_block[name]):
                began = time.perf_counter()
                runs[name]()
                latencies.append((time.perf_counter() - began) * 1000)
            blocks[name].append(latencies)
            time.sleep(IDLE_GAP_S)
    return blocks


def block_stats(blocks: list[list[float]], batch: int) -> LatencyStats:
    """Returns latency statistics of timed blocks (each block a trial; throughput in examples/s)."""
    return LatencyStats.from_trials(blocks, _throughputs(blocks, batch))


def _throughputs(blocks: list[list[float]], batch: int) -> list[float]:
    return [batch * len(b) / (sum(b) / 1000) for b in blocks]


def speedup(baseline: list[list[float]], candidate: list[list[float]], batch: int, seed: int = 0) -> Speedup:
    """Returns candidate / baseline throughput of two sets of timed blocks, with its bootstrap interval."""
    return speedup_of_trials(
        (baseline, _throughputs(baseline, batch)),
        (candidate, _throughputs(candidate, batch)),
        np.random.default_rng(seed),
    )


def attention_share(
    path: str | Path, batch: int, seq_len: int, threads: int = 0, runs: int = 10, vocab_size: int = MINILM_VOCAB
) -> float:
    """Returns the share of kernel time ONNX Runtime spends in per-head attention nodes (``ATTENTION_NODES``)."""
    sess = session(path, threads, profile=True)
    inputs = feed(sess, batch, seq_len, vocab_size=vocab_size)
    for _ in range(runs):
        sess.run(None, inputs)
    profile = Path(sess.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    kernels = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    total = sum(e["dur"] for e in kernels)
    attention = sum(e["dur"] for e in kernels if any(p in e["name"] for p in ATTENTION_NODES))
    return attention / total if total else 0.0
