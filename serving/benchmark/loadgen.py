"""Closed-loop load generation against Triton: C concurrent clients, each sending one request at a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from serving.client import TritonClient


@dataclass
class Window:
    """One measurement window: request latencies and the wall time the window took."""

    latencies_ms: list[float]
    wall_s: float
    batch_size: int

    @property
    def throughput(self) -> float:
        """Returns examples per second over the window."""
        return len(self.latencies_ms) * self.batch_size / self.wall_s if self.wall_s > 0 else 0.0


def run_window(
    make_client: Callable[[], TritonClient],
    model: str,
    arrays: dict[str, np.ndarray],
    outputs: list[str],
    concurrency: int,
    requests: int,
) -> Window:
    """Sends ``requests`` requests with ``concurrency`` clients in parallel; returns the window.

    Raises the first client error (a HeadpruneError) after all threads stopped.
    """
    clients = [make_client() for _ in range(concurrency)]
    remaining = [requests]
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[BaseException] = []
    start_line = threading.Barrier(concurrency + 1)

    def worker(client: TritonClient) -> None:
        start_line.wait()
        while not errors:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            began = time.perf_counter()
            try:
                client.infer(model, arrays, outputs)
            except BaseException as error:  # surfaced to the caller below
                errors.append(error)
                return
            elapsed = (time.perf_counter() - began) * 1000
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in clients]
    for thread in threads:
        thread.start()
    start_line.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    for client in clients:
        client.close()
    if errors:
        raise errors[0]
    return Window(latencies, wall, len(next(iter(arrays.values()))))


@dataclass
class Cell:
    """One kind of request a measurement repeats: its inputs, concurrency and requests per window."""

    label: str
    arrays: dict[str, np.ndarray]
    concurrency: int
    requests: int


def interleaved_windows(
    make_client: Callable[[], TritonClient],
    models: list[str],
    cells: list[Cell],
    trials: int,
    outputs: list[str],
    advance: Callable[[int], None] = lambda n=1: None,
) -> dict[str, dict[str, list[Window]]]:
    """Measures every cell of every model once per trial, the model order rotated each trial (a one-request warm-up
    before each model's cells); returns {model: {cell label: [window per trial]}}."""
    windows: dict[str, dict[str, list[Window]]] = {m: {c.label: [] for c in cells} for m in models}
    for trial in range(trials):
        shift = trial % len(models)
        for model in models[shift:] + models[:shift]:
            run_window(make_client, model, cells[0].arrays, outputs, 1, 1)
            for cell in cells:
                windows[model][cell.label].append(
                    run_window(make_client, model, cell.arrays, outputs, cell.concurrency, cell.requests)
                )
            advance(1)
    return windows
