"""Scoring cost vs one plain forward+backward pass over the same examples (target: <= 1.3x).

Both are measured side by side, in interleaved trials, on a MiniLM-sized random BERT
(6 layers x 12 heads, d=384) so the ratio is about the method, not about machine noise.
Run from the repository root: .venv/bin/python -m benchmarks.scoring_cost [--examples 256] [--trials 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    rng = random.Random(0)
    examples = [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))), "label": rng.randint(0, 1)}
                for _ in range(args.examples)]
    with tempfile.TemporaryDirectory() as folder:
        path = make_bert(Path(folder) / "bert", layers=6, heads=12, head_size=32)
        model, tokenizer = load_model(path), load_tokenizer(path)
    timings = {"forward+backward": [], "scoring (token)": [], "scoring (batch)": []}
    runs = {
        "forward+backward": lambda: plain_pass(model, tokenizer, examples, args.batch_size),
        "scoring (token)": lambda: compute_importance(model, tokenizer, examples, method="token", batch_size=args.batch_size),
        "scoring (batch)": lambda: compute_importance(model, tokenizer, examples, method="batch", batch_size=args.batch_size),
    }
    for run in runs.values():
        run()  # warm-up
    for _ in range(args.trials):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - start)
    base = statistics.median(timings["forward+backward"])
    print(f"{args.examples} examples, batch {args.batch_size}, {args.trials} interleaved trials, torch threads {torch.get_num_threads()}")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"{name:18s} median {median:.3f} s  (min {min(values):.3f}, max {max(values):.3f})  ratio {median / base:.2f}x")


if __name__ == "__main__":
    main()
