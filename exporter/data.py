"""Example files (JSONL, CSV, TSV) and their conversion into model batches (torch is loaded only to encode)."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

from exporter.errors import HeadpruneError

# Canonical column roles per task; users may map them to other column names.
REQUIRED = {"classification": ("text", "label"), "regression": ("text", "label"), "translation": ("source", "target")}
OPTIONAL = {"classification": ("text_pair",), "regression": ("text_pair",), "translation": ()}
ROLES = ("text", "text_pair", "label", "source", "target")


def task_of(model) -> str:
    """Returns "translation" for encoder-decoder models, "regression" for a single-output head
    (``num_labels == 1``, as transformers treats it) and "classification" otherwise."""
    if model.config.is_encoder_decoder:
        return "translation"
    return "regression" if model.config.num_labels == 1 else "classification"


def _text(path: Path, encoding: str) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode(encoding)
    except LookupError as error:
        raise HeadpruneError(f"encoding '{encoding}' is unknown", "pass a Python codec name such as utf-8 or latin-1") from error
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise HeadpruneError(
            f"data file '{path}' is not valid {encoding}: line {line} holds the byte {raw[error.start:error.start + 1]!r}",
            "convert the file to UTF-8, or name its encoding (`encoding` latin-1, for example)",
        ) from error


def _rows(path: Path, encoding: str) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = []
        for number, line in enumerate(_text(path, encoding).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise HeadpruneError(
                    f"'{path}' line {number} is not valid JSON ({error.msg})", "write one JSON object per line (JSONL)"
                ) from error
            if not isinstance(row, dict):
                raise HeadpruneError(f"'{path}' line {number} is not a JSON object", "write one JSON object per line")
            rows.append(row)
        return rows
    if suffix in (".csv", ".tsv"):
        text = _text(path, encoding)
        return list(csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ","))
    raise HeadpruneError(f"'{path}' has an unknown data format '{suffix}'", "use a .jsonl, .csv or .tsv file")


def read_examples(path: str | Path, task: str, columns: dict[str, str] | None = None,
                  max_examples: int | None = None, seed: int = 0, encoding: str = "utf-8") -> list[dict]:
    """Returns the examples of a data file with canonical keys (text/label or source/target).

    ``columns`` maps a role to the file's column name; ``max_examples`` takes a
    seeded random subset. Raises HeadpruneError when the file or a column is
    missing, or when the file is not in ``encoding``.
    """
    path = Path(path)
    if not path.is_file():
        raise HeadpruneError(f"data file '{path}' does not exist", "pass the path of a .jsonl, .csv or .tsv file")
    columns = columns or {}
    rows = _rows(path, encoding)
    if not rows:
        raise HeadpruneError(f"data file '{path}' holds no examples", "add examples, one per line/row")
    names = {role: columns.get(role, role) for role in REQUIRED[task] + OPTIONAL[task]}
    missing = [f"{role} (column '{names[role]}')" for role in REQUIRED[task] if names[role] not in rows[0]]
    if missing:
        flags = ", ".join(f"`{role}_column`" for role in REQUIRED[task] if names[role] not in rows[0])
        raise HeadpruneError(
            f"data file '{path}' lacks {', '.join(missing)} needed for {task}; it has columns {sorted(rows[0])}",
            f"rename the columns, or name the file's column for each role ({flags})",
        )
    examples = [{role: row[name] for role, name in names.items() if name in row} for row in rows]
    if max_examples is not None and max_examples < len(examples):
        examples = random.Random(seed).sample(examples, max_examples)
    return examples


def label_id(label, label2id: dict[str, int], num_labels: int) -> int:
    if isinstance(label, str) and label in label2id:
        return label2id[label]
    try:
        value = int(label)
    except (TypeError, ValueError):
        value = -1
    if not 0 <= value < num_labels:
        raise HeadpruneError(
            f"label {label!r} is not one of the model's labels ({sorted(label2id)} or 0..{num_labels - 1})",
            "fix the data file's label column or use a model trained on these labels",
        )
    return value


def regression_target(label) -> float:
    """Returns a regression label as a float; raises HeadpruneError naming it otherwise."""
    try:
        return float(label)
    except (TypeError, ValueError) as error:
        raise HeadpruneError(f"label {label!r} is not a number, as a regression model needs",
                             "fix the data file's label column") from error


def encode_batch(tokenizer, examples: list[dict], task: str, config, max_length: int = 128) -> dict:
    """Returns model inputs (torch tensors, with ``labels``) for a list of canonical examples."""
    import torch  # reading data files needs no torch: only encoding does
    if task in ("classification", "regression"):
        pairs = [e["text_pair"] for e in examples] if all("text_pair" in e for e in examples) else None
        batch = tokenizer([e["text"] for e in examples], pairs, padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt")
        if task == "regression":
            batch["labels"] = torch.tensor([regression_target(e["label"]) for e in examples])
        else:
            label2id = {str(k): v for k, v in (config.label2id or {}).items()}
            batch["labels"] = torch.tensor([label_id(e["label"], label2id, config.num_labels) for e in examples])
        return dict(batch)
    batch = tokenizer([e["source"] for e in examples], text_target=[e["target"] for e in examples], padding=True,
                      truncation=True, max_length=max_length, return_tensors="pt")
    labels = batch["labels"]
    labels[labels == tokenizer.pad_token_id] = -100
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}


def batches(examples: list[dict], size: int):
    """Yields consecutive slices of ``examples`` of at most ``size`` items."""
    for start in range(0, len(examples), size):
        yield examples[start:start + size]
