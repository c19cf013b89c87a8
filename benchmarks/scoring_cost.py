"""Scoring cost vs one plain forward+backward pass over the same examples (target: <= 1.3x).

Both are measured side by side, in interleaved trials, on a MiniLM-sized random BERT
(6 layers x 12 heads, d=384) so the ratio is about the method, not about machine noise.
Run from the repository root: .venv/bin/python -m benchmarks.scoring_cost [--examples 256] [--trials 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from exporter import compute_importance, load_model, load_tokenizer
from exporter.data import batches, encode_batch
from exporter.pruning.scoring import batch_loss
from tests.helpers import WORDS, make_bert


def plain_pass(model, tokenizer, examples, batch_size):
    for chunk in batches(examples, batch_size):
        batch = encode_batch(tokenizer, chunk, "classification", model.config)
        batch_loss(model, batch).backward()
    model.zero_grad(set_to_none=True)


def _setup(examples: int):
    """Returns (a MiniLM-sized random BERT, its tokenizer, ``examples`` seeded texts with labels)."""
    rng = random.Random(0)
    data = [
        {"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))), "label": rng.randint(0, 1)}
        for _ in range(examples)
    ]
    with tempfile.TemporaryDirectory() as folder:
        path = make_bert(Path(folder) / "bert", layers=6, heads=12, head_size=32)
        return load_model(path), load_tokenizer(path), data


def measure_scoring(examples: int = 256, trials: int = 5, batch_size: int = 32) -> dict:
    """Returns the median seconds of a plain forward+backward pass and of scoring (token and batch methods) over
    the same examples, measured in interleaved trials, their ratios, and each one's peak memory (MiB, measured
    in a fresh process)."""
    model, tokenizer, data = _setup(examples)
    timings = {name: [] for name in RUNS}
    runs = {name: (lambda run=run: run(model, tokenizer, data, batch_size)) for name, run in RUNS.items()}
    for run in runs.values():
        run()  # warm-up
    for _ in range(trials):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - start)
    base = statistics.median(timings["forward+backward"])
    return {
        "examples": examples,
        "batch_size": batch_size,
        "trials": trials,
        "torch_threads": torch.get_num_threads(),
        "model": "random BERT, 6 layers x 12 heads, d=384",
        "runs": {
            name: {
                "median_s": statistics.median(v),
                "min_s": min(v),
                "max_s": max(v),
                "ratio": statistics.median(v) / base,
                "peak_mib": peak_memory(name, examples, batch_size),
            }
            for name, v in timings.items()
        },
    }


def peak_memory(name: str, examples: int, batch_size: int) -> float:
    """Returns the peak resident memory (MiB) while ``name`` runs once in a fresh process (the peak is reset after
    the model and data are built, so it is the run's own)."""
    code = f"from benchmarks.scoring_cost import run_once; print(run_once({name!r}, {examples}, {batch_size}))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(output.split()[-1])


def run_once(name: str, examples: int, batch_size: int) -> float:
    """Runs ``name`` once on the benchmark's model and examples; returns the peak resident memory (MiB) of the run."""
    model, tokenizer, data = _setup(examples)
    Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the peak (VmHWM) to the current resident size
    RUNS[name](model, tokenizer, data, batch_size)
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


RUNS = {
    "forward+backward": plain_pass,
    "scoring (token)": lambda m, t, d, b: compute_importance(m, t, d, method="token", batch_size=b),
    "scoring (batch)": lambda m, t, d, b: compute_importance(m, t, d, method="batch", batch_size=b),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    result = measure_scoring(args.examples, args.trials, args.batch_size)
    print(
        f"{args.examples} examples, batch {args.batch_size}, {args.trials} interleaved trials, "
        f"torch threads {result['torch_threads']}"
    )
    for name, run in result["runs"].items():
        print(
            f"{name:18s} median {run['median_s']:.3f} s  (min {run['min_s']:.3f}, max {run['max_s']:.3f})  "
            f"ratio {run['ratio']:.2f}x  peak {run['peak_mib']:.0f} MiB"
        )


if __name__ == "__main__":
    main()
