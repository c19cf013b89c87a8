"""Example files (JSONL, CSV, TSV, plain text, image folders) and their conversion into model batches (torch is
loaded only to encode)."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

from exporter.errors import HeadpruneError
from exporter.tasks import READINGS, SOURCES_ONLY, TASKS, TEXTS_ONLY  # noqa: F401 (re-exported)

# Column roles per task and reading (exporter.tasks); users may map them to other column names or positions.
REQUIRED = {name: needed for name, (needed, _) in READINGS.items()}
OPTIONAL = {name: extra for name, (_, extra) in READINGS.items()}
# What recovery reads of a data file, per model task.
UNLABELLED = {name: task.unlabelled for name, task in TASKS.items() if task.unlabelled}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Class names of transformers' causal language models end with one of these.
CAUSAL_LM_CLASSES = ("ForCausalLM", "LMHeadModel")
ROLES = ("text", "text_pair", "label", "source", "target", "image")
# A ``columns`` key: the CSV/TSV file has no header row; roles are 0-based positions, and the roles a task needs that
# have none take the free columns in order.
HEADERLESS = "no_header"
TEXTS = ("text", "text_pair", "source", "target", "image")


def task_of_config(config) -> str:
    """Returns the task of a model with this config: "translation" for encoder-decoder models, "language-modeling"
    for causal language models, "regression" for a single-output head (``num_labels == 1``, as transformers treats
    it) and "classification" otherwise."""
    if config.is_encoder_decoder:
        return "translation"
    if any((name or "").endswith(CAUSAL_LM_CLASSES) for name in (config.architectures or [])):
        return "language-modeling"
    if any((name or "").endswith("ForImageClassification") for name in (config.architectures or [])):
        return "image-classification"
    return "regression" if config.num_labels == 1 else "classification"


def task_of(model) -> str:
    """Returns the task of a model (as ``task_of_config``, judged by the model's own class)."""
    if type(model).__name__.endswith(CAUSAL_LM_CLASSES):
        return "language-modeling"
    if type(model).__name__.endswith("ForImageClassification"):
        return "image-classification"
    return task_of_config(model.config)


def _text(path: Path, encoding: str) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode(encoding)
    except LookupError as error:
        raise HeadpruneError(
            f"encoding '{encoding}' is unknown", "pass a Python codec name such as utf-8 or latin-1"
        ) from error
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise HeadpruneError(
            f"data file '{path}' is not valid {encoding}: line {line} holds the byte {raw[error.start : error.start + 1]!r}",
            "convert the file to UTF-8, or name its encoding (`encoding` latin-1, for example)",
        ) from error


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise HeadpruneError(
                f"data file '{path}' line {number} is not valid JSON ({error.msg})",
                "write one JSON object per line (JSONL)",
            ) from error
        if not isinstance(row, dict):
            raise HeadpruneError(
                f"data file '{path}' line {number} is not a JSON object", "write one JSON object per line"
            )
        rows.append((number, row))
    return rows


def _table_rows(path: Path, text: str, delimiter: str, header: bool = True) -> list[tuple[int, dict]]:
    """Returns each row of a CSV/TSV text with its line number, keyed by the header's names, or by 0-based positions
    when the file has no header."""
    lines = io.StringIO(text, newline="")
    reader = csv.DictReader(lines, delimiter=delimiter) if header else csv.reader(lines, delimiter=delimiter)
    rows = []
    try:
        for row in reader:
            if not header:
                row = dict(enumerate(row))
            elif None in row:  # DictReader files fields beyond the header under None
                raise HeadpruneError(
                    f"data file '{path}' line {reader.line_num} has more fields than its header {reader.fieldnames}",
                    "quote the fields that contain the delimiter",
                )
            # Rows of empty fields are blank lines as spreadsheets export them.
            if any((value or "").strip() for value in row.values()):
                rows.append((reader.line_num, row))
    except csv.Error as error:
        raise HeadpruneError(
            f"data file '{path}' line {reader.line_num} is not valid {path.suffix[1:].upper()} ({error})",
            "fix the line, or quote its fields",
        ) from error
    return rows


def _rows(path: Path, encoding: str, header: bool = True) -> list[tuple[int, dict]]:
    """Returns each non-blank row of a data file with its line number (a CSV/TSV's fields by position without
    ``header``)."""
    suffix = path.suffix.lower()
    if not header and suffix not in (".csv", ".tsv"):
        raise HeadpruneError(
            f"data file '{path}' is {suffix[1:].upper() or 'not CSV or TSV'}: column positions (no "
            "header row) apply to CSV and TSV files only",
            "name the columns instead of giving positions (drop --no-header)",
        )
    if suffix in (".jsonl", ".json"):
        return _jsonl_rows(path, _text(path, encoding))
    if suffix in (".csv", ".tsv"):
        return _table_rows(path, _text(path, encoding), "\t" if suffix == ".tsv" else ",", header)
    if suffix == ".txt":  # plain text for language models: one passage per non-blank line
        return [
            (number, {"text": line})
            for number, line in enumerate(_text(path, encoding).splitlines(), 1)
            if line.strip()
        ]
    raise HeadpruneError(
        f"data file '{path}' has an unknown data format '{suffix}'",
        "use a .jsonl, .csv or .tsv file (or .txt, one passage per line, for a language model)",
    )


def column_names(
    task: str, columns: dict, header: bool = True, where: str = "the data file"
) -> dict[str, str | int | None]:
    """Returns the column of each role of ``task``: its name (default: the role) in a file with a header row;
    otherwise its 0-based position, the required roles without one taking the positions no role was given, in
    order (a label's position given for a labelled reading keeps it out of a texts-only reading's text too)."""
    roles = REQUIRED[task] + OPTIONAL[task]
    if header:
        return {role: columns.get(role, role) for role in roles}
    names = {role: columns.get(role) for role in roles}
    given = {position for position in columns.values() if isinstance(position, int)}
    free = (p for p in range(len(roles) + len(columns) + 1) if p not in given and p not in names.values())
    for role in REQUIRED[task]:
        if names[role] is None:
            names[role] = next(free)
    for index, first in enumerate(roles):
        for second in roles[index + 1 :]:
            if names[first] is not None and names[first] == names[second]:
                raise HeadpruneError(
                    f"{where}: the {first} and {second} roles would both read column {names[first]}",
                    f"give each its own 0-based position (`{first}_column`, `{second}_column`)",
                )
    return names


def _looks_like_data(names: set) -> bool:
    """Returns whether a header row's names look like a row of data (sentences of three or more words, numbers)."""
    return any(
        len(str(name).split()) >= 3 or str(name).strip().lstrip("-").replace(".", "", 1).isdigit()
        for name in names
        if name
    )


def _image_folder_rows(path: Path) -> list[tuple[str, dict]]:
    """Returns (where, row) for every image in the class subfolders of ``path`` (the folder name is the label)."""
    rows = []
    for folder in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for image in sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES):
            rows.append((f"image '{image}'", {"image": str(image), "label": folder.name}))
    return rows


