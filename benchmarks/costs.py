"""What the long jobs cost per model size on this machine: fine-tuning, importance scoring and a forward-only quality
pass, in seconds per example at 128 tokens (batch 16), on random-weight BERTs of three sizes built from a config.

The README's cost table comes from the JSON this writes (benchmarks/results/costs.json, with the machine).
Run from the repository root: .venv/bin/python -m benchmarks.costs [--batches 3]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from exporter.atomic import atomic_write_json
from serving.benchmark.compare import library_versions, machine

SEQ_LEN, BATCH = 128, 16
# (name, layers, heads, hidden size): the demo's MiniLM, a 12-layer MiniLM, and a base-size encoder (BERT-base,
# all-mpnet-base-v2's shape).
SIZES = (
    ("MiniLM-L6-H384", 6, 12, 384),
    ("MiniLM-L12-H384", 12, 12, 384),
    ("base (BERT-base, MPNet-base)", 12, 12, 768),
)
VOCAB = 30522
OUT = Path("benchmarks/results/costs.json")


def _model_and_tokenizer(layers: int, heads: int, hidden: int, folder: Path):
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(VOCAB - 5))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        num_labels=2,
    )
    return BertForSequenceClassification(config), tokenizer


def _examples(count: int) -> list[dict]:
    rng = random.Random(0)
    return [
        {"text": " ".join(f"w{rng.randrange(VOCAB - 5)}" for _ in range(SEQ_LEN - 2)), "label": rng.randint(0, 1)}
        for _ in range(count)
    ]


def _per_example(run, batches: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(batches):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return statistics.median(times) / BATCH


def measure_size(layers: int, heads: int, hidden: int, batches: int) -> dict:
    """Returns the parameters and the median seconds per example of a fine-tuning step, importance scoring and an
    inference forward pass, for a random BERT of this shape."""
    from exporter.data import encode_batch
    from exporter.pruning.scoring import compute_importance

    with tempfile.TemporaryDirectory() as folder:
        model, tokenizer = _model_and_tokenizer(layers, heads, hidden, Path(folder))
    examples = _examples(BATCH)
    batch = encode_batch(tokenizer, examples, "classification", model.config, max_length=SEQ_LEN)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def finetune_step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        optimizer.step()

    def forward():
        model.eval()
        with torch.no_grad():
            model(**{k: v for k, v in batch.items() if k != "labels"})

    def score():
        model.eval()
        compute_importance(model, tokenizer, examples, batch_size=BATCH)

    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "finetune_s_per_example": _per_example(finetune_step, batches),
        "score_s_per_example": _per_example(score, batches),
        "forward_s_per_example": _per_example(forward, batches),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3, help="Timed batches of 16 per measurement (median).")
    args = parser.parse_args()
    began = time.monotonic()
    rows = []
    for name, layers, heads, hidden in SIZES:
        rows.append(
            {
                "name": name,
                "layers": layers,
                "heads": heads,
                "hidden": hidden,
                **measure_size(layers, heads, hidden, args.batches),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    atomic_write_json(
        OUT,
        {
            "section": "costs",
            "environment": {**machine(), "libraries": library_versions()},
            "torch_threads": torch.get_num_threads(),
            "seq_len": SEQ_LEN,
            "batch_size": BATCH,
            "batches": args.batches,
            "rows": rows,
            "seconds": round(time.monotonic() - began, 1),
        },
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
