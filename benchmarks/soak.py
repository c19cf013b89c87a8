"""Sustained load and overload through the text front end of a served pruned model.

``soak``: many requests at a fixed concurrency, a mix of batch sizes and text lengths, every answer
checked against the model's answer for the same text sent alone; p99 by quarter of the run and the
server's resident memory (server and backend processes) sampled throughout.
``overload``: more clients at once than the model's queue holds; the excess must be refused at once
with a clear error, the accepted requests answered correctly, and the server left healthy.

Run: make soak (the real MiniLM, 50 % of heads pruned, 20,000 requests at concurrency 32; writes
benchmarks/results/soak.json and docs/operations.md), or .venv/bin/python -m benchmarks.soak --help.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.memory import resident_mib
from exporter.errors import HeadpruneError
from serving.client import PROTOCOLS, TritonClient
from serving.server.process import TritonServer

TOLERANCE = 1e-3  # batched padding moves logits by about 1e-6; a mixed-up row moves them by far more


@dataclass
class Answer:
    """One request's outcome: its index, when it ended, its latency, and its error (None when correct)."""

    index: int
    ended: float
    latency_ms: float
    error: str | None


def references(url: str, model: str, texts: list[str]) -> dict[str, np.ndarray]:
    """Returns each text's logits from ``model`` when sent alone (the answer every batched request must give)."""
    client = TritonClient(url)
    try:
        return {text: client.classify_text(model, [text])[0][0] for text in texts}
    finally:
        client.close()


def _check(logits: np.ndarray, texts: list[str], expected: dict[str, np.ndarray]) -> str | None:
    for row, text in zip(logits, texts):
        if np.abs(row - expected[text]).max() > TOLERANCE:
            return f"wrong logits for {text[:40]!r}"
    return None


def _send(client: TritonClient, model: str, texts: list[str], expected: dict, index: int) -> Answer:
    started = time.perf_counter()
    try:
        logits, _ = client.classify_text(model, texts)
        error = _check(logits, texts, expected)
    except HeadpruneError as failure:
        error = failure.message
    ended = time.perf_counter()
    return Answer(index, ended, (ended - started) * 1000, error)


def server_mib(server: TritonServer) -> float:
    """Returns the resident memory of the server and its backend processes together, in MiB."""
    total = 0.0
    for pid in server.processes():
        with contextlib.suppress(OSError):  # the process ended while being read
            mib = resident_mib(pid)
            total += 0.0 if math.isnan(mib) else mib  # no VmRSS: the process is exiting
    return total


def _run_workers(count: int, work: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def soak(
    server: TritonServer,
    model: str,
    texts: list[str],
    requests: int,
    concurrency: int,
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8),
    warmup: float = 0.1,
    seed: int = 0,
    progress: Callable[[int], None] = lambda n: None,
) -> dict:
    """Sends ``requests`` requests of mixed batch sizes drawn from ``texts`` from ``concurrency`` clients (half HTTP,
    half gRPC); returns failures, p50/p99 per quarter, memory after warm-up and at the end, and the sample counts."""
    expected = references(server.http_url, model, texts)
    rng = random.Random(seed)
    plan = [rng.sample(texts, rng.choice(batch_sizes)) for _ in range(requests)]
    counter, answers, lock = itertools.count(), [], threading.Lock()
    memory: list[tuple[int, float]] = []  # (requests answered, MiB)
    done = threading.Event()

    def sample_memory() -> None:
        while not done.wait(0.5):
            memory.append((len(answers), server_mib(server)))

    def work(worker: int) -> None:
        protocol = PROTOCOLS[worker % 2]
        client = TritonClient(server.url(protocol), protocol)
        while (index := next(counter)) < requests:
            answer = _send(client, model, plan[index], expected, index)
            with lock:
                answers.append(answer)
            progress(1)
        client.close()

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    started = time.perf_counter()
    _run_workers(concurrency, work)
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    memory.append((len(answers), server_mib(server)))
    return summarize_soak(answers, memory, requests, concurrency, batch_sizes, wall, warmup)


