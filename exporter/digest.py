"""Content hashes of files and checkpoints, for report signatures and download checks."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """Returns the hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_hash(path: str | Path) -> str:
    """Returns a short hash identifying a model folder's weights (for report signatures)."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    return hashlib.sha256("".join(file_sha256(f) for f in files).encode()).hexdigest()[:16]
