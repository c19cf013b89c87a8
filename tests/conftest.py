"""Shared fixtures: tiny random models and data files, built offline once per session."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import WORDS, make_bert, make_marian  # noqa: E402


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Writes rows as JSONL; returns the path."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def sentences(count: int, seed: int, low: int = 3, high: int = 9) -> list[str]:
    """Returns ``count`` random sentences over the tiny vocabulary."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) for _ in range(count)]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("headprune")


@pytest.fixture(scope="session")
def bert_dir(workdir) -> Path:
    return make_bert(workdir / "bert")


@pytest.fixture(scope="session")
def marian_dir(workdir) -> Path:
    return make_marian(workdir / "marian")


@pytest.fixture(scope="session")
def cls_data(workdir) -> Path:
    rng = random.Random(1)
    rows = [{"text": text, "label": rng.choice(["negative", "positive"])} for text in sentences(64, seed=1)]
    return write_jsonl(workdir / "cls.jsonl", rows)


@pytest.fixture(scope="session")
def mt_data(workdir) -> Path:
    rows = [{"source": s, "target": t} for s, t in zip(sentences(24, seed=2), sentences(24, 3, 2, 6))]
    return write_jsonl(workdir / "mt.jsonl", rows)