def summarize_soak(
    answers: list[Answer],
    memory: list[tuple[int, float]],
    requests: int,
    concurrency: int,
    batch_sizes: tuple[int, ...],
    wall: float,
    warmup: float,
) -> dict:
    """Returns the soak's figures from its answers (in completion order) and memory samples."""
    answers = sorted(answers, key=lambda a: a.ended)
    quarters = np.array_split(np.array([a.latency_ms for a in answers]), 4)
    warm = int(warmup * requests)
    after_warmup = next((mib for answered, mib in memory if answered >= warm), memory[-1][1])
    later = [mib for answered, mib in memory if answered >= warm]
    failures = [a for a in answers if a.error]
    return {
        "requests": requests,
        "answered": len(answers),
        "concurrency": concurrency,
        "batch_sizes": list(batch_sizes),
        "failed": len(failures),
        "first_failures": sorted({a.error for a in failures})[:5],
        "seconds": round(wall, 1),
        "requests_per_s": round(len(answers) / wall, 1),
        "p50_ms_by_quarter": [round(float(np.percentile(q, 50)), 2) for q in quarters],
        "p99_ms_by_quarter": [round(float(np.percentile(q, 99)), 2) for q in quarters],
        "p99_last_vs_first": round(float(np.percentile(quarters[-1], 99) / np.percentile(quarters[0], 99)), 3),
        "memory_mib_after_warmup": round(after_warmup, 1),
        "memory_mib_max_after_warmup": round(max(later), 1),
        "memory_mib_end": round(memory[-1][1], 1),
        "memory_growth_after_warmup": round(max(later) / after_warmup - 1, 4),
        "memory_samples": len(memory),
        "warmup_requests": warm,
    }


def overload(server: TritonServer, model: str, texts: list[str], clients: int) -> dict:
    """Sends one request from each of ``clients`` clients at the same moment; returns how many were accepted
    (and answered correctly) or refused as overloaded, how fast each kind came back, and whether the server
    answered correctly afterwards."""
    expected = references(server.http_url, model, texts)
    start = threading.Barrier(clients, timeout=120)
    answers = [Answer(index, 0.0, 0.0, "the client never sent its request") for index in range(clients)]

    def work(index: int) -> None:
        protocol = PROTOCOLS[index % 2]
        client = TritonClient(server.url(protocol), protocol)
        try:
            start.wait()
            answers[index] = _send(client, model, [texts[index % len(texts)]], expected, index)
        finally:
            client.close()

    _run_workers(clients, work)
    refused = [a for a in answers if a.error and "overloaded" in a.error]
    other = [a for a in answers if a.error and "overloaded" not in a.error]
    accepted = [a for a in answers if not a.error]
    client = TritonClient(server.http_url)
    try:
        after = _send(client, model, texts[:1], expected, -1)
        healthy = server.process.poll() is None and client.is_ready()
    finally:
        client.close()
    median = lambda xs: round(float(np.median([a.latency_ms for a in xs])), 1) if xs else None  # noqa: E731
    return {
        "clients": clients,
        "accepted": len(accepted),
        "refused": len(refused),
        "other_errors": len(other),
        "first_errors": sorted({a.error for a in refused + other})[:3],
        "refused_median_ms": median(refused),
        "accepted_median_ms": median(accepted),
        "healthy_after": healthy,
        "correct_after": after.error is None,
    }


def _sentences(count: int, seed: int) -> list[str]:
    """Returns review-like sentences of 3 to 60 words (text lengths mixed, as real traffic is)."""
    words = (
        "the movie was great fun but the plot felt long and slow while every actor gave a really moving "
        "performance in a story about love loss and a dull small town"
    ).split()
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.choice((3, 8, 15, 30, 60)))) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Soak and overload the served 50 %-pruned MiniLM; writes "
        "benchmarks/results/soak.json and docs/operations.md."
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--clients", type=int, default=256, help="overload: clients sent at once")
    parser.add_argument("--queue", type=int, default=16, help="overload: the queue limit of the overloaded model")
    parser.add_argument("--repo", type=Path, default=Path("outputs/soak/repo"))
    args = parser.parse_args()

    import shutil

    from benchmarks.models import prepare_models
    from benchmarks.operations_doc import render
    from benchmarks.suite import save
    from exporter.triton.config import DeploymentOptions
    from exporter.triton.repository import export_to_repository
    from serving.demo.assets import default_cache
    from serving.progress import progress_bar
    from serving.server.process import free_port

    started = time.monotonic()
    models = prepare_models(default_cache(), headline=False)  # the soak serves the 50 %-pruned model only
    shutil.rmtree(args.repo, ignore_errors=True)
    export_to_repository(models.pruned50, args.repo, "pruned50")
    limited = DeploymentOptions(max_batch_size=8, max_queue_size=args.queue)
    export_to_repository(models.pruned50, args.repo, "pruned50_limited", options=limited)
    texts = _sentences(64, seed=0)
    with TritonServer(args.repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()) as server:
        with progress_bar("soak requests", args.requests) as advance:
            soaked = soak(server, "pruned50_text", texts, args.requests, args.concurrency, progress=advance)
        overloaded = overload(server, "pruned50_limited_text", texts, args.clients)
    save(
        "soak",
        {
            "model": "minilm_pruned50 (36 of 72 heads pruned)",
            "soak": soaked,
            "overload": {**overloaded, "max_queue_size": args.queue, "max_batch_size": limited.max_batch_size},
        },
        started,
    )
    print(f"wrote {render(Path('benchmarks/results'), Path('docs'))}")


if __name__ == "__main__":
    main()
