"""What the exporters check and validate with: the export's precision, the folder's fast tokenizer, and the texts
an exported graph is validated on."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from exporter.errors import HeadpruneError
from exporter.onnx.quantize import PRECISIONS
from exporter.pruning.checkpoint import load_tokenizer


def check_precision(precision: str) -> None:
    """Raises HeadpruneError unless ``precision`` is one the classifier export knows."""
    if precision not in PRECISIONS:
        raise HeadpruneError(f"precision '{precision}' is unknown", f"use one of {', '.join(PRECISIONS)}")


def require_fast_tokenizer(model_dir: Path):
    """Returns the model folder's fast tokenizer, which the served text front ends run; raises HeadpruneError without one."""
    tokenizer = load_tokenizer(model_dir)
    if tokenizer is None or not tokenizer.is_fast:
        raise HeadpruneError(
            f"'{model_dir}' has no fast tokenizer (tokenizer.json) for the text front end",
            "save a fast tokenizer (AutoTokenizer with use_fast=True) into the model folder",
        )
    return tokenizer


def validation_sources(tokenizer, count: int = 24, seed: int = 0) -> list[str]:
    """Returns ``count`` seeded pseudo-sentences of 3 to 12 vocabulary tokens, for validating without data."""
    rng = random.Random(seed)
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    return [tokenizer.decode([rng.choice(ids) for _ in range(rng.randint(3, 12))]).strip() or "a" for _ in range(count)]


def text_feeds(tokenizer, texts: list[str], names: list[str], max_length: int, batch_size: int = 32) -> list[dict]:
    """Returns ONNX input batches (int64 arrays of the graph's ``names``) of ``texts`` as the text front end
    tokenises them: padded on the right, with the end-of-sequence token where the tokenizer has no padding token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    feeds = []
    for start in range(0, len(texts), batch_size):
        rows = [tokenizer(text, truncation=True, max_length=max_length) for text in texts[start : start + batch_size]]
        width = max(len(row["input_ids"]) for row in rows)
        feed = {name: np.zeros((len(rows), width), dtype=np.int64) for name in names}
        feed["input_ids"][:] = pad
        for index, row in enumerate(rows):
            length = len(row["input_ids"])
            feed["attention_mask"][index, :length] = 1
            for name in names:
                if name in row and name != "attention_mask":
                    feed[name][index, :length] = row[name]
        feeds.append(feed)
    return feeds