def load_image(path: str | Path):
    """Returns the image file at ``path`` decoded by Pillow (RGB); raises HeadpruneError naming the file otherwise."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise HeadpruneError(
            f"image '{path}' cannot be read ({type(error).__name__}: {error})",
            "replace or remove the file (PNG, JPEG, BMP, GIF, WebP or TIFF)",
        ) from error


def _example(where: str, row: dict, names: dict[str, str], task: str, config, folder: Path | None = None) -> dict:
    """Returns one row as a canonical example (an image path taken relative to ``folder``, the data file's); raises
    HeadpruneError saying ``where`` a value is missing or wrong."""
    example = {role: row[name] for role, name in names.items() if row.get(name) is not None}
    for role in REQUIRED[task]:
        if example.get(role) in (None, ""):
            raise HeadpruneError(f"{where} has no {role} (column '{names[role]}')", "fill it in, or remove the row")
    for role in TEXTS:
        if role in example and not isinstance(example[role], str):
            raise HeadpruneError(
                f"{where}: {role} {example[role]!r} is not a string", f"write the '{names[role]}' values as strings"
            )
    if "image" in example and folder is not None:
        example["image"] = str(folder / example["image"])
    if "image" in example and not Path(example["image"]).is_file():
        raise HeadpruneError(
            f"{where}: image '{example['image']}' does not exist",
            "write image paths relative to the data file, or absolute",
        )
    if config is not None and "label" in example:
        try:
            label_value(example["label"], task, config)
        except HeadpruneError as error:
            raise HeadpruneError(f"{where}: {error.message}", error.fix) from error
    return example


def read_examples(
    path: str | Path,
    task: str,
    columns: dict[str, str | int] | None = None,
    max_examples: int | None = None,
    seed: int = 0,
    encoding: str = "utf-8",
    config=None,
) -> list[dict]:
    """Returns the examples of a data file (for images, also a folder of one subfolder per label) with canonical
    keys (text/label, source/target, text alone for a language model, image/label with the image's path).

    ``columns`` maps a role to the file's column name, or to its 0-based position (an int) in a CSV/TSV file without
    a header row (every role then needs a position); ``max_examples`` takes a seeded random subset. Blank lines are
    skipped. With ``config`` (the model's), every label is checked against the model's labels. Raises
    HeadpruneError, naming the file and the line, when the file or a column is missing, a row lacks a value or has a
    wrong one, or the file is not in ``encoding``.
    """
    path = Path(path)
    images = task == "image-classification"
    folder = path.parent if images and not path.is_dir() else None  # image paths in a file are relative to it
    if images and path.is_dir():
        rows, columns = _image_folder_rows(path), {}  # a folder's rows name their roles already
    elif not path.is_file():
        raise HeadpruneError(
            f"data file '{path}' does not exist",
            "pass an image folder (one subfolder per label) or a CSV of image paths and labels"
            if images
            else "pass the path of a .jsonl, .csv or .tsv file",
        )
    columns = dict(columns or {})
    header = not columns.pop(HEADERLESS, False) and not any(isinstance(name, int) for name in columns.values())
    if not (images and path.is_dir()):
        rows = [(f"data file '{path}' line {line}", row) for line, row in _rows(path, encoding, header)]
    table = header and path.suffix.lower() in (".csv", ".tsv")
    if not rows:
        raise HeadpruneError(
            f"data file '{path}' holds no examples" + (" below its header row" if table else ""),
            "add examples, one per line/row"
            + ("; a CSV/TSV without a header row is read with --no-header" if table else ""),
        )
    names = column_names(task, columns, header, f"data file '{path}'")
    present = {name for _, row in rows for name in row}
    absent = [role for role in REQUIRED[task] if names[role] not in present]
    if absent:
        raise HeadpruneError(
            f"data file '{path}' lacks {', '.join(f'{role} (column {names[role]!r})' for role in absent)} needed for "
            f"{task}; it has {f'columns {sorted(present)}' if header else f'{len(present)} columns'}"
            + ("; that first row looks like data, not a header" if table and _looks_like_data(present) else ""),
            f"rename the columns, or name the file's column for each role ({', '.join(f'`{r}_column`' for r in absent)})"
            + (
                "; a CSV/TSV without a header row is read by 0-based column positions with --no-header" if table else ""
            ),
        )
    examples = [_example(where, row, names, task, config, folder) for where, row in rows]
    if max_examples is not None and max_examples < len(examples):
        examples = random.Random(seed).sample(examples, max_examples)
    return examples


def examples_for(model, path: str | Path, **options) -> list[dict]:
    """Returns ``read_examples`` of ``path`` for ``model``'s task, every label checked against the model's labels."""
    return read_examples(path, task_of(model), config=model.config, **options)


def label_id(label, label2id: dict[str, int], num_labels: int) -> int:
    """Returns the class id of a label given by name or id; raises HeadpruneError naming it otherwise."""
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
        raise HeadpruneError(
            f"label {label!r} is not a number, as a regression model needs", "fix the data file's label column"
        ) from error


def label_value(label, task: str, config):
    """Returns the training target of one label: a float for regression, a class id of ``config`` otherwise."""
    if task == "regression":
        return regression_target(label)
    label2id = {str(k): v for k, v in (config.label2id or {}).items()}
    return label_id(label, label2id, config.num_labels)


def encode_batch(tokenizer, examples: list[dict], task: str, config, max_length: int = 128) -> dict:
    """Returns model inputs (torch tensors, with ``labels`` where the examples have them) for a list of canonical
    examples, texts cut to ``max_length`` tokens and to the model's position embeddings."""
    import torch  # reading data files needs no torch: only encoding does

    from exporter.pruning.families import usable_positions

    # A text longer than the position embeddings would index past them (a Marian trained at 64 tokens has 66).
    max_length = min(max_length, usable_positions(config) or max_length)
    if task in ("classification", "regression"):
        pairs = [e["text_pair"] for e in examples] if all("text_pair" in e for e in examples) else None
        batch = tokenizer(
            [e["text"] for e in examples],
            pairs,
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        if all("label" in e for e in examples):  # texts read without labels (TEXTS_ONLY) are encoded alone
            batch["labels"] = torch.tensor([label_value(e["label"], task, config) for e in examples])
        return dict(batch)
    if task == "image-classification":  # ``tokenizer`` is the model's image processor
        pixels = tokenizer([load_image(e["image"]) for e in examples], return_tensors="pt")["pixel_values"]
        return {
            "pixel_values": pixels,
            "labels": torch.tensor([label_value(e["label"], task, config) for e in examples]),
        }
    if task == "language-modeling":
        if tokenizer.pad_token is None:  # GPT-2 and Llama tokenizers have none; padded positions are masked anyway
            tokenizer.pad_token = tokenizer.eos_token
        # Right padding: positions then count from each text's first token without position ids, as served.
        batch = tokenizer(
            [e["text"] for e in examples],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
            padding_side="right",
        )
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}
    batch = tokenizer(
        [e["source"] for e in examples],
        text_target=[e["target"] for e in examples],
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    labels = batch["labels"]
    labels[labels == tokenizer.pad_token_id] = -100
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}


def batches(examples: list[dict], size: int):
    """Yields consecutive slices of ``examples`` of at most ``size`` items."""
    for start in range(0, len(examples), size):
        yield examples[start : start + size]
